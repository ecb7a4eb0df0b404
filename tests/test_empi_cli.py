"""`hie empi dedupe`, `rebuild` and `thresholds`."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from hie.empi.models import PersonEvent, RegionThresholds
from hie.platform.cli import main
from tests.conftest import REDIS_URL, hie_environ, new_patient, valid_id


@pytest.fixture
def hie(home, client):
    def run(*args: str):
        return CliRunner().invoke(main, list(args), env=hie_environ(home))
    return run


def test_dedupe_writes_one_row_per_input_and_reports_bad_rows(hie, tmp_path):
    source = tmp_path / "in.csv"
    rows = [
        ["rec_id", "name", "sex", "birth_date", "id_type", "id_number", "phone"],
        ["r1", "王秀英", "女", "1958-03-12", "CN-RIC", valid_id("14100219580312002"), "13935712345"],
        ["r2", "Wang Xiuying", "F", "19580312", "CN-RIC", valid_id("14100219580312002"), ""],
        ["r3", "李子涵", "F", "2015-06-01", "", "", "13800001111"],
        ["", "无编号", "F", "2015-06-01", "", "", ""],
        ["r5", "too", "many", "fields", "x", "y", "z", "extra"],
    ]
    source.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    result = hie("empi", "dedupe", "--input", str(source), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "line 5" in result.output and "line 6" in result.output
    written = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(written) == 5
    person = {row["rec_id"]: row["person_id"] for row in written if row["rec_id"]}
    assert person["r1"] == person["r2"] != person["r3"]


def test_dedupe_refuses_a_missing_file_or_a_file_without_rec_id(hie, tmp_path):
    missing = hie("empi", "dedupe", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv"))
    assert missing.exit_code == 1 and "does not exist" in missing.output
    headless = tmp_path / "bad.csv"
    headless.write_text("name,phone\n张三,13800000000\n", encoding="utf-8")
    result = hie("empi", "dedupe", "--input", str(headless), "--output", str(tmp_path / "o.csv"))
    assert result.exit_code == 1 and "rec_id" in result.output


def test_thresholds_are_validated_and_stored(hie, platform_db):
    assert hie("empi", "thresholds", "141002", "--link", "1", "--review", "5").exit_code == 1
    assert "does not exist" in hie("empi", "thresholds", "999999", "--link", "8", "--review", "1").output
    assert hie("empi", "thresholds", "141002", "--link", "8.5", "--review", "1.5").exit_code == 0
    row = platform_db.get(RegionThresholds, "141002")
    assert (row.link, row.review) == (8.5, 1.5)


def test_rebuild_links_what_new_thresholds_allow_and_it_can_be_undone(hie, client, as_user, platform_db):
    first = new_patient(client, as_user("yaodu.doctor"), mrn="P-1", name="刘芳", birth_date="1990-02-03",
                        id_number=None, phone=None, sex="F", address=None)
    second = new_patient(client, as_user("yaodu.doctor"), mrn="P-2", name="刘芳", birth_date="1990-03-02",
                         id_number=None, phone=None, sex="F", address=None)
    assert first["master_person_id"] != second["master_person_id"]
    assert hie("empi", "thresholds", "141002", "--link", "1.0", "--review", "0.5").exit_code == 0
    if REDIS_URL:
        queued = hie("empi", "rebuild", "--no-wait")
        assert queued.exit_code == 0 and "queued" in queued.output
        assert hie("worker", "--burst").exit_code == 0
    else:
        result = hie("empi", "rebuild")
        assert result.exit_code == 0, result.output
        assert "2/2 records" in result.output
    platform_db.rollback()
    links = platform_db.scalar(select(func.count()).select_from(PersonEvent)
                               .where(PersonEvent.action == "rebuild_link"))
    assert links == 1
    xref = client.get("/api/v1/empi/xref?local_id=P-1", headers=as_user("yaodu.doctor")).get_json()
    assert {i["local_id"] for i in xref["identifiers"]} == {"P-1", "P-2"}
    merged_away = next(pid for pid in (first["master_person_id"], second["master_person_id"])
                       if pid != xref["master_person_id"])
    undo = client.post(f"/api/v1/empi/persons/{merged_away}/unmerge", headers=as_user("steward"))
    assert undo.status_code == 200
