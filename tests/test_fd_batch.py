"""Offline batches and CSV imports of vitals: a retried upload stores each entry once, one bad entry is named while
the good ones are stored, and a BP monitor's export is imported (over REST and by `hie family-doctor vitals import`)
idempotently."""

from __future__ import annotations

from datetime import datetime

import click
import pytest
from click.testing import CliRunner
from flask import g
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.family_doctor import vitals
from hie.family_doctor.models import Vitals
from hie.family_doctor.vitals_csv import register_vitals
from hie.platform.audit.models import AuditEvent
from hie.platform.db import finish_unit_of_work
from hie.platform.scripted import identity_of
from tests.conftest import hie_environ
from tests.test_fd_vitals import entry, signed_team, stored, when

BATCH = "/api/v1/family-doctor/vitals:batch"
IMPORT = "/api/v1/family-doctor/vitals:import"


@pytest.fixture
def team(client, as_user) -> dict:
    """Team YAODU-T1-A and a resident under an active contract with it."""
    return signed_team(client, as_user)


def day_of_visits(contract_id: str, count: int = 5) -> list[dict]:
    """A village doctor's day: one alarming reading among ordinary ones."""
    entries = [{**entry(contract_id, f"tablet7-{index:04d}"), "taken_at": when(10 - index)} for index in range(count)]
    if count > 2:
        entries[2].update(systolic=184, diastolic=96)
    return entries


