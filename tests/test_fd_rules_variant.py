"""A province's variant of the follow-up rules is a data change: a copy of the table named by HIE_FAMILY_DOCTOR_RULES
changes the verdicts; a file that is not such a table stops start-up naming the setting."""

from __future__ import annotations

import json
from datetime import date

import pytest

from hie.family_doctor import rules
from hie.family_doctor.models import Classification, Condition
from hie.platform.app import create_app
from hie.platform.config import ConfigError, load_config
from tests.conftest import hie_environ


def test_a_stricter_province_classifies_by_its_own_table(tmp_path, monkeypatch):
    table = json.loads(rules.DEFAULT_RULES.read_text(encoding="utf-8"))
    table["controlled"]["hypertension"]["systolic_below"] = 130  # e.g. a province aiming at < 130/80 for its elderly
    table["controlled"]["hypertension"]["diastolic_below"] = 80
    variant = tmp_path / "province.json"
    variant.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    visit = {"systolic": 135, "diastolic": 82}
    assert rules.classify(Condition.hypertension, visit, [], False, date(2026, 1, 5)).classification \
        is Classification.controlled
    monkeypatch.setattr(rules, "table", lambda extra=None: rules._load(str(variant)))
    verdict = rules.classify(Condition.hypertension, visit, [], False, date(2026, 1, 5))
    assert verdict.classification is Classification.not_controlled
    assert verdict.reasons == ["blood pressure not below 130/80 mmHg"] and verdict.next_due == date(2026, 1, 19)


@pytest.mark.parametrize("content", ["not json", '{"urgent": {}}', "[]"])
def test_a_file_that_is_not_a_rules_table_stops_start_up_naming_the_setting(tmp_path, home, content):
    broken = tmp_path / "broken.json"
    broken.write_text(content, encoding="utf-8")
    config = load_config({**hie_environ(home), "HIE_FAMILY_DOCTOR_RULES": str(broken)}, testing=True)
    with pytest.raises(ConfigError, match="HIE_FAMILY_DOCTOR_RULES"):
        create_app(config)
    missing = load_config({**hie_environ(home), "HIE_FAMILY_DOCTOR_RULES": str(tmp_path / "none.json")}, testing=True)
    with pytest.raises(ConfigError, match="HIE_FAMILY_DOCTOR_RULES"):
        create_app(missing)
