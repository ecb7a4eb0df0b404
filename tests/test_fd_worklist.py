"""The doctor's worklist on a controlled clock: follow-ups due this week (today to Sunday), overdue ones, residents
with an open alert, contracts expiring within 30 days; paged, sorted, counted, in a fixed number of queries; another
team sees none of it. And the worker's daily expiry of contracts past their term."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import event, select

from hie.family_doctor import services, tasks
from hie.family_doctor.models import Contract, ContractStatus, FollowUp, FollowUpStatus
from hie.platform.audit.models import AuditEvent
from tests.test_fd_followups import (
    FD,
    at,
    bp,
    local_today,
    other_team,  # noqa: F401  (a fixture)
    pending,
    resident,
    sign,
    visit,
)
from tests.test_fd_teams import make_team

# A Wednesday three weeks back: visits before it are in the real past, so the vitals service takes them.
TODAY = local_today() - timedelta(days=21 + (local_today().weekday() - 2) % 7)
SUNDAY = TODAY + timedelta(days=4)


@pytest.fixture
def clock(monkeypatch) -> date:
    """The platform's today, fixed on a Wednesday."""
    assert TODAY.weekday() == 2
    monkeypatch.setattr(services, "local_today", lambda: TODAY)
    return TODAY


def _visit(client, fd, contract_id: str, condition: str, day: date, **readings) -> dict:
    return visit(client, fd, pending(client, fd, contract_id, condition)["id"], visited_at=at(day), vitals=readings)


@pytest.fixture
def desk(client, as_user, clock) -> dict:
    """Five residents of team YAODU-T1-A whose visits put them in each section (and at each boundary)."""
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    fd = as_user("yaodu.fd")
    people = [resident(client, fd, index) for index in range(5)]
    both = ("basic", "hypertension", "diabetes")
    start = TODAY - timedelta(days=60)
    contracts = [sign(client, fd, people[0]["id"], both, start),
                 sign(client, fd, people[1]["id"], ("basic", "hypertension"), start),
                 sign(client, fd, people[2]["id"], ("basic", "diabetes"), start),
                 sign(client, fd, people[3]["id"], ("basic", "hypertension"), start),
                 sign(client, fd, people[4]["id"], ("basic", "hypertension"), TODAY - timedelta(days=340))]
    ids = [c["id"] for c in contracts]
    _visit(client, fd, ids[0], "hypertension", TODAY - timedelta(days=14), **bp(150, 95))  # due today
    _visit(client, fd, ids[0], "diabetes", TODAY - timedelta(days=10), fasting_glucose=8.0)  # due Sunday
    _visit(client, fd, ids[1], "hypertension", TODAY - timedelta(days=9), **bp(145, 92))  # due next Monday
    _visit(client, fd, ids[2], "diabetes", TODAY - timedelta(days=15), fasting_glucose=7.5)  # due yesterday
    _visit(client, fd, ids[3], "hypertension", TODAY - timedelta(days=20), **bp(185, 100))  # 6 days late, alert
    return {"fd": fd, "people": people, "contracts": ids}