def upload(client, headers, entries: list[dict]) -> dict:
    response = client.post(BATCH, json={"entries": entries}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_batch_retried_after_a_dropped_connection_stores_each_entry_once(client, team, platform_db, app):
    fd, entries = team["fd"], day_of_visits(team["contract"]["id"])
    # the connection dropped while the first three were uploaded; the device never saw the answer
    upload(client, fd, entries[:3])
    after_first = stored(app, platform_db)
    assert after_first == (3, 6, 1)
    retried = upload(client, fd, entries)
    assert [r["status"] for r in retried["results"]] == ["duplicate"] * 3 + ["created"] * 2
    assert (retried["created"], retried["duplicate"], retried["refused"]) == (2, 3, 0)
    assert [r["client_id"] for r in retried["results"]] == [e["client_id"] for e in entries]
    counts = stored(app, platform_db)
    assert counts == (5, 10, 1)
    again = upload(client, fd, entries)
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 5
    assert [r["vitals_id"] for r in again["results"]] == [r["vitals_id"] for r in retried["results"]]
    assert [r["observations"] for r in again["results"]] == [r["observations"] for r in retried["results"]]
    assert stored(app, platform_db) == counts


def test_a_batch_with_bad_entries_stores_the_good_ones_and_names_the_bad(client, team, platform_db, app):
    entries = day_of_visits(team["contract"]["id"])
    entries[1].update(systolic=120, diastolic=135)  # impossible
    entries[3]["heart_rate"] = "seventy"  # not a number
    entries[4]["contract_id"] = "someone-elses"
    result = upload(client, team["fd"], entries)
    assert [r["status"] for r in result["results"]] == ["created", "refused", "created", "refused", "refused"]
    bad = result["results"]
    assert list(bad[1]["errors"]) == ["diastolic"] and bad[1]["vitals_id"] is None and bad[1]["observations"] == []
    assert list(bad[3]["errors"]) == ["heart_rate"]
    assert bad[4]["errors"] == {"contract_id": ["is not an active contract of your team"]}
    assert stored(app, platform_db) == (2, 4, 1)
    assert sorted(platform_db.scalars(select(Vitals.client_id))) == ["tablet7-0000", "tablet7-0002"]
    refusals = platform_db.scalars(select(AuditEvent.resource_id).where(
        AuditEvent.resource_type == "Vitals", AuditEvent.outcome != "success").order_by(AuditEvent.seq)).all()
    assert refusals == ["tablet7-0001", "tablet7-0003", "tablet7-0004"]
    # the corrected entries are stored when uploaded again; the stored ones stay duplicates
    entries[1].update(diastolic=80)
    entries[3]["heart_rate"] = 70
    entries[4]["contract_id"] = team["contract"]["id"]
    fixed = upload(client, team["fd"], entries)
    assert [r["status"] for r in fixed["results"]] == ["duplicate", "created", "duplicate", "created", "created"]


def test_a_batch_needs_a_team_member_and_at_most_500_entries(client, as_user, team, platform_db, app):
    entries = day_of_visits(team["contract"]["id"], 2)
    assert client.post(BATCH, json={"entries": entries}, headers=as_user("yaodu.doctor")).status_code == 403
    too_many = client.post(BATCH, json={"entries": [entries[0]] * 501}, headers=team["fd"])
    assert too_many.status_code == 422
    assert client.post(BATCH, json={"entries": []}, headers=team["fd"]).status_code == 422
    assert stored(app, platform_db) == (0, 0, 0)


def test_two_devices_may_use_the_same_client_id(app, client, as_user, team, platform_db):
    from hie.platform.auth.models import Role
    from tests.test_fd_teams import add_user

    add_user(app, "t1.nurse", Role.nurse, "YAODU-T1")
    joined = client.post("/api/v1/family-doctor/teams/YAODU-T1-A/members",
                         json={"username": "t1.nurse", "team_role": "nurse"}, headers=as_user("yaodu.admin"))
    assert joined.status_code in (200, 201), joined.get_json()
    one = day_of_visits(team["contract"]["id"], 1)
    assert upload(client, team["fd"], one)["created"] == 1
    assert upload(client, as_user("t1.nurse"), one)["created"] == 1
    assert stored(app, platform_db)[0] == 2


EXPORT = """\ufeffDate,Time,Systolic (mmHg),Diastolic (mmHg),Pulse (bpm),Notes
{d1},07:30,138,88,72,
{d1},19:45,142,91,75,after dinner
{d2},07:28,120,130,70,
{d2},07:35,185,99,81,
"""


def _export() -> str:
    yesterday, today = when(30)[:10], when(6)[:10]
    return EXPORT.format(d1=yesterday, d2=today)


def test_a_bp_monitors_csv_export_is_imported_once(client, team, platform_db, app):
    body = {"csv": _export(), "contract_id": team["contract"]["id"]}
    response = client.post(IMPORT, json=body, headers=team["fd"])
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert [(r["line"], r["status"]) for r in result["results"]] == [
        (2, "created"), (3, "created"), (4, "refused"), (5, "created")]
    assert list(result["results"][2]["errors"]) == ["diastolic"]
    assert stored(app, platform_db) == (3, 6, 1)
    rows = platform_db.scalars(select(Vitals).order_by(Vitals.taken_at)).all()
    assert [(r.systolic, r.diastolic, r.heart_rate, r.setting.value) for r in rows] == [
        (138, 88, 72, "home_visit"), (142, 91, 75, "home_visit"), (185, 99, 81, "home_visit")]
    assert rows[0].taken_at.astimezone().utcoffset() is not None
    again = client.post(IMPORT, json=body, headers=team["fd"]).get_json()
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate", "refused", "duplicate"]
    assert stored(app, platform_db) == (3, 6, 1)


def test_an_export_with_its_own_headers_needs_a_mapping(client, team, platform_db, app):
    text = "When,High,Low,HR\n2026-11-01T07:30:00+08:00,138,88,72\n"
    refused = client.post(IMPORT, json={"csv": text, "contract_id": team["contract"]["id"]}, headers=team["fd"])
    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["field"] == "csv"
    mapped = {"csv": text, "contract_id": team["contract"]["id"],
              "columns": {"taken_at": "When", "systolic": "High", "diastolic": "Low", "heart_rate": "HR"}}
    result = client.post(IMPORT, json=mapped, headers=team["fd"]).get_json()
    assert [r["status"] for r in result["results"]] == ["created"]
    assert stored(app, platform_db)[0] == 1


def test_the_cli_imports_an_export(app, client, team, platform_db, home, tmp_path, monkeypatch):
    for name, value in hie_environ(home).items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "omron.csv"
    path.write_text(_export(), encoding="utf-8")
    group = click.Group("family-doctor")
    register_vitals(group)
    runner = CliRunner()
    args = ["vitals", "import", str(path), "--user", "yaodu.fd", "--contract", team["contract"]["id"]]
    result = runner.invoke(group, args)
    assert result.exit_code == 1, result.output
    assert "line 4: refused: diastolic" in result.output
    assert result.output.strip().endswith("3 created, 0 duplicate, 1 refused")
    assert stored(app, platform_db) == (3, 6, 1)
    again = runner.invoke(group, args)
    assert again.output.strip().endswith("0 created, 3 duplicate, 1 refused")
    assert stored(app, platform_db) == (3, 6, 1)
    nobody = runner.invoke(group, ["vitals", "import", str(path), "--user", "yaodu.doctor"])
    assert nobody.exit_code == 1 and "no family-doctor team" in nobody.output


def test_an_entry_uploaded_twice_at_once_is_stored_once(app, client, team, platform_db):
    """Two uploads of one entry racing: the second finds nothing stored, then the unique key stops its INSERT; it
    answers duplicate and leaves no Observation behind."""
    body = entry(team["contract"]["id"])
    first = client.post("/api/v1/family-doctor/vitals", json=body, headers=team["fd"]).get_json()
    counts = stored(app, platform_db)
    with Session(app.extensions["hie.engines"].platform) as session:
        identity = identity_of(session, "yaodu.fd")
    with app.test_request_context("/api/v1/family-doctor/vitals:batch", method="POST"):
        g.identity, g.request_id = identity, "race"
        try:
            result = vitals.outcome(identity, {**body, "taken_at": datetime.fromisoformat(body["taken_at"])}, {})
            finish_unit_of_work(commit=True)
        finally:
            g.pop("audit_pending", None)
    assert (result["status"], result["vitals_id"], result["observations"]) == (
        "duplicate", first["id"], first["observations"])
    assert stored(app, platform_db) == counts
