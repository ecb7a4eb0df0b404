"""dedupe_csv: one output row per input row, bad rows reported by line."""

import csv

import pytest

from hie.empi.dedupe import dedupe_csv
from hie.platform.standards import check_digit

ID_A = "44010619800407123" + check_digit("44010619800407123")

CSV_TEXT = f"""rec_id,source,name,sex,birth_date,id_type,id_number,phone,address
a1,H1,陈国强,男,1980-04-07,CN-RIC,{ID_A},13912345678,广东省广州市天河区石牌街道华师社区10号
a2,H2,"CHEN, Guoqiang",M,19800407,,,+86 139 1234 5678,石牌街道华师社区10号
a3,H3,陈子涵,女,2019-06-01,,,13912345678,广东省广州市天河区石牌街道华师社区10号
a4,H3,陈子轩,男,2019-06-01,,,13912345678,广东省广州市天河区石牌街道华师社区10号
a5,H1,short row
,H2,李四,女,1990-01-01,,,,
a1,H2,陈国强,男,1980-04-07,,,,
a8,H2,王五,男,1970-13-45,CN-RIC,123,,
"""


def run(tmp_path, text=CSV_TEXT):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(text, encoding="utf-8")
    report = dedupe_csv(src, dst)
    with dst.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return report, rows


def test_every_input_row_gets_a_person_and_each_rec_id_appears_once(tmp_path):
    report, rows = run(tmp_path)
    assert [r["rec_id"] for r in rows] == ["a1", "a2", "a3", "a4", "a5", "", "a8"]
    assert report.rows == 7 and all(r["person_id"] for r in rows)


def test_duplicates_link_and_twins_do_not(tmp_path):
    _, rows = run(tmp_path)
    person = [r["person_id"] for r in rows]
    assert person[0] == person[1]
    assert len({person[2], person[3], person[0]}) == 3


def test_malformed_rows_reported_with_line_numbers(tmp_path):
    report, rows = run(tmp_path)
    problems = {(p.line, p.reason.split(" (")[0]) for p in report.malformed}
    assert problems == {(6, "expected 9 fields, got 3"), (7, "missing rec_id"), (8, "duplicate rec_id")}
    malformed_persons = [rows[i]["person_id"] for i in (4, 5)]
    assert len(set(malformed_persons)) == 2
    assert not set(malformed_persons) & {r["person_id"] for r in rows[:4]}


def test_bad_field_values_are_issues_not_malformed(tmp_path):
    report, _ = run(tmp_path)
    fields = {(p.line, p.field) for p in report.field_issues}
    assert {(9, "birth_date"), (9, "id_number")} <= fields
    assert 9 not in {p.line for p in report.malformed}


def test_absent_columns_and_multiline_fields(tmp_path):
    text = (
        'rec_id,family_name,given_name,birth_date,address\nx1,Smith,John,19610203,"12 high st\nsydney"\n'
        "x2,smith,john,1961-02-03,12 high st sydney\n"
    )
    report, rows = run(tmp_path, text)
    assert report.malformed == [] and rows[0]["person_id"] == rows[1]["person_id"]


def test_missing_rec_id_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rec_id"):
        run(tmp_path, "name,phone\n张三,13800138000\n")


def test_invalid_utf8_row_reported(tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_bytes("rec_id,name\nr1,张三\n".encode() + b"r2,\xff\xfe\n")
    report = dedupe_csv(src, dst)
    assert [(p.line, p.reason) for p in report.malformed] == [(3, "not valid UTF-8")]


def test_a_huge_field_is_reported_not_fatal(tmp_path):
    report, rows = run(tmp_path, "rec_id,name\nr1,张三\nr2," + "x" * 200_000 + "\nr3,李四\n")
    assert [r["rec_id"] for r in rows] == ["r1", "r2", "r3"]
    assert [(p.line, p.reason) for p in report.malformed] == [
        (3, "field name is 200000 characters long (at most 1000)")]


def test_an_unterminated_quote_is_reported_and_the_rows_after_it_still_read(tmp_path):
    report, rows = run(tmp_path, 'rec_id,name,phone\nr1,张三,13800138000\nr2,"李四,13800138001\n'
                                 "r3,王五,13800138002\nr4,赵六,13800138003\n")
    assert [r["rec_id"] for r in rows] == ["r1", "r2", "r3", "r4"]
    assert [(p.line, p.rec_id, p.reason.split(":")[0]) for p in report.malformed] == [
        (3, "r2", "unterminated quote")]
    quoted_last = 'rec_id,name,address\nr1,张三,"东关村5号\nr2,李四,东关村6号\n'
    report, rows = run(tmp_path, quoted_last)
    assert [r["rec_id"] for r in rows] == ["r1", "r2"]
    assert [(p.line, p.reason.split(":")[0]) for p in report.malformed] == [(2, "unterminated quote")]


def test_duplicate_rec_id_reported_with_both_lines(tmp_path):
    report, rows = run(tmp_path, "rec_id,name\nr1,张三\nr2,李四\nr1,王五\n")
    assert [r["rec_id"] for r in rows] == ["r1", "r2"]
    assert [(p.line, p.reason) for p in report.malformed] == [
        (4, "duplicate rec_id (first on line 2); row not written")]


def test_unknown_sex_and_future_birth_date_are_warnings_for_their_line(tmp_path):
    report, rows = run(tmp_path, "rec_id,name,sex,birth_date\nr1,张三,X,1980-01-01\nr2,李四,M,2090-01-01\n"
                                 "r3,王五,U,1958-3-12 00:00:00\n")
    assert len(rows) == 3 and report.malformed == []
    assert [(p.line, p.field) for p in report.field_issues] == [(2, "sex"), (3, "birth_date")]
    assert "future" in report.field_issues[1].reason


def test_unwritable_output_fails_before_any_work(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("rec_id,name\nr1,张三\n", encoding="utf-8")
    with pytest.raises(OSError):
        dedupe_csv(src, tmp_path / "missing-dir" / "out.csv")
