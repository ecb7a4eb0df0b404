"""Consultations over REST: the whole loop across two tenants, the care relationship it opens and ends, every illegal
move, the wrong side, uninvolved institutions, bad bodies, the video setting and the overdue-reads command."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from hie.consult import services
from hie.consult.models import Consultation, ConsultationStep, ConsultStatus, Participant
from hie.platform.audit.models import AuditEvent
from hie.platform.care import CareRelationship
from hie.platform.config import ConfigError
from hie.platform.db import utcnow
from hie.platform.scripted import identity_of, in_request
from tests.conftest import add_resident, hie_environ, new_patient
from tests.fhir_helpers import clinical, create

VIDEO = "https://meet.example.org/rooms"
WHEN = "2030-01-15T09:00:00+08:00"


@pytest.fixture
def video(app, monkeypatch):
    """A configured video service (the test app starts without one)."""
    monkeypatch.setitem(app.config["HIE"].extra, "HIE_VIDEO_BASE_URL", VIDEO)


def make_loop(client, as_user) -> dict:  # noqa: ANN001
    """A township patient with one Observation at YAODU-T1 (tenant yaodu); the city hospital LF-PH (tenant linfen)."""
    fd, spec = as_user("yaodu.fd"), as_user("lfph.specialist")
    township = new_patient(client, fd, mrn="T1-001")
    observation = create(client, fd, clinical("Observation", f"Patient/{township['id']}"))
    return {"fd": fd, "spec": spec, "township": township, "observation": observation}


@pytest.fixture
def loop(client, as_user):
    """The two institutions and the patient of every test here."""
    return make_loop(client, as_user)


def request_body(loop: dict, **changes: object) -> dict:
    body = {"kind": "consultation", "urgency": "urgent", "patient_id": loop["township"]["id"],
            "consultant_institution": "LF-PH", "department": "心内科", "consultant": "lfph.specialist",
            "question": "胸痛三天，心电图ST段改变，请会诊", "records": [f"Observation/{loop['observation']['id']}"]}
    body.update(changes)
    return body


def ask(client, loop: dict, **changes: object) -> dict:
    response = client.post("/api/v1/consultations", json=request_body(loop, **changes), headers=loop["fd"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def move(client, headers: dict, consultation_id: str, action: str, body: dict | None = None,
         status: int = 200) -> dict:
    response = client.post(f"/api/v1/consultations/{consultation_id}/{action}", json=body or {}, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def give_opinion(app, platform_db, consultation_id: str, username: str = "lfph.specialist") -> None:
    """The opinion step as the opinion module takes it (services.begin_move + services.step)."""
    identity = identity_of(platform_db, username)

    def work() -> None:
        consultation = services.begin_move(identity, consultation_id, "opinion")
        consultation.opinion_at = utcnow()
        services.step(identity, consultation, ConsultStatus.opinion_given, utcnow(), "意见已签署")

    in_request(app, identity, work)


def to_state(client, app, platform_db, loop: dict, state: str, **changes: object) -> dict:
    """A consultation brought to one state (needs the video fixture for in_session and later)."""
    consultation = ask(client, loop, **changes)
    cid, fd, spec = consultation["id"], loop["fd"], loop["spec"]
    path = ["requested", "accepted", "in_session", "opinion_given", "acknowledged", "closed"]
    if state == "declined":
        return move(client, spec, cid, "decline", {"reason": "本科室无此项目"})
    if state == "cancelled":
        return move(client, fd, cid, "cancel", {"reason": "患者已转院"})
    for reached in path[1:path.index(state) + 1]:
        if reached == "accepted":
            consultation = move(client, spec, cid, "accept", {"scheduled_at": WHEN, "duration_minutes": 30})
        elif reached == "in_session":
            consultation = move(client, spec, cid, "start")
        elif reached == "opinion_given":
            give_opinion(app, platform_db, cid)
            consultation = client.get(f"/api/v1/consultations/{cid}", headers=fd).get_json()
        elif reached == "acknowledged":
            consultation = move(client, fd, cid, "acknowledge", {"note": "已阅"})
        else:
            consultation = move(client, fd, cid, "close")
    assert consultation["status"] == state
    return consultation


def reads(client, headers: dict, resource: dict) -> int:
    return client.get(f"/fhir/{resource['resourceType']}/{resource['id']}", headers=headers).status_code


def snapshot(platform_db, consultation_id: str | None = None) -> tuple:
    """Everything a refused move must leave as it was."""
    platform_db.rollback()
    rows = platform_db.execute(select(Consultation.id, Consultation.status, Consultation.updated_at,
                                      Consultation.scheduled_at, Consultation.video_room)
                               .order_by(Consultation.id)).all()
    steps = platform_db.scalar(select(func.count()).select_from(ConsultationStep))
    participants = platform_db.execute(select(Participant.consultation_id, Participant.user_id, Participant.role)
                                       .order_by(Participant.consultation_id, Participant.user_id)).all()
    care = platform_db.execute(select(CareRelationship.institution_id, CareRelationship.ends_at)
                               .order_by(CareRelationship.id)).all()
    return rows, steps, participants, care


def test_the_whole_loop_across_two_tenants(app, client, loop, platform_db, as_user, video):
    fd, spec, observation = loop["fd"], loop["spec"], loop["observation"]
    add_resident(app, "YAODU-T1", loop["township"]["id"])
    assert reads(client, spec, observation) == 404  # no relationship yet
    asked = ask(client, loop)
    assert (asked["status"], asked["kind"], asked["requesting_institution"], asked["consultant_institution"],
            asked["consultant"], asked["requester"]) == ("requested", "consultation", "YAODU-T1", "LF-PH",
                                                         "lfph.specialist", "yaodu.fd")
    assert asked["schedule"] is None and asked["video_url"] is None and asked["video_note"] is None
    assert [s["to_status"] for s in asked["steps"]] == ["requested"]
    assert reads(client, spec, observation) == 200  # the consulting side reads the shared record in another tenant
    cid = asked["id"]
    inbox = client.get("/api/v1/consultations?box=incoming", headers=spec)
    assert [c["id"] for c in inbox.get_json()] == [cid] and '"total": 1' in inbox.headers["X-Pagination"]
    assert client.get("/api/v1/consultations/count", headers=spec).get_json() == {"unanswered": 1, "urgent": 1}
    assert [c["id"] for c in client.get("/api/v1/consultations?box=outgoing", headers=fd).get_json()] == [cid]
    assert client.get("/api/v1/consultations?box=outgoing", headers=spec).get_json() == []

    accepted = move(client, spec, cid, "accept", {"scheduled_at": WHEN, "duration_minutes": 45,
                                                  "consultants": ["lfph.specialist"], "invite_patient": True})
    assert accepted["schedule"] == {"scheduled_at": "2030-01-15T01:00:00+00:00", "duration_minutes": 45,
                                    "ends_at": "2030-01-15T01:45:00+00:00"}
    room = accepted["video_url"].removeprefix(VIDEO + "/")
    assert accepted["video_url"].startswith(VIDEO + "/hie-") and len(room) >= 20 and accepted["video_note"] is None
    assert {(p["username"], p["role"], p["institution"]) for p in accepted["participants"]} == {
        ("lfph.specialist", "consultant", "LF-PH"), ("yaodu.fd", "requester", "YAODU-T1"),
        ("resident.wang", "patient", "YAODU-T1")}
    assert client.get("/api/v1/consultations/count", headers=spec).get_json()["unanswered"] == 0
    resident = as_user("resident.wang")
    mine = client.get("/api/v1/consultations?participant=me", headers=resident).get_json()
    assert [(c["id"], c["video_url"]) for c in mine] == [(cid, accepted["video_url"])]
    assert client.get(f"/api/v1/consultations/{cid}", headers=resident).status_code == 200
    assert move(client, resident, cid, "cancel", status=403)["status"] == 403  # invited, not a clinician
    assert [c["id"] for c in client.get("/api/v1/consultations?participant=me", headers=fd).get_json()] == [cid]

    started = move(client, spec, cid, "start", {"note": "会诊开始"})
    assert started["status"] == "in_session" and started["video_url"] == accepted["video_url"]
    opinion = client.post(f"/api/v1/consultations/{cid}/opinion", headers=spec, json={
        "findings": "血压160/95 mmHg。", "impression": "原发性高血压2级", "recommendations": "加用氢氯噻嗪12.5mg qd",
        "diagnoses": [{"code": "I10", "text": "原发性高血压"}]})
    assert opinion.status_code == 201, opinion.get_json()
    verified = client.get(f"/api/v1/consultations/{cid}/opinion/verify", headers=fd).get_json()
    assert verified["valid"] is True and verified["algorithm"] == "Ed25519"
    shared = client.get(f"/fhir/Patient/{loop['township']['id']}/$everything", headers=fd).get_json()
    notes = [e["resource"] for e in shared["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    assert [n["type"]["coding"][0]["code"] for n in notes] == ["11488-4"]  # the opinion is in the shared record
    acknowledged = move(client, fd, cid, "acknowledge", {"note": "已阅，按意见处理"})
    assert acknowledged["status"] == "acknowledged" and acknowledged["video_url"] is None  # the room is over
    closed = move(client, fd, cid, "close")
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    assert [(s["to_status"], s["username"], s["institution"]) for s in closed["steps"]] == [
        ("requested", "yaodu.fd", "YAODU-T1"), ("accepted", "lfph.specialist", "LF-PH"),
        ("in_session", "lfph.specialist", "LF-PH"), ("opinion_given", "lfph.specialist", "LF-PH"),
        ("acknowledged", "yaodu.fd", "YAODU-T1"), ("closed", "yaodu.fd", "YAODU-T1")]
    assert closed["steps"][2]["note"] == "会诊开始"

    platform_db.rollback()
    ends = platform_db.scalars(select(CareRelationship.ends_at).where(
        CareRelationship.source_ref == f"consultation/{cid}")).all()
    assert len(ends) == 1 and abs(ends[0] - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    assert reads(client, spec, observation) == 200  # within the grace period
    platform_db.execute(update(CareRelationship).values(ends_at=datetime.now(UTC) - timedelta(seconds=1)))
    platform_db.commit()
    assert reads(client, spec, observation) == 404  # and not after
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Consultation",
                                                          AuditEvent.resource_id == cid,
                                                          AuditEvent.action.in_(["create", "update"]))
                                 .order_by(AuditEvent.seq)).all()
    assert [e.detail for e in events] == [
        "consultation new -> requested", "consultation requested -> accepted",
        "consultation accepted -> in_session", "consultation in_session -> opinion_given",
        "consultation opinion_given -> acknowledged", "consultation acknowledged -> closed"]
    assert {e.patient for e in events} == {f"yaodu/{loop['township']['id']}"}


@pytest.mark.parametrize(("state", "action"), [("requested", "decline"), ("requested", "cancel"),
                                               ("accepted", "cancel")])
def test_declining_or_cancelling_ends_the_care_relationship_at_once(client, app, platform_db, loop, state, action):
    consultation = to_state(client, app, platform_db, loop, state)
    assert reads(client, loop["spec"], loop["observation"]) == 200
    headers, body = (loop["spec"], {"reason": "本科室无此项目"}) if action == "decline" else \
        (loop["fd"], {"reason": "患者已转院"})
    moved = move(client, headers, consultation["id"], action, body)
    assert moved["status"] == {"decline": "declined", "cancel": "cancelled"}[action]
    assert moved["steps"][-1]["note"] == body["reason"] and moved["video_url"] is None
    assert reads(client, loop["spec"], loop["observation"]) == 404


LEGAL = {"requested": {"accept", "decline", "cancel"}, "accepted": {"start", "cancel", "reschedule"},
         "in_session": set(), "opinion_given": {"acknowledge"}, "acknowledged": {"close"}, "closed": set(),
         "declined": set(), "cancelled": set()}
BODIES = {"accept": {"scheduled_at": "2030-02-01T09:00:00+08:00"}, "decline": {"reason": "不收"},
          "reschedule": {"scheduled_at": "2030-02-01T09:00:00+08:00"}}
CONSULTING = {"accept", "decline", "start", "reschedule"}


@pytest.mark.parametrize("state", list(LEGAL))
def test_every_illegal_move_is_409_naming_the_state_and_changes_nothing(client, app, platform_db, loop, video, state):
    consultation = to_state(client, app, platform_db, loop, state)
    for action in ("accept", "decline", "start", "acknowledge", "close", "cancel", "reschedule"):
        if action in LEGAL[state]:
            continue
        headers = loop["spec"] if action in CONSULTING else loop["fd"]
        before = snapshot(platform_db)
        response = client.post(f"/api/v1/consultations/{consultation['id']}/{action}", json=BODIES.get(action, {}),
                               headers=headers)
        assert response.status_code == 409, (state, action, response.get_json())
        assert f"The consultation is {state}" in response.get_json()["detail"]
        assert snapshot(platform_db) == before
        event = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"])
                                    ).one()
        assert (event.outcome, event.detail) == ("failure", f"{action} refused: consultation is {state}")


@pytest.mark.parametrize(("user", "action"), [
    ("yaodu.fd", "accept"), ("yaodu.fd", "decline"), ("yaodu.fd", "start"), ("yaodu.fd", "reschedule"),
    ("lfph.specialist", "cancel"), ("lfph.specialist", "acknowledge"), ("lfph.specialist", "close"),
])
def test_the_other_sides_move_is_403_and_changes_nothing(client, app, platform_db, loop, as_user, video, user,
                                                         action):
    state = {"start": "accepted", "reschedule": "accepted", "acknowledge": "opinion_given",
             "close": "acknowledged"}.get(action, "requested")
    consultation = to_state(client, app, platform_db, loop, state)
    before = snapshot(platform_db)
    response = client.post(f"/api/v1/consultations/{consultation['id']}/{action}", json=BODIES.get(action, {}),
                           headers=as_user(user))
    assert response.status_code == 403, response.get_json()
    assert response.content_type == "application/problem+json"
    assert snapshot(platform_db) == before
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"])
                                ).one()
    assert (event.username, event.outcome, event.patient) == (user, "denied", f"yaodu/{loop['township']['id']}")


ROUTES = [("GET", ""), ("POST", "/accept"), ("POST", "/decline"), ("POST", "/start"), ("POST", "/acknowledge"),
          ("POST", "/close"), ("POST", "/cancel"), ("POST", "/reschedule")]


@pytest.mark.parametrize("user", ["quwo.doctor", "yaodu.doctor"])
def test_an_uninvolved_institution_gets_404_on_every_route(client, app, platform_db, loop, as_user, video, user):
    """QUWO-CH (another tenant) and YAODU-CH (the requester's own tenant, another institution)."""
    consultation = to_state(client, app, platform_db, loop, "accepted")
    headers = as_user(user)
    for method, suffix in ROUTES:
        before = snapshot(platform_db)
        action = suffix.lstrip("/")
        response = client.open(f"/api/v1/consultations/{consultation['id']}{suffix}", method=method,
                               json=BODIES.get(action, {}) if method == "POST" else None, headers=headers)
        assert response.status_code == 404, (suffix, response.get_json())
        assert response.get_json()["detail"] == "No such consultation."
        assert snapshot(platform_db) == before
        events = platform_db.scalars(select(AuditEvent).where(
            AuditEvent.request_id == response.headers["X-Request-Id"])).all()
        assert [(e.username, e.outcome, e.resource_id, e.patient) for e in events] == [
            (user, "denied", consultation["id"], f"yaodu/{loop['township']['id']}")]
    for box in ("incoming", "outgoing"):
        assert client.get(f"/api/v1/consultations?box={box}", headers=headers).get_json() == []
    assert client.get("/api/v1/consultations?participant=me", headers=headers).get_json() == []
    unknown = client.get("/api/v1/consultations/00000000-0000-0000-0000-000000000000", headers=headers)
    assert unknown.status_code == 404


def test_roles_without_clinical_permission_are_403(client, loop, as_user):
    consultation = ask(client, loop)
    for user in ("auditor", "healthadmin"):
        assert client.get("/api/v1/consultations", headers=as_user(user)).status_code == 403
        assert client.post(f"/api/v1/consultations/{consultation['id']}/accept", json={},
                           headers=as_user(user)).status_code == 403  # before the body is looked at


def _create_cases(client, loop: dict, as_user) -> list[tuple[dict, str]]:
    other = new_patient(client, as_user("yaodu.doctor"), mrn="CH-9", name="李四", phone="13900000009")
    elsewhere = create(client, as_user("yaodu.doctor"), clinical("Observation", f"Patient/{other['id']}"))
    return [
        ({k: v for k, v in request_body(loop).items() if k != "kind"}, "kind"),
        (request_body(loop, kind="xray"), "kind"),
        (request_body(loop, urgency="soon"), "urgency"),
        (request_body(loop, patient_id=other["id"]), "patient_id"),
        (request_body(loop, patient_id="no-such-patient"), "patient_id"),
        (request_body(loop, consultant_institution="NOWHERE"), "consultant_institution"),
        (request_body(loop, consultant_institution="YAODU-T1"), "consultant_institution"),
        (request_body(loop, consultant_institution="LF-HC"), "consultant_institution"),
        (request_body(loop, consultant="yaodu.doctor"), "consultant"),
        (request_body(loop, consultant="nobody.at.all"), "consultant"),
        (request_body(loop, department=" "), "department"),
        (request_body(loop, question=""), "question"),
        (request_body(loop, records=["Observation"]), "records[0]"),
        (request_body(loop, records=[f"Observation/{loop['observation']['id']}",
                                     f"Observation/{elsewhere['id']}"]), "records[1]"),
        (request_body(loop, records=["Observation/does-not-exist"]), "records[0]"),
    ]


def test_bad_requests_are_422_naming_the_field_and_create_nothing(client, loop, platform_db, as_user):
    for body, field in _create_cases(client, loop, as_user):
        response = client.post("/api/v1/consultations", json=body, headers=loop["fd"])
        assert response.status_code == 422, (field, response.get_json())
        assert {e["field"] for e in response.get_json()["errors"]} == {field}, response.get_json()
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(Consultation)) == 0
    assert platform_db.scalar(select(func.count()).select_from(CareRelationship)) == 0
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.detail == "consultation records[1]")).one()
    assert refused.outcome == "denied" and refused.resource_type == "Observation"


