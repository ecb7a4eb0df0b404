"""GET /api/v1/stats/referrals: exact figures over referrals moved with a controlled clock, region scope, small
cells, refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import g
from sqlalchemy import select

from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import finish_unit_of_work, session_scope
from hie.referral import services
from hie.referral.models import Direction, Urgency
from tests.conftest import PASSWORD, login, new_patient

T0 = datetime(2025, 9, 10, 2, 0, tzinfo=UTC)
WINDOW = "since=2025-09-01T00:00:00%2B08:00&until=2025-12-01T00:00:00%2B08:00"
MOVES = {"accept": services.accept, "decline": services.decline, "arrive": services.arrive,
         "complete": services.complete, "cancel": services.cancel, "no-show": services.no_show}


def _identity(platform_db, username: str) -> Identity:
    user = platform_db.scalars(select(User).where(User.username == username)).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id="test")


class Clinic:
    """Referrals made and moved through the services at chosen times, each in its own committed unit of work."""

    def __init__(self, app, platform_db, patients: dict[str, str]) -> None:
        self.app, self.patients = app, patients
        self.who = {name: _identity(platform_db, name)
                    for name in ("yaodu.fd", "quwo.doctor", "lfph.specialist", "yaodu.doctor")}

    def _unit(self, username: str, call) -> object:  # noqa: ANN001
        with self.app.test_request_context("/api/v1/referrals", method="POST"):
            g.identity, g.request_id = self.who[username], uuid.uuid4().hex
            result = call(self.who[username])
            finish_unit_of_work(commit=True)
        return result

    def send(self, username: str, receiver: str, direction: Direction, urgency: Urgency, made: datetime) -> dict:
        body = {"patient_id": self.patients[username], "direction": direction, "urgency": urgency,
                "receiving_institution": receiver, "department": None, "reason": "进一步诊治", "diagnoses": [],
                "clinical_summary": None, "records": []}
        referral_id = self._unit(username, lambda who: services.create(who, body, made).id)
        return {"id": referral_id, "made": made}

    def move(self, username: str, referral: dict, action: str, minutes: int) -> None:
        body = {"accept": {"appointment_at": referral["made"] + timedelta(days=1)}, "decline": {"reason": "床位已满"},
                "arrive": {"patient_id": self.patients[username]}, "complete": {"discharge_summary": "好转出院"},
                }.get(action, {})
        at = referral["made"] + timedelta(minutes=minutes)
        self._unit(username, lambda who: MOVES[action](who, referral["id"], body, now=at))


@pytest.fixture
def region(app, client, as_user, platform_db):
    """Twelve referrals from September to November 2025 between the three tenants, and one in August."""
    patients = {name: new_patient(client, as_user(name), mrn=f"S-{name}")["id"]
                for name in ("yaodu.fd", "quwo.doctor", "lfph.specialist")}
    clinic = Clinic(app, platform_db, patients)
    up, down = Direction.up, Direction.down
    # 屯里镇卫生院 up to 临汾市人民医院, urgent (answer within 240 minutes)
    a, b, c, d, e, f = (clinic.send("yaodu.fd", "LF-PH", up, Urgency.urgent, T0 + timedelta(hours=i))
                        for i in range(6))
    for referral, answer in ((a, 60), (b, 120), (c, 300)):
        clinic.move("lfph.specialist", referral, "accept", answer)
    clinic.move("lfph.specialist", a, "arrive", 1440)
    clinic.move("lfph.specialist", a, "complete", 2880)
    clinic.move("lfph.specialist", b, "arrive", 4320)
    clinic.move("lfph.specialist", c, "no-show", 2880)
    clinic.move("lfph.specialist", d, "decline", 180)
    clinic.move("yaodu.fd", f, "cancel", 60)  # withdrawn before its deadline: no answer was due
    # 曲沃县人民医院 up to 临汾市人民医院, routine (48 hours), all answered in time
    for i, answer in enumerate((30, 40, 50)):
        referral = clinic.send("quwo.doctor", "LF-PH", up, Urgency.routine, T0 + timedelta(days=1, hours=i))
        clinic.move("lfph.specialist", referral, "accept", answer)
    # 曲沃县人民医院 down to 屯里镇卫生院: one accepted, one left unanswered
    back = clinic.send("quwo.doctor", "YAODU-T1", down, Urgency.routine, datetime(2025, 10, 5, 2, tzinfo=UTC))
    clinic.move("yaodu.fd", back, "accept", 30)
    clinic.send("quwo.doctor", "YAODU-T1", down, Urgency.routine, datetime(2025, 10, 5, 3, tzinfo=UTC))
    # 临汾市人民医院 down to 尧都区人民医院 on 31 October 17:00 UTC, which is 1 November in Shanghai
    clinic.send("lfph.specialist", "YAODU-CH", down, Urgency.routine, datetime(2025, 10, 31, 17, tzinfo=UTC))
    clinic.send("yaodu.fd", "LF-PH", up, Urgency.emergency, datetime(2025, 8, 20, 2, tzinfo=UTC))
    return clinic


@pytest.fixture
def county_admin(app, client) -> dict[str, str]:
    """A health administrator of 尧都区 (141002)."""
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "yaodu.healthadmin", [Role.health_admin], "YAODU-CH", PASSWORD)
    return login(client, "yaodu.healthadmin")


def _stats(client, headers, query: str = "") -> dict:
    response = client.get(f"/api/v1/stats/referrals?{WINDOW}&{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _shown(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k not in ("sending_institution_name", "county_name")}


def test_the_city_administrator_sees_exact_figures_for_the_whole_city(client, as_user, region, platform_db):
    body = _stats(client, as_user("healthadmin"))
    assert (body["since"], body["until"], body["group_by"], body["min_cell"], body["groups"]) == (
        "2025-08-31T16:00:00+00:00", "2025-11-30T16:00:00+00:00", [], 5, [])
    assert body["total"] == {
        "referrals": 12, "up": 9, "down": 3, "answered": 8, "accepted": 7, "declined": 1, "acceptance_rate": 0.875,
        "median_minutes_to_answer": 55.0,  # 30 30 40 50 | 60 120 180 300
        "median_minutes_to_arrival": 2880.0,  # 1440 and 4320
        "answered_within_deadline_share": 0.6364,  # 7 in time of 8 answered + 3 left unanswered past due
        "down_to_up_ratio": 0.3333, "suppressed": False}
    platform_db.rollback()  # a new snapshot (MariaDB reads repeatably within a transaction)
    (event,) = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "ReferralStatistics")).all()
    assert (event.username, event.action, event.outcome, event.patient) == ("healthadmin", "read", "success", None)
    assert "group_by= groups=0" in event.detail
    assert "王秀英" not in str(body)


def test_groups_by_sender_and_direction_with_small_cells_suppressed(client, as_user, region):
    body = _stats(client, as_user("healthadmin"), "group_by=sender,direction")
    assert body["group_by"] == ["direction", "sender"]
    hidden = dict.fromkeys(("referrals", "up", "down", "answered", "accepted", "declined", "acceptance_rate",
                            "median_minutes_to_answer", "median_minutes_to_arrival",
                            "answered_within_deadline_share", "down_to_up_ratio"))
    assert [_shown(group) for group in body["groups"]] == [
        {"direction": "down", "sending_institution": "LF-PH", **hidden, "suppressed": True},
        {"direction": "down", "sending_institution": "QUWO-CH", **hidden, "suppressed": True},
        {"direction": "up", "sending_institution": "QUWO-CH", **hidden, "suppressed": True},
        {"direction": "up", "sending_institution": "YAODU-T1", "referrals": 6, "up": 6, "down": 0, "answered": 4,
         "accepted": 3, "declined": 1, "acceptance_rate": 0.75, "median_minutes_to_answer": 150.0,
         "median_minutes_to_arrival": 2880.0, "answered_within_deadline_share": 0.6, "down_to_up_ratio": 0.0,
         "suppressed": False}]
    assert body["groups"][3]["sending_institution_name"] == "屯里镇卫生院"


def test_months_are_local_calendar_months_and_the_window_bounds_the_count(client, as_user, region):
    body = _stats(client, as_user("healthadmin"), "group_by=month,status")
    by_month: dict[str, list[tuple]] = {}
    for group in body["groups"]:
        by_month.setdefault(group["month"], []).append((group["status"], group["referrals"]))
    # the referral made at 17:00 UTC on 31 October counts in November (Asia/Shanghai)
    assert set(by_month) == {"2025-09", "2025-10", "2025-11"}
    assert by_month["2025-11"] == [("requested", None)]
    months = _stats(client, as_user("healthadmin"), "group_by=month")["groups"]
    assert [(m["month"], m["referrals"], m["suppressed"]) for m in months] == [
        ("2025-09", 9, False), ("2025-10", None, True), ("2025-11", None, True)]
    wider = client.get("/api/v1/stats/referrals?since=2025-08-01T00:00:00Z&until=2025-12-01T00:00:00Z",
                       headers=as_user("healthadmin")).get_json()
    assert wider["total"]["referrals"] == 13
    recent = client.get("/api/v1/stats/referrals", headers=as_user("healthadmin")).get_json()
    assert recent["total"]["referrals"] == 0 and recent["total"]["suppressed"] is False  # none in the last year


def test_a_county_administrator_sees_only_referrals_touching_their_county(client, region, county_admin):
    body = _stats(client, county_admin, "group_by=county")
    assert body["total"] == {
        "referrals": 9, "up": 6, "down": 3, "answered": 5, "accepted": 4, "declined": 1, "acceptance_rate": 0.8,
        "median_minutes_to_answer": 120.0, "median_minutes_to_arrival": 2880.0,
        "answered_within_deadline_share": 0.5, "down_to_up_ratio": 0.5, "suppressed": False}
    assert [(g["county"], g["county_name"], g["referrals"], g["suppressed"]) for g in body["groups"]] == [
        ("141000", "临汾市", None, True), ("141002", "尧都区", 6, False), ("141021", "曲沃县", None, True)]
    receivers = _stats(client, county_admin, "group_by=receiver")["groups"]
    assert [g["receiving_institution"] for g in receivers] == ["LF-PH", "YAODU-CH", "YAODU-T1"]  # no QUWO-CH -> LF-PH


def test_a_clinician_is_refused_403_audited_whatever_the_query(client, as_user, region, platform_db):
    for query in ("", "group_by=name", "since=yesterday"):
        response = client.get(f"/api/v1/stats/referrals?{query}", headers=as_user("yaodu.doctor"))
        assert response.status_code == 403, response.get_json()
    platform_db.rollback()
    denied = platform_db.scalars(select(AuditEvent.detail).where(AuditEvent.username == "yaodu.doctor",
                                                                 AuditEvent.action == "authorize",
                                                                 AuditEvent.outcome == "denied")).all()
    assert denied == ["missing stats:read"] * 3
    assert platform_db.scalar(select(AuditEvent).where(AuditEvent.resource_type == "ReferralStatistics")) is None


@pytest.mark.parametrize(("query", "field"), [
    ("group_by=direction,name", "group_by[1]"),
    ("since=yesterday", "since"),
    ("until=2025-12-01T00:00:00", "until"),  # no time zone
    ("since=2025-12-01T00:00:00Z&until=2025-11-01T00:00:00Z", "since"),
    ("since=2015-01-01T00:00:00Z&until=2025-01-01T00:00:00Z", "since"),
])
def test_bad_parameters_are_422_naming_the_field(client, as_user, query, field):
    response = client.get(f"/api/v1/stats/referrals?{query}", headers=as_user("healthadmin"))
    assert response.status_code == 422, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == [field]