def _section(client, headers, section: str, status: int = 200, **query) -> tuple[list[dict], dict]:
    params = "&".join(f"{k}={v}" for k, v in {"section": section, **query}.items())
    response = client.get(f"{FD}/worklist?{params}", headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json(), json.loads(response.headers.get("X-Pagination", "{}"))


def test_each_section_on_a_controlled_clock(client, desk, platform_db):
    fd, people, ids = desk["fd"], desk["people"], desk["contracts"]
    due, paging = _section(client, fd, "due")
    assert [(e["contract_id"], e["condition"], e["due_on"]) for e in due] == [
        (ids[0], "hypertension", TODAY.isoformat()), (ids[0], "diabetes", SUNDAY.isoformat())]
    assert paging["total"] == 2
    first = due[0]
    assert (first["patient_id"], first["patient_tenant_code"], first["master_person_id"], first["days_overdue"]) == \
        (people[0]["id"], "yaodu", people[0]["master_person_id"], 0)
    assert (first["last_classification"], [v["condition"] for v in first["last_visits"]]) == \
        ("not_controlled", ["hypertension"])
    assert "name" not in json.dumps(first)

    overdue, _ = _section(client, fd, "overdue")
    assert [(e["contract_id"], e["days_overdue"], e["last_classification"]) for e in overdue] == [
        (ids[3], 6, "urgent"), (ids[2], 1, "not_controlled")]
    alerted, _ = _section(client, fd, "alerts")
    assert [(e["contract_id"], e["open_alerts"], e["last_classification"]) for e in alerted] == [(ids[3], 1, "urgent")]
    expiring, _ = _section(client, fd, "expiring")
    assert [(e["contract_id"], e["contract_ends_on"], e["last_visits"]) for e in expiring] == [
        (ids[4], (TODAY + timedelta(days=24)).isoformat(), [])]

    summary = client.get(f"{FD}/worklist/summary", headers=fd).get_json()
    assert summary == {"team": "YAODU-T1-A", "today": TODAY.isoformat(), "week_ends_on": SUNDAY.isoformat(),
                       "due": 2, "overdue": 2, "alerts": 1, "expiring": 1}
    platform_db.rollback()
    reads = platform_db.scalars(select(AuditEvent.patient).where(AuditEvent.resource_type == "Contract",
                                                                 AuditEvent.detail == "worklist overdue")).all()
    assert sorted(reads) == sorted(f"yaodu/{people[i]['id']}" for i in (2, 3))


def test_sorted_and_paged(client, desk):
    fd, ids = desk["fd"], desk["contracts"]
    latest_first, _ = _section(client, fd, "due", sort="-due_on")
    assert [e["due_on"] for e in latest_first] == [SUNDAY.isoformat(), TODAY.isoformat()]
    page, paging = _section(client, fd, "overdue", page=2, page_size=1)
    assert [e["contract_id"] for e in page] == [ids[2]] and paging["total"] == 2 and paging["page"] == 2
    for section, sort in (("due", "ends_on"), ("expiring", "due_on"), ("alerts", "due_on")):
        refused, _ = _section(client, fd, section, status=422, sort=sort)
        assert [e["field"] for e in refused["errors"]] == ["sort"]
    refused, _ = _section(client, fd, "everything", status=422)
    assert [e["field"] for e in refused["errors"]] == ["section"]


def test_the_week_turns_on_monday(client, desk, monkeypatch):
    fd = desk["fd"]
    monkeypatch.setattr(services, "local_today", lambda: SUNDAY + timedelta(days=1))
    due, _ = _section(client, fd, "due")
    assert [e["contract_id"] for e in due] == [desk["contracts"][1]]  # due that Monday
    overdue, _ = _section(client, fd, "overdue")
    assert len(overdue) == 4


def test_a_page_costs_the_same_queries_whatever_its_size(app, client, desk):
    fd = desk["fd"]
    counted: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if "fd_" in statement:
            counted.append(statement)

    engine = app.extensions["hie.engines"].platform
    event.listen(engine, "before_cursor_execute", count)
    try:
        sizes = {}
        for size in (1, 2):
            counted.clear()
            _section(client, fd, "overdue", page_size=size)
            sizes[size] = len(counted)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sizes[1] == sizes[2] <= 6


def test_another_team_sees_nothing(client, desk, other_team):  # noqa: F811
    for section in ("due", "overdue", "alerts", "expiring"):
        entries, paging = _section(client, other_team, section)
        assert entries == [] and paging.get("total", 0) == 0
    summary = client.get(f"{FD}/worklist/summary", headers=other_team).get_json()
    assert (summary["due"], summary["overdue"], summary["alerts"], summary["expiring"]) == (0, 0, 0, 0)


def test_someone_in_no_team_has_no_worklist(client, desk, as_user):
    assert client.get(f"{FD}/worklist", headers=as_user("yaodu.doctor")).status_code == 403
    assert client.get(f"{FD}/worklist/summary", headers=as_user("healthadmin")).status_code == 403


def test_the_worker_expires_contracts_once_a_day(app, client, desk, platform_db):
    fd, ids = desk["fd"], desk["contracts"]
    day = TODAY + timedelta(days=25)  # the day after the fifth contract's last day
    tasks._done_days.discard(day)
    assert tasks.periodic(app, day) == 1
    assert tasks.periodic(app, day) is None  # done for the day
    with app.app_context():
        assert tasks.expire_contracts(day) == 0  # and idempotent anyway
    platform_db.rollback()
    expired = platform_db.get(Contract, ids[4])
    assert (expired.status, expired.active_person_id, expired.end_reason) == (ContractStatus.expired, None,
                                                                              "term ended")
    assert platform_db.scalars(select(FollowUp.status).where(FollowUp.contract_id == ids[4])).all() == \
        [FollowUpStatus.cancelled]
    assert platform_db.get(Contract, ids[0]).status is ContractStatus.active
    expiring, _ = _section(client, fd, "expiring")
    assert expiring == []