def test_bad_moves_are_422_naming_the_field_and_change_nothing(client, app, platform_db, loop, video):
    consultation = ask(client, loop)
    cid = consultation["id"]
    cases = [("accept", {}, "scheduled_at"), ("accept", {"scheduled_at": "2030-01-15T09:00:00"}, "scheduled_at"),
             ("accept", {"scheduled_at": "2020-01-15T09:00:00+08:00"}, "scheduled_at"),
             ("accept", {"scheduled_at": WHEN, "duration_minutes": 0}, "duration_minutes"),
             ("accept", {"scheduled_at": WHEN, "duration_minutes": "30"}, "duration_minutes"),
             ("accept", {"scheduled_at": WHEN, "consultants": []}, "consultants"),
             ("accept", {"scheduled_at": WHEN, "consultants": ["lfph.specialist", "yaodu.fd"]}, "consultants[1]"),
             ("accept", {"scheduled_at": WHEN, "invite_patient": True}, "invite_patient"),
             ("decline", {}, "reason"), ("decline", {"reason": "  "}, "reason")]
    for action, body, field in cases:
        before = snapshot(platform_db)
        response = client.post(f"/api/v1/consultations/{cid}/{action}", json=body, headers=loop["spec"])
        assert response.status_code == 422, (body, response.get_json())
        assert {e["field"] for e in response.get_json()["errors"]} == {field}, response.get_json()
        assert snapshot(platform_db) == before


