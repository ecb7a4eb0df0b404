"""Referrals over REST and FHIR: the loop up and back down across two tenants, refusals, isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from sqlalchemy import func, select, update

from hie.platform.audit.models import AuditEvent
from hie.platform.care import CareRelationship
from hie.referral.models import Referral, ReferralStep
from tests.conftest import new_patient
from tests.fhir_helpers import clinical, create

APPOINTMENT = "2030-01-15T09:00:00+08:00"


def _referral(patient_id: str, records: list[str], **changes: object) -> dict:
    body = {"patient_id": patient_id, "direction": "up", "urgency": "urgent", "receiving_institution": "LF-PH",
            "department": "心内科", "reason": "胸痛待查，需冠脉造影", "clinical_summary": "反复胸痛三天。",
            "diagnoses": [{"code": "I20.0", "text": "不稳定型心绞痛"}], "records": records}
    body.update(changes)
    return body


@pytest.fixture
def loop(client, as_user):
    """A township patient with one Observation, and the city hospital's record of the same person."""
    fd, spec = as_user("yaodu.fd"), as_user("lfph.specialist")
    township = new_patient(client, fd, mrn="T1-001")
    observation = create(client, fd, clinical("Observation", f"Patient/{township['id']}"))
    hospital = new_patient(client, spec, mrn="PH-001")
    assert hospital["master_person_id"] == township["master_person_id"]
    return {"fd": fd, "spec": spec, "township": township, "observation": observation, "hospital": hospital}


