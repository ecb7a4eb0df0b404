"""Reading queues: order (urgent first, then the longest waiting), paging, claims (one reader at a time, expiring,
taken over, released), the claim the opinion needs, and the worker's overdue flags and claim sweep, on a controlled
clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from hie.consult import queue, services, tasks
from hie.consult.models import Consultation, ConsultationStep, ConsultStatus, Kind, Urgency
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.config import ConfigError
from hie.platform.db import session_scope, utcnow
from hie.platform.jobs.models import PlatformOutboxEvent
from tests.conftest import PASSWORD, new_patient
from tests.test_consult_attachments import create, identity_of, in_request

MADE = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
QUEUE = "/api/v1/reading-queue"


@pytest.fixture
def patient_id(client, as_user) -> str:
    return new_patient(client, as_user("yaodu.fd"), mrn="T1-READ")["id"]


@pytest.fixture
def second_reader(app) -> str:
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "lfph.reader2", [Role.specialist], "LF-PH", PASSWORD)
    return "lfph.reader2"


def _status(platform_db, consultation_id: str) -> Consultation:
    platform_db.rollback()
    return platform_db.get_one(Consultation, consultation_id)


def test_the_queue_is_urgent_first_then_longest_waiting_open_reads_of_the_callers_institution(
        app, client, as_user, platform_db, patient_id):
    now = utcnow()
    made = {name: create(app, platform_db, patient_id, kind, urgency, now - timedelta(minutes=minutes), department)
            for name, kind, urgency, minutes, department in (
                ("routine_old", Kind.imaging_read, Urgency.routine, 300, "放射科"),
                ("routine_new", Kind.imaging_read, Urgency.routine, 20, "放射科"),
                ("urgent_new", Kind.imaging_read, Urgency.urgent, 10, "放射科"),
                ("urgent_late", Kind.imaging_read, Urgency.urgent, 45, "放射科"),
                ("routine_ct", Kind.imaging_read, Urgency.routine, 100, "CT室"),
                ("ecg", Kind.ecg_read, Urgency.urgent, 50, "心电图室"),
                ("consultation", Kind.consultation, Urgency.urgent, 60, "放射科"),
                ("closed", Kind.imaging_read, Urgency.urgent, 500, "放射科"),
                ("cancelled", Kind.imaging_read, Urgency.urgent, 400, "放射科"))}
    made["elsewhere"] = create(app, platform_db, patient_id, Kind.imaging_read, Urgency.urgent,
                               now - timedelta(minutes=900), consultant="QUWO-CH")
    platform_db.execute(update(Consultation).where(Consultation.id == made["closed"]).values(
        status=ConsultStatus.closed))
    platform_db.execute(update(Consultation).where(Consultation.id == made["cancelled"]).values(
        status=ConsultStatus.cancelled))
    platform_db.execute(update(Consultation).where(Consultation.id == made["routine_new"]).values(
        status=ConsultStatus.in_session))
    platform_db.commit()
    order = ["urgent_late", "urgent_new", "routine_old", "routine_ct", "routine_new"]

    response = client.get(f"{QUEUE}?kind=imaging_read", headers=as_user("lfph.specialist"))
    assert response.status_code == 200
    listed = response.get_json()
    assert [entry["id"] for entry in listed] == [made[name] for name in order]
    assert [entry["overdue"] for entry in listed] == [True, False, False, False, False]
    first = listed[0]
    assert first["due_at"] is not None and first["claimed_by"] is None and first["claim_expires_at"] is None
    assert (first["requester_institution"], first["status"], first["urgency"]) == ("YAODU-T1", "requested", "urgent")
    assert 44 <= first["waiting_minutes"] <= 46

    for size in (1, 2, 3):
        paged = []
        for page in range(1, 6):
            got = client.get(f"{QUEUE}?kind=imaging_read&page={page}&page_size={size}",
                             headers=as_user("lfph.specialist"))
            paged += [entry["id"] for entry in got.get_json()]
            assert '"total": 5' in got.headers["X-Pagination"]
        assert paged == [made[name] for name in order], size
    department = client.get(f"{QUEUE}?kind=imaging_read&department=放射科", headers=as_user("lfph.specialist"))
    assert [entry["id"] for entry in department.get_json()] == [
        made[name] for name in order if name != "routine_ct"]
    ecg = client.get(f"{QUEUE}?kind=ecg_read", headers=as_user("lfph.specialist"))
    assert [entry["id"] for entry in ecg.get_json()] == [made["ecg"]]
    assert client.get(f"{QUEUE}?kind=imaging_read", headers=as_user("quwo.doctor")).get_json()[0]["id"] == \
        made["elsewhere"]
    assert client.get(f"{QUEUE}?kind=imaging_read", headers=as_user("yaodu.fd")).get_json() == []

    platform_db.rollback()
    reads = platform_db.scalars(select(AuditEvent.resource_id).where(
        AuditEvent.request_id == response.headers["X-Request-Id"], AuditEvent.action == "read")).all()
    assert sorted(reads) == sorted(made[name] for name in order)


@pytest.mark.parametrize("query", ["", "?kind=consultation", "?kind=imaging_read&department=", "?kind=ct"])
def test_the_queue_names_a_bad_query_field(client, as_user, query):
    response = client.get(f"{QUEUE}{query}", headers=as_user("lfph.specialist"))
    assert response.status_code == 422
    assert {e["field"] for e in response.get_json()["errors"]} <= {"kind", "department"}


def test_a_caller_without_patient_read_is_refused_before_the_query_is_read(client, as_user):
    assert client.get(QUEUE, headers=as_user("healthadmin")).status_code == 403


def test_claim_accepts_and_starts_a_requested_read_through_the_steps(app, client, as_user, platform_db, patient_id):
    read = create(app, platform_db, patient_id, urgency=Urgency.urgent)
    response = client.post(f"{QUEUE}/{read}/claim", headers=as_user("lfph.specialist"))
    assert response.status_code == 200, response.get_json()
    entry = response.get_json()
    assert entry["claimed_by"] == "lfph.specialist" and entry["status"] == "in_session"
    row = _status(platform_db, read)
    expires = row.claim_expires_at
    assert row.consultant_user_id == identity_of(platform_db, "lfph.specialist").user_id
    assert timedelta(minutes=29) < expires - utcnow() <= timedelta(minutes=30)
    steps = platform_db.scalars(select(ConsultationStep.to_status).where(ConsultationStep.consultation_id == read)
                                .order_by(ConsultationStep.id)).all()
    assert steps == [ConsultStatus.requested, ConsultStatus.accepted, ConsultStatus.in_session]
    events = platform_db.scalars(select(AuditEvent).where(
        AuditEvent.request_id == response.headers["X-Request-Id"])).all()
    assert [e.detail.split(" until ")[0] for e in events if e.action == "update"] == [
        "consultation requested -> accepted", "consultation accepted -> in_session", "read claimed"]
    assert {e.patient for e in events} == {services.patient_ref(row)}
    listed = client.get(f"{QUEUE}?kind=imaging_read", headers=as_user("lfph.specialist")).get_json()
    assert listed[0]["claimed_by"] == "lfph.specialist" and listed[0]["claim_expires_at"] is not None
    again = client.post(f"{QUEUE}/{read}/claim", headers=as_user("lfph.specialist"))  # renews, no new steps
    assert again.status_code == 200 and _status(platform_db, read).claim_expires_at >= expires
    assert len(platform_db.scalars(select(ConsultationStep).where(ConsultationStep.consultation_id == read)).all()) \
        == 3


def test_one_reader_at_a_time_an_expired_claim_taken_over_on_a_controlled_clock(app, platform_db, patient_id,
                                                                               second_reader):
    read = create(app, platform_db, patient_id, made=MADE)
    first, second = identity_of(platform_db, "lfph.specialist"), identity_of(platform_db, second_reader)
    status, _ = in_request(app, first, queue.claim, first, read, MADE + timedelta(minutes=1))
    assert status == 200
    status, refusal = in_request(app, second, queue.claim, second, read, MADE + timedelta(minutes=30))
    assert status == 409
    assert refusal.data["message"] == "the read is claimed by lfph.specialist until 2026-11-02T08:31:00+00:00"
    row = _status(platform_db, read)
    assert (row.claimed_by, row.claim_expires_at) == (first.user_id, MADE + timedelta(minutes=31))
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == second_reader)).all()
    assert [(e.action, e.outcome, e.patient) for e in refused] == [("update", "failure", services.patient_ref(row))]

    status, _ = in_request(app, second, queue.claim, second, read, MADE + timedelta(minutes=31))
    assert status == 200
    row = _status(platform_db, read)
    assert (row.claimed_by, row.claim_expires_at) == (second.user_id, MADE + timedelta(minutes=61))
    status, refusal = in_request(app, first, queue.release, first, read, MADE + timedelta(minutes=32))
    assert status == 409 and "claimed by lfph.reader2" in refusal.data["message"]
    status, refusal = in_request(app, first, queue.check_claim, first, row, MADE + timedelta(minutes=32))
    assert status == 409 and "only the reader holding the claim" in refusal.data["message"]
    assert in_request(app, second, queue.check_claim, second, row, MADE + timedelta(minutes=32))[0] == 200
    assert in_request(app, second, queue.check_claim, second, row, MADE + timedelta(minutes=61))[0] == 409

    status, _ = in_request(app, second, queue.release, second, read, MADE + timedelta(minutes=40))
    assert status == 200
    row = _status(platform_db, read)
    assert (row.claimed_by, row.claim_expires_at, row.status) == (None, None, ConsultStatus.in_session)
    status, refusal = in_request(app, second, queue.release, second, read, MADE + timedelta(minutes=41))
    assert status == 409 and "it is not claimed" in refusal.data["message"]


def test_a_conflicting_claim_over_the_api_is_409_naming_the_holder_and_changes_nothing(
        app, client, as_user, platform_db, patient_id, second_reader):
    read = create(app, platform_db, patient_id)
    assert client.post(f"{QUEUE}/{read}/claim", headers=as_user("lfph.specialist")).status_code == 200
    before = _status(platform_db, read)
    held = (before.claimed_by, before.claim_expires_at, before.updated_at)
    refused = client.post(f"{QUEUE}/{read}/claim", headers=as_user(second_reader))
    assert refused.status_code == 409
    assert refused.get_json()["detail"].startswith("the read is claimed by lfph.specialist until ")
    after = _status(platform_db, read)
    assert (after.claimed_by, after.claim_expires_at, after.updated_at) == held
    assert client.post(f"{QUEUE}/{read}/release", headers=as_user(second_reader)).status_code == 409
    assert client.post(f"{QUEUE}/{read}/release", headers=as_user("lfph.specialist")).status_code == 200
    assert client.post(f"{QUEUE}/{read}/claim", headers=as_user(second_reader)).get_json()["claimed_by"] == \
        second_reader


def test_claims_are_for_the_reading_institutions_open_reads_only(app, client, as_user, platform_db, patient_id):
    read = create(app, platform_db, patient_id)
    consultation = create(app, platform_db, patient_id, kind=Kind.consultation)
    closed = create(app, platform_db, patient_id)
    platform_db.execute(update(Consultation).where(Consultation.id == closed).values(status=ConsultStatus.closed))
    platform_db.commit()
    cases = ((read, "quwo.doctor", 404), (read, "yaodu.doctor", 404), (read, "yaodu.fd", 403),
             (consultation, "lfph.specialist", 409), (closed, "lfph.specialist", 409),
             ("no-such-read", "lfph.specialist", 404), (read, "auditor", 403))
    for consultation_id, user, expected in cases:
        for action in ("claim", "release"):
            response = client.post(f"{QUEUE}/{consultation_id}/{action}", headers=as_user(user))
            assert response.status_code == expected, (consultation_id, user, action, response.get_json())
            platform_db.rollback()
            outcomes = platform_db.scalars(select(AuditEvent.outcome).where(
                AuditEvent.request_id == response.headers["X-Request-Id"])).all()
            assert outcomes and set(outcomes) <= {"denied", "not_found", "failure"}
    row = _status(platform_db, read)
    assert (row.status, row.claimed_by) == (ConsultStatus.requested, None)


def test_check_claim_lets_other_kinds_and_later_versions_pass(app, platform_db, patient_id):
    consultation = _status(platform_db, create(app, platform_db, patient_id, kind=Kind.consultation))
    reader = identity_of(platform_db, "lfph.specialist")
    assert in_request(app, reader, queue.check_claim, reader, consultation)[0] == 200
    read = _status(platform_db, create(app, platform_db, patient_id))
    assert in_request(app, reader, queue.check_claim, reader, read)[0] == 409
    read.status = ConsultStatus.opinion_given
    assert in_request(app, reader, queue.check_claim, reader, read)[0] == 200


def test_the_worker_flags_overdue_reads_once_and_clears_expired_claims(app, platform_db, patient_id):
    urgent = create(app, platform_db, patient_id, urgency=Urgency.urgent, made=MADE)
    routine = create(app, platform_db, patient_id, urgency=Urgency.routine, made=MADE)
    consultation = create(app, platform_db, patient_id, kind=Kind.consultation, made=MADE)
    answered = create(app, platform_db, patient_id, urgency=Urgency.urgent, made=MADE)
    platform_db.execute(update(Consultation).where(Consultation.id == answered).values(
        status=ConsultStatus.opinion_given))
    platform_db.commit()
    reader = identity_of(platform_db, "lfph.specialist")
    assert in_request(app, reader, queue.claim, reader, routine, MADE + timedelta(minutes=5))[0] == 200

    def tick(minutes: int) -> tuple[int, int]:
        return tasks.periodic(app, MADE + timedelta(minutes=minutes))

    def overdue_events() -> list[str]:
        platform_db.rollback()
        return [e.payload["consultation_id"] for e in platform_db.scalars(
            select(PlatformOutboxEvent).where(PlatformOutboxEvent.topic == tasks.OVERDUE_TOPIC))]

    assert tick(30) == (0, 0)
    assert tick(31) == (1, 0)
    assert overdue_events() == [urgent] and _status(platform_db, urgent).overdue_flagged_at == MADE + timedelta(
        minutes=31)
    assert tick(35) == (0, 1)  # the claim made at 08:05 for 30 minutes ends at 08:35
    row = _status(platform_db, routine)
    assert (row.claimed_by, row.claim_expires_at, row.status) == (None, None, ConsultStatus.in_session)
    assert tick(24 * 60) == (0, 0)
    assert tick(24 * 60 + 1) == (1, 0)
    assert tick(48 * 60) == (0, 0)
    assert sorted(overdue_events()) == sorted([urgent, routine])
    assert consultation not in overdue_events() and answered not in overdue_events()


def test_the_queue_shows_overdue_and_expired_claims_on_a_controlled_clock(app, platform_db, patient_id):
    read = create(app, platform_db, patient_id, urgency=Urgency.urgent, made=MADE)
    reader = identity_of(platform_db, "lfph.specialist")
    assert in_request(app, reader, queue.claim, reader, read, MADE + timedelta(minutes=10))[0] == 200

    def shown(minutes: int) -> dict:
        status, (rows, total) = in_request(app, reader, queue.page, reader, Kind.imaging_read, None, 0, 20,
                                           MADE + timedelta(minutes=minutes))
        assert status == 200 and total == 1
        return rows[0]

    at_20 = shown(20)
    assert (at_20["overdue"], at_20["claimed_by"], at_20["waiting_minutes"]) == (False, "lfph.specialist", 20)
    assert at_20["claim_expires_at"] == MADE + timedelta(minutes=40)
    at_41 = shown(41)
    assert (at_41["overdue"], at_41["claimed_by"], at_41["claim_expires_at"]) == (True, None, None)


@pytest.mark.parametrize(("raw", "minutes"), [(None, 30), ("1", 1), ("1440", 1440)])
def test_claim_period_setting(raw, minutes):
    assert queue.claim_period({} if raw is None else {queue.CLAIM_SETTING: raw}) == timedelta(minutes=minutes)


@pytest.mark.parametrize("raw", ["0", "1441", "half an hour", "-5", "٣"])
def test_a_malformed_claim_period_is_named(raw):
    with pytest.raises(ConfigError, match="HIE_CONSULT_CLAIM_MINUTES"):
        queue.claim_period({queue.CLAIM_SETTING: raw})


def test_a_malformed_claim_period_stops_the_app_at_start_up(tmp_path):
    from hie.platform.app import create_app
    from hie.platform.config import load_config

    config = load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "t" * 40, "HIE_CONSULT_CLAIM_MINUTES": "0"})
    with pytest.raises(ConfigError, match="HIE_CONSULT_CLAIM_MINUTES"):
        create_app(config)