def test_without_a_video_service_accept_schedules_but_nothing_starts(client, loop, platform_db):
    consultation = ask(client, loop)
    accepted = move(client, loop["spec"], consultation["id"], "accept", {"scheduled_at": WHEN})
    assert accepted["status"] == "accepted" and accepted["schedule"]["duration_minutes"] == 30
    assert (accepted["video_url"], accepted["video_note"]) == (None, "video not configured")
    before = snapshot(platform_db)
    refused = client.post(f"/api/v1/consultations/{consultation['id']}/start", json={}, headers=loop["spec"])
    assert refused.status_code == 409 and "Video is not configured (HIE_VIDEO_BASE_URL)" in refused.get_json()["detail"]
    assert snapshot(platform_db) == before
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == refused.headers["X-Request-Id"])
                                ).one()
    assert (event.outcome, event.detail) == ("failure", "start refused: video not configured")


def test_the_room_is_unguessable_and_per_session(client, loop, video):
    rooms = set()
    for hour in range(3):
        consultation = ask(client, loop)
        accepted = move(client, loop["spec"], consultation["id"], "accept",
                        {"scheduled_at": f"2030-01-15T{9 + hour:02d}:00:00+08:00"})
        rooms.add(accepted["video_url"])
    assert len(rooms) == 3


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), ("", None), ("https://meet.example.org", "https://meet.example.org/"),
    ("https://meet.example.org/r/", "https://meet.example.org/r/"), ("http://localhost:8443", "http://localhost:8443/")])
