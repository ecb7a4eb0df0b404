"""$prior-results: void results are not prior results; the window comes from configuration, requests narrow it."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from hie.platform.config import ConfigError, load_config
from tests.fhir_helpers import LOINC, clinical, create, patient


def _found(client, headers, patient_id, extra=""):
    response = client.get(f"/fhir/Patient/{patient_id}/$prior-results?code={LOINC}|2345-7{extra}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [p for p in response.get_json()["parameter"] if p["name"] == "prior"]


def _days_ago(days: int) -> str:
    return f"{(date.today() - timedelta(days=days)).isoformat()}T09:00:00Z"


def test_entered_in_error_and_cancelled_results_are_not_prior_results(client, as_user):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    for status in ("entered-in-error", "cancelled"):
        create(client, doctor, {**clinical("Observation", f"Patient/{subject['id']}", "2345-7", _days_ago(3)),
                                "status": status})
        create(client, doctor, {**clinical("DiagnosticReport", f"Patient/{subject['id']}", "2345-7", _days_ago(3)),
                                "status": status})
    assert _found(client, doctor, subject["id"]) == []
    kept = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}", "2345-7", _days_ago(3)))
    found = _found(client, doctor, subject["id"])
    assert [p["part"][-1]["valueReference"]["reference"] for p in found] == [f"Observation/{kept['id']}"]


def test_the_default_window_is_configured_and_a_request_overrides_it(client, app, as_user, monkeypatch):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    create(client, doctor, clinical("Observation", f"Patient/{subject['id']}", "2345-7", _days_ago(10)))
    assert len(_found(client, doctor, subject["id"])) == 1
    monkeypatch.setitem(app.config, "HIE", dataclasses.replace(app.config["HIE"], prior_results_days=5))
    assert _found(client, doctor, subject["id"]) == []
    assert len(_found(client, doctor, subject["id"], "&days=20")) == 1
    too_far = client.get(f"/fhir/Patient/{subject['id']}/$prior-results?code=2345-7&days=366", headers=doctor)
    assert too_far.status_code == 400 and too_far.get_json()["issue"][0]["expression"] == ["days"]


@pytest.mark.parametrize("raw", ["0", "366", "thirty"])
def test_a_bad_prior_results_window_names_the_variable(tmp_path, raw):
    with pytest.raises(ConfigError, match="HIE_PRIOR_RESULTS_DAYS"):
        load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "s" * 40, "HIE_PRIOR_RESULTS_DAYS": raw})
    assert load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "s" * 40,
                        "HIE_PRIOR_RESULTS_DAYS": "90"}).prior_results_days == 90