def _send(client, loop, **changes) -> dict:
    body = _referral(loop["township"]["id"], [f"Observation/{loop['observation']['id']}"], **changes)
    response = client.post("/api/v1/referrals", json=body, headers=loop["fd"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _move(client, headers, referral_id: str, action: str, body: dict | None = None, status: int = 200) -> dict:
    response = client.post(f"/api/v1/referrals/{referral_id}/{action}", json=body or {}, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _reads(client, headers, resource: dict) -> int:
    return client.get(f"/fhir/{resource['resourceType']}/{resource['id']}", headers=headers).status_code


def _to_state(client, loop, state: str) -> dict:
    """A referral brought through the API to one state."""
    referral = _send(client, loop)
    rid, fd, spec = referral["id"], loop["fd"], loop["spec"]
    path = {"requested": [], "declined": [(spec, "decline", {"reason": "床位已满"})],
            "cancelled": [(fd, "cancel", {"reason": "患者改去他院"})],
            "accepted": [(spec, "accept", {"appointment_at": APPOINTMENT})],
            "no_show": [(spec, "accept", {"appointment_at": APPOINTMENT}), (spec, "no-show", {})],
            "arrived": [(spec, "accept", {"appointment_at": APPOINTMENT}),
                        (spec, "arrive", {"patient_id": loop["hospital"]["id"]})],
            "completed": [(spec, "accept", {"appointment_at": APPOINTMENT}),
                          (spec, "arrive", {"patient_id": loop["hospital"]["id"]}),
                          (spec, "complete", {"discharge_summary": "好转出院"})]}[state]
    for headers, action, body in path:
        referral = _move(client, headers, rid, action, body)
    assert referral["status"] == state
    return referral


def _snapshot(platform_db, referral_id: str) -> tuple:
    platform_db.rollback()
    referral = platform_db.get(Referral, referral_id)
    platform_db.refresh(referral)
    steps = platform_db.scalar(select(func.count()).select_from(ReferralStep)
                               .where(ReferralStep.referral_id == referral_id))
    care = platform_db.execute(select(CareRelationship.institution_id, CareRelationship.ends_at)
                               .order_by(CareRelationship.id)).all()
    referrals = platform_db.scalar(select(func.count()).select_from(Referral))
    return referral.status, referral.appointment_at, referral.receiver_patient_id, steps, care, referrals


def test_the_loop_up_and_back_down_across_two_tenants(client, loop, platform_db):
    fd, spec, observation = loop["fd"], loop["spec"], loop["observation"]
    assert _reads(client, spec, observation) == 404  # no relationship yet
    referral = _send(client, loop)
    assert (referral["status"], referral["direction"], referral["sending_institution"],
            referral["receiving_institution"], referral["overdue"]) == ("requested", "up", "YAODU-T1", "LF-PH", False)
    assert referral["master_person_id"] == loop["township"]["master_person_id"]
    assert [s["to_status"] for s in referral["steps"]] == ["requested"]
    assert _reads(client, spec, observation) == 200  # the receiver reads the shared record before arrival
    inbox = client.get("/api/v1/referrals?box=incoming", headers=spec)
    assert [r["id"] for r in inbox.get_json()] == [referral["id"]] and '"total": 1' in inbox.headers["X-Pagination"]
    assert client.get("/api/v1/referrals/count", headers=spec).get_json() == {"unanswered": 1, "overdue": 0}
    assert client.get("/api/v1/referrals?box=outgoing", headers=fd).get_json()[0]["id"] == referral["id"]

    rid = referral["id"]
    accepted = _move(client, spec, rid, "accept", {"appointment_at": APPOINTMENT, "note": "请空腹"})
    assert accepted["appointment_at"].startswith("2030-01-15T01:00:00")
    assert client.get("/api/v1/referrals/count", headers=spec).get_json()["unanswered"] == 0
    arrived = _move(client, spec, rid, "arrive", {"patient_id": loop["hospital"]["id"]})
    assert arrived["receiver_patient_id"] == loop["hospital"]["id"]
    hospital_record = create(client, spec, clinical("Observation", f"Patient/{loop['hospital']['id']}"))
    assert _reads(client, fd, hospital_record) == 200  # the sender sees what the receiver records

    back = {"receiving_institution": "YAODU-T1", "reason": "病情稳定，转回基层随访", "urgency": "routine",
            "diagnoses": [{"code": "I20.0", "text": "不稳定型心绞痛"}], "clinical_summary": "继续服药",
            "records": [f"Observation/{hospital_record['id']}"]}
    completed = _move(client, spec, rid, "complete", {"discharge_summary": "支架术后好转出院", "back_referral": back})
    assert completed["status"] == "completed" and completed["discharge_summary"] == "支架术后好转出院"
    down = client.get(f"/api/v1/referrals/{completed['back_referral_id']}", headers=fd).get_json()
    assert (down["direction"], down["status"], down["sending_institution"], down["receiving_institution"],
            down["patient_id"], down["follow_up_of"]) == ("down", "requested", "LF-PH", "YAODU-T1",
                                                          loop["hospital"]["id"], rid)
    assert [s["to_status"] for s in completed["steps"]] == ["requested", "accepted", "arrived", "completed"]
    assert [s["username"] for s in completed["steps"]] == ["yaodu.fd"] + ["lfph.specialist"] * 3

    platform_db.rollback()
    ends = platform_db.scalars(select(CareRelationship.ends_at).where(
        CareRelationship.source_ref == f"referral/{rid}")).all()
    soon = datetime.now(UTC) + timedelta(days=30)
    assert len(ends) == 2 and all(abs(end - soon) < timedelta(minutes=5) for end in ends)

    _move(client, fd, down["id"], "accept", {"appointment_at": APPOINTMENT})
    _move(client, fd, down["id"], "arrive", {"patient_id": loop["township"]["id"]})
    _move(client, fd, down["id"], "complete", {"discharge_summary": "已纳入慢病随访"})
    assert _reads(client, spec, observation) == 200  # within the grace period
    assert _reads(client, fd, hospital_record) == 200
    platform_db.execute(update(CareRelationship).values(ends_at=datetime.now(UTC) - timedelta(seconds=1)))
    platform_db.commit()
    assert _reads(client, spec, observation) == 404  # the grace period is over
    assert _reads(client, fd, hospital_record) == 404
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Referral",
                                                          AuditEvent.action == "update")).all()
    assert [e.patient for e in events[:3]] == [f"yaodu/{loop['township']['id']}"] * 3


@pytest.mark.parametrize("action", ["decline", "cancel", "no-show"])
def test_declining_cancelling_or_no_show_ends_the_relationships_at_once(client, loop, action):
    referral = _to_state(client, loop, "accepted" if action == "no-show" else "requested")
    assert _reads(client, loop["spec"], loop["observation"]) == 200
    headers = loop["fd"] if action == "cancel" else loop["spec"]
    moved = _move(client, headers, referral["id"], action, {"reason": "床位已满，请转他院"})
    assert moved["steps"][-1]["note"] == "床位已满，请转他院"
    assert _reads(client, loop["spec"], loop["observation"]) == 404


LEGAL = {"requested": {"accept", "decline", "cancel"}, "accepted": {"arrive", "cancel", "no-show"},
         "arrived": {"complete"}, "completed": set(), "declined": set(), "cancelled": set(), "no_show": set()}
ACTIONS = ("accept", "decline", "arrive", "complete", "cancel", "no-show")


@pytest.mark.parametrize("state", list(LEGAL))
def test_every_illegal_transition_is_409_naming_the_state_and_changes_nothing(client, loop, platform_db, state):
    referral = _to_state(client, loop, state)
    bodies = {"accept": {"appointment_at": APPOINTMENT}, "decline": {"reason": "不收"},
              "arrive": {"patient_id": loop["hospital"]["id"]}, "complete": {"discharge_summary": "出院"},
              "cancel": {}, "no-show": {}}
    for action in ACTIONS:
        if action in LEGAL[state]:
            continue
        headers = loop["fd"] if action == "cancel" else loop["spec"]
        before = _snapshot(platform_db, referral["id"])
        response = client.post(f"/api/v1/referrals/{referral['id']}/{action}", json=bodies[action], headers=headers)
        assert response.status_code == 409, (state, action, response.get_json())
        assert f"The referral is {state}" in response.get_json()["detail"]
        assert _snapshot(platform_db, referral["id"]) == before


@pytest.mark.parametrize(("user", "action", "status"), [
    ("yaodu.fd", "accept", 403), ("yaodu.fd", "decline", 403), ("yaodu.fd", "no-show", 403),
    ("lfph.specialist", "cancel", 403), ("auditor", "accept", 403), ("yaodu.doctor", "cancel", 404),
    ("yaodu.doctor", "accept", 404), ("quwo.doctor", "decline", 404), ("quwo.doctor", "cancel", 404),
])
def test_actors_who_may_not_move_it_are_refused_and_change_nothing(client, loop, platform_db, as_user,
                                                                   user, action, status):
    referral = _send(client, loop)
    body = {"accept": {"appointment_at": APPOINTMENT}, "decline": {"reason": "不收"}}.get(action, {})
    before = _snapshot(platform_db, referral["id"])
    response = client.post(f"/api/v1/referrals/{referral['id']}/{action}", json=body, headers=as_user(user))
    assert response.status_code == status, response.get_json()
    assert response.content_type == "application/problem+json"
    assert _snapshot(platform_db, referral["id"]) == before
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == user)
                                .order_by(AuditEvent.seq.desc())).first()
    assert event.outcome == "denied"