def test_video_base_url_setting(raw, expected):
    assert services.video_base_url({} if raw is None else {"HIE_VIDEO_BASE_URL": raw}) == expected


@pytest.mark.parametrize("raw", ["meet.example.org", "http://meet.example.org", "https://", "ftp://meet.example.org",
                                 "https://meet.example.org/?room=", "https://u:p@meet.example.org/",
                                 "https://meet.example.org/#x", "https://例子.中国/"])
def test_a_malformed_video_base_url_is_named(raw):
    with pytest.raises(ConfigError, match="HIE_VIDEO_BASE_URL"):
        services.video_base_url({"HIE_VIDEO_BASE_URL": raw})


@pytest.mark.parametrize(("name", "value"), [("HIE_VIDEO_BASE_URL", "meet.example.org"),
                                             ("HIE_CONSULT_GRACE_DAYS", "a week")])
def test_a_malformed_setting_stops_the_app_at_start_up(tmp_path, name, value):
    from hie.platform.app import create_app
    from hie.platform.config import load_config

    config = load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "t" * 40, name: value})
    with pytest.raises(ConfigError, match=name):
        create_app(config)


def test_cli_lists_overdue_reads(app, client, home, loop, platform_db):
    fd = identity_of(platform_db, "yaodu.fd")
    made = datetime.now(UTC) - timedelta(hours=2)

    def read(urgency: str, when: datetime) -> str:
        body = {**request_body(loop, kind="imaging_read", urgency=urgency, consultant=None, records=[]),
                "kind": services.Kind.imaging_read, "urgency": services.Urgency(urgency)}
        return in_request(app, fd, lambda: services.create(fd, body, when).id)

    late = read("urgent", made)
    read("routine", made)  # due in 24 hours
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HIE_")}, **hie_environ(home)}
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", "consult", "overdue"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "1 overdue read(s)"
    assert lines[0].startswith(f"{late}  imaging_read urgent  YAODU-T1 -> LF-PH 心内科") and "1h 30m late" in lines[0]
    other = subprocess.run([sys.executable, "-m", "hie.platform.cli", "consult", "overdue", "--institution",
                            "QUWO-CH"], env=env, capture_output=True, text=True, timeout=120)
    assert other.stdout.strip() == "0 overdue read(s)"
    unknown = subprocess.run([sys.executable, "-m", "hie.platform.cli", "consult", "overdue", "--institution",
                              "NOWHERE"], env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "no institution 'NOWHERE'" in unknown.stderr
