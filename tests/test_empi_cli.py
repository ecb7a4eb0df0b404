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


@pytest.mark.parametrize(("link", "review"), [("nan", "1"), ("inf", "1"), ("8", "-inf")])
def test_thresholds_must_be_finite_and_nothing_is_stored(hie, platform_db, link, review):
    result = hie("empi", "thresholds", "141002", "--link", link, "--review", review)
    assert result.exit_code == 1 and "finite" in result.output
    assert platform_db.get(RegionThresholds, "141002") is None


def test_dedupe_unwritable_output_is_a_clear_error(hie, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("rec_id,name\nr1,张三\n", encoding="utf-8")
    result = hie("empi", "dedupe", "--input", str(source), "--output", str(tmp_path / "no-such-dir" / "out.csv"))
    assert result.exit_code == 1 and "cannot open" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_dedupe_reports_huge_fields_quotes_duplicates_sex_and_future_dates_by_line(hie, tmp_path):
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("rec_id,name,sex,birth_date\nr1,张三,X,1980-01-01\nr2," + "x" * 140_000 + ",M,1980-01-01\n"
                      "r1,王五,M,1980-01-01\nr4,赵六,F,2090-01-01\nr5,\"钱七,F,1980-01-01\nr6,孙八,M,1970-01-01\n",
                      encoding="utf-8")
    result = hie("empi", "dedupe", "--input", str(source), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "line 2: sex: unknown sex 'X'" in result.output
    assert "line 3: field name is 140000 characters long" in result.output
    assert "line 4: duplicate rec_id (first on line 2)" in result.output
    assert "line 5: birth_date: birth date '2090-01-01' is in the future" in result.output
    assert "line 6: unterminated quote" in result.output
    with out.open(encoding="utf-8") as handle:
        assert [row["rec_id"] for row in csv.DictReader(handle)] == ["r1", "r2", "r4", "r5", "r6"]


def test_rebuild_links_what_new_thresholds_allow_and_it_can_be_undone(hie, client, as_user, platform_db):
    assert hie("empi", "thresholds", "141002", "--link", "30", "--review", "29").exit_code == 0
    first = new_patient(client, as_user("yaodu.doctor"), mrn="P-1", name="刘芳", birth_date="1990-02-03",
                        id_number=None, phone="13500000001", sex="F", address=None)
    second = new_patient(client, as_user("yaodu.doctor"), mrn="P-2", name="刘芳", birth_date="1990-03-02",
                         id_number=None, phone="13500000001", sex="F", address=None)
    assert first["master_person_id"] != second["master_person_id"]
    assert hie("empi", "thresholds", "141002", "--link", "10", "--review", "5").exit_code == 0
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
    for mrn, before in (("P-1", first), ("P-2", second)):
        back = client.get(f"/api/v1/empi/xref?local_id={mrn}", headers=as_user("yaodu.doctor")).get_json()
        assert back["master_person_id"] == before["master_person_id"], f"{mrn} moved back to its own person"
        assert {i["local_id"] for i in back["identifiers"]} == {mrn}