def _malformed_cases(loop: dict, other_patient: str, other_observation: str) -> list[tuple[dict, str]]:
    township, observation = loop["township"]["id"], f"Observation/{loop['observation']['id']}"
    good = _referral(township, [observation])
    return [
        ({k: v for k, v in good.items() if k != "patient_id"}, "patient_id"),
        ({**good, "direction": "sideways"}, "direction"),
        ({**good, "urgency": "soon"}, "urgency"),
        ({**good, "diagnoses": [good["diagnoses"][0], {"code": "I2O.0", "text": "x"}]}, "diagnoses[1].code"),
        ({**good, "diagnoses": [{"code": "U07.1", "text": "x"}]}, "diagnoses[0].code"),
        ({**good, "diagnoses": [{"code": "I10"}]}, "diagnoses[0].text"),
        ({**good, "records": ["Observation/yaodu.0000"]}, "records[0]"),
        ({**good, "records": [observation, f"Observation/{other_observation}"]}, "records[1]"),
        ({**good, "records": ["not a reference"]}, "records[0]"),
        ({**good, "receiving_institution": "NOWHERE"}, "receiving_institution"),
        ({**good, "receiving_institution": "LF-HC"}, "receiving_institution"),
        ({**good, "receiving_institution": "YAODU-T1"}, "receiving_institution"),
        ({**good, "direction": "down"}, "direction"),
        ({**good, "direction": "lateral"}, "direction"),
        ({**good, "patient_id": other_patient}, "patient_id"),
        ({**good, "reason": ""}, "reason"),
    ]


def test_every_malformed_referral_is_422_naming_the_field_and_changes_nothing(client, loop, as_user, platform_db):
    other = new_patient(client, as_user("yaodu.doctor"), mrn="CH-9", name="李四", id_number=None,
                        phone="13900000001")
    neighbour = new_patient(client, loop["fd"], mrn="T1-9", name="张三", id_number=None, phone="13900000002")
    other_observation = create(client, loop["fd"], clinical("Observation", f"Patient/{neighbour['id']}"))
    for body, field in _malformed_cases(loop, other["id"], other_observation["id"]):
        response = client.post("/api/v1/referrals", json=body, headers=loop["fd"])
        assert response.status_code == 422, (field, response.get_json())
        assert field in [e["field"] for e in response.get_json()["errors"]], (field, response.get_json())
        platform_db.rollback()
        assert platform_db.scalar(select(func.count()).select_from(Referral)) == 0
        assert platform_db.scalar(select(func.count()).select_from(CareRelationship)) == 0
    assert client.post("/api/v1/referrals", data="x", headers={**loop["fd"], "Content-Type": "text/plain"}) \
        .status_code == 415
    assert client.post("/api/v1/referrals", json=[1], headers=loop["fd"]).status_code == 422


