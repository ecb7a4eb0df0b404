"""GET /api/v1/stats/consultations: exact figures over consultation rows written with chosen timestamps, region scope,
small cells, refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from hie.consult.models import Consultation, ConsultStatus, Kind, Urgency
from hie.consult.stats import consult_figures
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from hie.platform.figures import Window
from hie.tenants.models import Institution
from tests.conftest import PASSWORD, login

T0 = datetime(2025, 9, 10, 2, 0, tzinfo=UTC)
WINDOW = "since=2025-09-01T00:00:00%2B08:00&until=2025-12-01T00:00:00%2B08:00"
SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = timedelta(minutes=1)


def _row(ids: dict[str, int], kind: Kind, urgency: Urgency, requester: str, consultant: str, department: str,
         made: datetime, status: ConsultStatus, opinion: int | None = None, moved: int | None = None) -> Consultation:
    """A consultation requested at `made`; opinion and moved are minutes after it (opinion_at, the last move)."""
    tenant = {"YAODU-T1": "yaodu", "YAODU-CH": "yaodu", "QUWO-CH": "quwo", "LF-PH": "linfen"}[requester]
    turnaround = {Urgency.urgent: 30 * MINUTE, Urgency.routine: 24 * 60 * MINUTE}[urgency]
    opinion_at = made + opinion * MINUTE if opinion is not None else None
    return Consultation(
        id=str(uuid.uuid4()), kind=kind, urgency=urgency, status=status, requester_institution_id=ids[requester],
        requester_user_id=1, requester_tenant_code=tenant, patient_id=str(uuid.uuid4()),
        master_person_id=str(uuid.uuid4()), consultant_institution_id=ids[consultant], department=department,
        question="请会诊", records=[], created_at=made, updated_at=made + (moved or opinion or 0) * MINUTE,
        due_at=made + turnaround if kind in (Kind.imaging_read, Kind.ecg_read) else None,
        opinion_at=opinion_at)


@pytest.fixture
def region(app, client):
    """Fifteen consultations: fourteen requested from September to November 2025 (Shanghai), one in August."""
    s = ConsultStatus
    with session_scope(app.extensions["hie.engines"].platform) as session:
        ids = dict(session.execute(select(Institution.code, Institution.id)).all())
        hour, day = 60 * MINUTE, 24 * 60 * MINUTE
        read = (Kind.imaging_read, Urgency.urgent, "YAODU-T1", "LF-PH", "放射科")
        ask = (Kind.consultation, Urgency.routine, "QUWO-CH", "LF-PH", "心内科")
        ecg = (Kind.ecg_read, Urgency.routine, "YAODU-CH", "LF-PH", "心电图室")
        rows = {
            # A: 屯里镇卫生院 asks 临汾市人民医院 for urgent imaging reads (due 30 minutes after the request)
            "a1": _row(ids, *read, T0, s.acknowledged, opinion=20),  # read in time
            "a2": _row(ids, *read, T0 + hour, s.opinion_given, opinion=30),  # at the deadline: in time
            "a3": _row(ids, *read, T0 + 2 * hour, s.closed, opinion=45),  # late
            "a4": _row(ids, *read, T0 + 3 * hour, s.requested),  # still waiting past its deadline: due, missed
            "a5": _row(ids, *read, T0 + 4 * hour, s.declined, moved=10),  # declined in time: answered, not due
            "a6": _row(ids, *read, T0 + 5 * hour, s.cancelled, moved=40),  # cancelled after its deadline: missed
            # B: 曲沃县人民医院 asks 临汾市人民医院's cardiology (consultations have no deadline)
            "b1": _row(ids, *ask, T0 + day, s.closed, opinion=120, moved=300),  # closed 300 minutes after
            "b2": _row(ids, *ask, T0 + day + hour, s.opinion_given, opinion=60),
            "b3": _row(ids, *ask, T0 + day + 2 * hour, s.accepted, moved=15),
            "b4": _row(ids, *ask, T0 + day + 3 * hour, s.requested),
            "b5": _row(ids, *ask, T0 + day + 4 * hour, s.declined, moved=30),
            # C: 尧都区人民医院 asks for routine ECG reads (due 24 hours after); the second on 31 October 17:00 UTC,
            # which is 1 November in Shanghai
            "c1": _row(ids, *ecg, datetime(2025, 10, 5, 2, tzinfo=UTC), s.closed, opinion=60),
            "c2": _row(ids, *ecg, datetime(2025, 10, 31, 17, tzinfo=UTC), s.opinion_given, opinion=1500),
            # D: 临汾市人民医院 asks 尧都区人民医院 for an MDT: in 尧都区's scope through the consulting side
            "d1": _row(ids, Kind.mdt, Urgency.routine, "LF-PH", "YAODU-CH", "肿瘤科",
                       datetime(2025, 11, 15, 2, tzinfo=UTC), s.requested),
            # before the window
            "old": _row(ids, *read, datetime(2025, 8, 20, 2, tzinfo=UTC), s.closed, opinion=10),
        }
        session.add_all(rows.values())
    return rows


@pytest.fixture
def county_admin(app, client) -> dict[str, str]:
    """A health administrator of 尧都区 (141002)."""
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "yaodu.healthadmin", [Role.health_admin], "YAODU-CH", PASSWORD)
    return login(client, "yaodu.healthadmin")


def _stats(client, headers, query: str = "") -> dict:
    response = client.get(f"/api/v1/stats/consultations?{WINDOW}&{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _figures(group: dict) -> dict:
    return {name: group[name] for name in (
        "requests", "answered", "answered_share", "opinions", "median_minutes_to_opinion", "declined", "cancelled",
        "reads_due", "reads_within_deadline", "reads_within_deadline_share", "suppressed")}


SUPPRESSED = {**dict.fromkeys(("requests", "answered", "answered_share", "opinions", "median_minutes_to_opinion",
                               "declined", "cancelled", "reads_due", "reads_within_deadline",
                               "reads_within_deadline_share")), "suppressed": True}


def test_city_totals_are_exact_and_the_read_is_audited(client, as_user, region, platform_db):
    body = _stats(client, as_user("healthadmin"))
    assert body["since"] == "2025-08-31T16:00:00+00:00" and body["until"] == "2025-11-30T16:00:00+00:00"
    assert body["min_cell"] == 5 and body["groups"] == []
    assert _figures(body["total"]) == {
        "requests": 14,  # A 6 + B 5 + C 2 + D 1; the August read is outside the window
        "answered": 9,  # opinions a1 a2 a3 b1 b2 c1 c2, declined a5 b5
        "answered_share": 0.6429,  # 9 / 14
        "opinions": 7,
        "median_minutes_to_opinion": 60.0,  # of 20 30 45 120 60 60 1500
        "declined": 2,  # a5 b5
        "cancelled": 1,  # a6
        "reads_due": 7,  # opinions a1 a2 a3 c1 c2, a4 waiting past due, a6 cancelled after due (not a5)
        "reads_within_deadline": 3,  # a1 (20 <= 30), a2 (30 <= 30), c1 (60 <= 1440)
        "reads_within_deadline_share": 0.4286,  # 3 / 7
        "suppressed": False,
    }
    platform_db.rollback()
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "ConsultationStatistics")).one()
    assert (event.username, event.action, event.outcome, event.purpose) == (
        "healthadmin", "read", "success", "health_management")
    assert event.patient is None
    assert event.detail == ("since=2025-08-31T16:00:00+00:00 until=2025-11-30T16:00:00+00:00 group_by= groups=0 "
                            "suppressed=0")


def test_by_kind_small_kinds_are_suppressed(client, as_user, region, platform_db):
    groups = _stats(client, as_user("healthadmin"), "group_by=kind")["groups"]
    assert [group["kind"] for group in groups] == ["consultation", "ecg_read", "imaging_read", "mdt"]
    consultation, ecg, imaging, mdt = groups
    assert _figures(consultation) == {
        "requests": 5, "answered": 3,  # b1 b2 opinions, b5 declined
        "answered_share": 0.6, "opinions": 2, "median_minutes_to_opinion": 90.0,  # of 120 and 60
        "declined": 1, "cancelled": 0, "reads_due": 0, "reads_within_deadline": 0,
        "reads_within_deadline_share": None,  # no reads: no share
        "suppressed": False}
    assert _figures(imaging) == {
        "requests": 6, "answered": 4, "answered_share": 0.6667,  # 4 / 6
        "opinions": 3, "median_minutes_to_opinion": 30.0,  # of 20 30 45
        "declined": 1, "cancelled": 1, "reads_due": 5, "reads_within_deadline": 2,
        "reads_within_deadline_share": 0.4,  # 2 / 5
        "suppressed": False}
    assert _figures(ecg) == SUPPRESSED and _figures(mdt) == SUPPRESSED  # 2 and 1 requests
    platform_db.rollback()
    detail = platform_db.scalar(select(AuditEvent.detail).where(AuditEvent.resource_type == "ConsultationStatistics"))
    assert detail.endswith("group_by=kind groups=4 suppressed=2")


def test_by_institution_department_county_and_month(client, as_user, region):
    pairs = _stats(client, as_user("healthadmin"), "group_by=consultant,requester")["groups"]
    assert [(g["requesting_institution"], g["consulting_institution"], g["requests"], g["suppressed"])
            for g in pairs] == [("LF-PH", "YAODU-CH", None, True), ("QUWO-CH", "LF-PH", 5, False),
                                ("YAODU-CH", "LF-PH", None, True), ("YAODU-T1", "LF-PH", 6, False)]
    assert (pairs[3]["requesting_institution_name"], pairs[3]["consulting_institution_name"]) == (
        "屯里镇卫生院", "临汾市人民医院")
    counties = _stats(client, as_user("healthadmin"), "group_by=county")["groups"]
    assert [(g["county"], g["county_name"], g["requests"]) for g in counties] == [
        ("141000", "临汾市", None),  # d1, asked by a linfen institution
        ("141002", "尧都区", 8),  # A 6 + C 2
        ("141021", "曲沃县", 5)]
    departments = _stats(client, as_user("healthadmin"), "group_by=department,urgency")["groups"]
    assert [(g["urgency"], g["department"], g["requests"]) for g in departments] == [
        ("routine", "心内科", 5), ("routine", "心电图室", None), ("routine", "肿瘤科", None), ("urgent", "放射科", 6)]
    months = _stats(client, as_user("healthadmin"), "group_by=month")["groups"]
    assert [(g["month"], g["requests"], g["suppressed"]) for g in months] == [
        ("2025-09", 11, False), ("2025-10", None, True),  # c1
        ("2025-11", None, True)]  # c2 (1 November in Shanghai) and d1


def test_a_county_administrator_sees_consultations_either_side_of_which_is_theirs(client, county_admin, region):
    body = _stats(client, county_admin, "group_by=consultant")
    assert _figures(body["total"]) == {
        "requests": 9,  # A 6 + C 2 asked from 尧都区, d1 asked of it; B (曲沃县 to the city) is not theirs
        "answered": 6, "answered_share": 0.6667,  # a1 a2 a3 a5 c1 c2; 6 / 9
        "opinions": 5, "median_minutes_to_opinion": 45.0,  # of 20 30 45 60 1500
        "declined": 1, "cancelled": 1, "reads_due": 7, "reads_within_deadline": 3,
        "reads_within_deadline_share": 0.4286,  # 3 / 7
        "suppressed": False}
    assert [(g["consulting_institution"], g["requests"]) for g in body["groups"]] == [("LF-PH", 8), ("YAODU-CH", None)]


def test_a_deadline_still_to_come_is_not_yet_due(app, client, region, platform_db):
    window = Window(datetime(2025, 9, 1, tzinfo=SHANGHAI), datetime(2025, 12, 1, tzinfo=SHANGHAI), SHANGHAI)
    early = T0 + 3 * 60 * MINUTE + 20 * MINUTE  # a4 and a6 wait, their deadlines 10 minutes and 2 hours off
    with app.app_context():
        imaging = consult_figures(platform_db, {"141000", "141002", "141021"}, window, ["kind"], now=early)
    figures = next(group for group in imaging["groups"] if group["kind"] == "imaging_read")
    assert (figures["reads_due"], figures["reads_within_deadline"], figures["reads_within_deadline_share"]) == (
        3, 2, 0.6667)  # a1 a2 a3 read; 2 / 3


def test_no_region_means_no_figures(app, client, region, platform_db):
    with app.app_context():
        figures = consult_figures(platform_db, set(), group_by=["kind"])
    assert figures["groups"] == [] and figures["total"]["requests"] == 0


def test_a_clinician_is_refused_403_audited_whatever_the_query(client, as_user, region, platform_db):
    for query in ("", "group_by=name", "since=yesterday"):
        response = client.get(f"/api/v1/stats/consultations?{query}", headers=as_user("lfph.specialist"))
        assert response.status_code == 403, response.get_json()
    platform_db.rollback()
    denied = platform_db.scalars(select(AuditEvent.detail).where(AuditEvent.username == "lfph.specialist",
                                                                 AuditEvent.action == "authorize",
                                                                 AuditEvent.outcome == "denied")).all()
    assert denied == ["missing stats:read"] * 3
    assert platform_db.scalar(select(AuditEvent).where(AuditEvent.resource_type == "ConsultationStatistics")) is None


@pytest.mark.parametrize(("query", "field"), [
    ("group_by=kind,name", "group_by[1]"),
    ("since=yesterday", "since"),
    ("until=2025-12-01T00:00:00", "until"),  # no time zone
    ("since=2025-12-01T00:00:00Z&until=2025-11-01T00:00:00Z", "since"),
])
def test_bad_parameters_are_422_naming_the_field(client, as_user, query, field):
    response = client.get(f"/api/v1/stats/consultations?{query}", headers=as_user("healthadmin"))
    assert response.status_code == 422, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == [field]