@pytest.mark.parametrize(("state", "action", "body", "field"), [
    ("requested", "accept", {}, "appointment_at"),
    ("requested", "accept", {"appointment_at": "tomorrow"}, "appointment_at"),
    ("requested", "accept", {"appointment_at": "2030-01-15T09:00:00"}, "appointment_at"),
    ("requested", "accept", {"appointment_at": "2020-01-15T09:00:00+08:00"}, "appointment_at"),
    ("requested", "decline", {}, "reason"),
    ("requested", "decline", {"reason": "   "}, "reason"),
    ("accepted", "arrive", {}, "patient_id"),
    ("accepted", "arrive", {"patient_id": "no-such-patient"}, "patient_id"),
    ("accepted", "arrive", {"patient_id": "{stranger}"}, "patient_id"),
    ("arrived", "complete", {}, "discharge_summary"),
    ("arrived", "complete", {"discharge_summary": "出院", "back_referral": {"receiving_institution": "QUWO-CH",
                                                                           "reason": "回县"}},
     "back_referral.receiving_institution"),
    ("arrived", "complete", {"discharge_summary": "出院", "back_referral": {"receiving_institution": "YAODU-T1",
                                                                           "reason": "回乡",
                                                                           "diagnoses": [{"code": "x", "text": "y"}]}},
     "back_referral.diagnoses[0].code"),
    ("arrived", "complete", {"discharge_summary": "出院", "back_referral": {"receiving_institution": "YAODU-T1",
                                                                           "reason": "回乡",
                                                                           "records": ["Observation/quwo.1"]}},
     "back_referral.records[0]"),
])
def test_every_malformed_move_is_422_naming_the_field_and_changes_nothing(client, loop, platform_db, state, action,
                                                                         body, field):
    referral = _to_state(client, loop, state)
    stranger = new_patient(client, loop["spec"], mrn="PH-2", name="赵六", id_number=None, phone="13700000009")
    if body.get("patient_id") == "{stranger}":
        body = {"patient_id": stranger["id"]}
    headers = loop["fd"] if action == "cancel" else loop["spec"]
    before = _snapshot(platform_db, referral["id"])
    response = client.post(f"/api/v1/referrals/{referral['id']}/{action}", json=body, headers=headers)
    assert response.status_code == 422, response.get_json()
    assert field in [e["field"] for e in response.get_json()["errors"]], response.get_json()
    assert _snapshot(platform_db, referral["id"]) == before


def test_back_referral_follows_only_an_upward_referral(client, loop, platform_db):
    spec, fd = loop["spec"], loop["fd"]
    body = _referral(loop["hospital"]["id"], [], direction="down", receiving_institution="YAODU-T1")
    response = client.post("/api/v1/referrals", json=body, headers=spec)
    assert response.status_code == 201, response.get_json()
    rid = response.get_json()["id"]
    _move(client, fd, rid, "accept", {"appointment_at": APPOINTMENT})
    _move(client, fd, rid, "arrive", {"patient_id": loop["township"]["id"]})
    before = _snapshot(platform_db, rid)
    back = {"receiving_institution": "LF-PH", "reason": "再转上级"}
    refused = _move(client, fd, rid, "complete", {"discharge_summary": "好", "back_referral": back}, status=422)
    assert [e["field"] for e in refused["errors"]] == ["back_referral"]
    assert _snapshot(platform_db, rid) == before


@pytest.mark.parametrize("user", ["yaodu.doctor", "quwo.doctor"])
def test_a_third_institution_sees_nothing(client, loop, as_user, platform_db, user):
    referral = _to_state(client, loop, "accepted")
    headers = as_user(user)
    for url in (f"/api/v1/referrals/{referral['id']}", f"/fhir/ServiceRequest/{referral['id']}",
                f"/fhir/Task/{referral['id']}"):
        response = client.get(url, headers=headers)
        assert response.status_code == 404, url
        assert loop["township"]["id"] not in response.get_data(as_text=True)
    for box in ("incoming", "outgoing"):
        response = client.get(f"/api/v1/referrals?box={box}", headers=headers)
        assert response.get_json() == [] and '"total": 0' in response.headers["X-Pagination"]
    assert client.get("/api/v1/referrals/count", headers=headers).get_json() == {"unanswered": 0, "overdue": 0}
    for url in (f"/fhir/ServiceRequest?patient={loop['township']['id']}", "/fhir/Task?owner=LF-PH",
                "/fhir/ServiceRequest", "/fhir/Task?requester=Organization/YAODU-T1"):
        body = client.get(url, headers=headers).get_json()
        assert body["total"] == 0 and not body.get("entry"), url
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == user,
                                                           AuditEvent.outcome == "denied")).all()
    assert len(refused) == 3 and all(e.patient == f"yaodu/{loop['township']['id']}" for e in refused)


def test_fhir_service_request_and_task_for_sender_and_receiver(client, loop):
    referral = _to_state(client, loop, "accepted")
    rid = referral["id"]
    for headers in (loop["fd"], loop["spec"]):
        service_request = client.get(f"/fhir/ServiceRequest/{rid}", headers=headers)
        assert service_request.status_code == 200 and service_request.content_type == "application/fhir+json"
        resource = ServiceRequest.model_validate(service_request.get_json())
        assert (resource.status, resource.priority, resource.subject.reference) == (
            "active", "urgent", f"Patient/{loop['township']['id']}")
        assert resource.reasonCode[0].coding[0].code == "I20.0"
        task = Task.model_validate(client.get(f"/fhir/Task/{rid}", headers=headers).get_json())
        assert (task.status, task.owner.reference, task.requester.reference) == (
            "accepted", "Organization/LF-PH", "Organization/YAODU-T1")
    for url, found in ((f"/fhir/ServiceRequest?patient=Patient/{loop['township']['id']}", 1),
                       ("/fhir/ServiceRequest?status=active&requester=YAODU-T1&performer=LF-PH", 1),
                       ("/fhir/ServiceRequest?status=completed", 0),
                       ("/fhir/Task?owner=Organization/LF-PH&status=accepted", 1),
                       ("/fhir/Task?status=requested", 0), ("/fhir/Task?owner=QUWO-CH", 0)):
        body = client.get(url, headers=loop["spec"]).get_json()
        assert body["resourceType"] == "Bundle" and body["total"] == found, (url, body)
    bad = client.get("/fhir/Task?colour=red", headers=loop["spec"])
    assert bad.status_code == 400 and bad.get_json()["resourceType"] == "OperationOutcome"
    bad = client.get("/fhir/Task?status=bogus", headers=loop["spec"])
    assert bad.status_code == 400 and bad.get_json()["issue"][0]["expression"] == ["Task.status"]
    assert client.get(f"/fhir/Task/{rid}", headers=loop["fd"]).status_code == 200
    assert client.post("/fhir/Task", json={"resourceType": "Task"}, headers=loop["fd"]).status_code in (404, 405)


def test_list_filters_and_paging(client, loop):
    first = _to_state(client, loop, "accepted")
    second = _send(client, loop, urgency="emergency")
    spec = loop["spec"]
    ids = lambda query: [r["id"] for r in client.get(f"/api/v1/referrals?{query}", headers=spec).get_json()]  # noqa: E731
    assert ids("") == [second["id"], first["id"]]
    assert ids("status=accepted") == [first["id"]]
    assert ids("urgency=emergency") == [second["id"]]
    assert ids("box=outgoing") == []
    assert ids("since=2099-01-01T00:00:00Z") == []
    page = client.get("/api/v1/referrals?page=2&page_size=1", headers=spec)
    assert [r["id"] for r in page.get_json()] == [first["id"]] and '"total": 2' in page.headers["X-Pagination"]
    for query, field in (("box=sideways", "box"), ("status=lost", "status"), ("since=yesterday", "since")):
        response = client.get(f"/api/v1/referrals?{query}", headers=spec)
        assert response.status_code == 422 and response.get_json()["errors"][0]["field"] == field


def test_reading_needs_patient_read_and_an_unknown_id_is_404_audited(client, loop, as_user, platform_db):
    referral = _send(client, loop)
    assert client.get(f"/api/v1/referrals/{referral['id']}", headers=as_user("auditor")).status_code == 403
    assert client.get("/api/v1/referrals", headers=as_user("healthadmin")).status_code == 403
    response = client.get("/api/v1/referrals/00000000-0000-0000-0000-000000000000", headers=loop["spec"])
    assert response.status_code == 404
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == "lfph.specialist")
                                .order_by(AuditEvent.seq.desc())).first()
    assert (event.action, event.outcome, event.resource_type) == ("read", "not_found", "Referral")
