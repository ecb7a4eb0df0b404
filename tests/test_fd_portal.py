"""The resident's own portal: their contract, vitals with trends, follow-ups and shared record; only their own person
(including their records in another tenant, linked by the EMPI) and nothing of another resident by any route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from hie.family_doctor.models import (
    Classification,
    Condition,
    FollowUp,
    FollowUpStatus,
    Setting,
    Team,
    TeamMember,
    TeamRole,
    Vitals,
)
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role, User
from hie.platform.db import new_id, session_scope
from hie.tenants.models import Institution
from tests.conftest import PASSWORD, add_resident, new_patient, valid_id
from tests.fhir_helpers import clinical, create, run_jobs

CONTRACTS = "/api/v1/family-doctor/contracts"
LI = {"name": "李建国", "sex": "M", "birth_date": "1950-06-01", "id_number": valid_id("14100219500601003"),
      "phone": "13935700002", "address": "山西省临汾市尧都区屯里镇西关村3号"}
UNTIL = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def add_staff(app, username: str, role: Role, institution: str, display_name: str) -> None:
    """A platform user made for one test (the wipe removes it)."""
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, username, [role], institution, PASSWORD, display_name=display_name)


def add_team(app, code: str, institution: str, members: dict[str, TeamRole]) -> int:
    """A family-doctor team inserted directly, with its members by username."""
    with session_scope(app.extensions["hie.engines"].platform) as session:
        institution_id = session.scalar(select(Institution.id).where(Institution.code == institution))
        team = Team(code=code, name=f"{code} 家庭医生团队", institution_id=institution_id, active=True)
        session.add(team)
        session.flush()
        for username, role in members.items():
            user_id = session.scalar(select(User.id).where(User.username == username))
            session.add(TeamMember(user_id=user_id, team_id=team.id, team_role=role))
        return team.id


def sign(client, headers: dict, patient_id: str, packages: list[str], groups: list[str]) -> dict:
    """A contract signed through the API by a team member; its outbox events are delivered."""
    response = client.post(CONTRACTS, headers=headers, json={"patient_id": patient_id, "packages": packages,
                                                              "priority_groups": groups})
    assert response.status_code == 201, response.get_json()
    run_jobs(client.application)
    return response.get_json()


@pytest.fixture
def village(app, client, as_user):
    """Two contracted residents of the 屯里镇 team: 王秀英 (hypertension) and 李建国 (diabetes), each with a login."""
    add_staff(app, "yaodu.ph", Role.nurse, "YAODU-T1", "赵公卫")
    team = add_team(app, "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": TeamRole.lead_doctor,
                                                    "yaodu.ph": TeamRole.public_health})
    fd = as_user("yaodu.fd")
    wang = new_patient(client, fd, mrn="T1-001")
    li = new_patient(client, fd, mrn="T1-002", **LI)
    add_resident(app, "YAODU-T1", wang["id"], "resident.wang")
    add_resident(app, "YAODU-T1", li["id"], "resident.li")
    contracts = {"wang": sign(client, fd, wang["id"], ["basic", "hypertension"], ["elderly_65", "hypertension"]),
                 "li": sign(client, fd, li["id"], ["basic", "diabetes"], ["diabetes"])}
    return {"team": team, "fd": fd, "wang": wang, "li": li, "contracts": contracts}


def _events(platform_db, response) -> list[AuditEvent]:
    platform_db.rollback()
    return list(platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"])
                                    .order_by(AuditEvent.seq)))


def _reading(app, patient: dict, team_id: int | None, taken_at: datetime, self_reported: bool, **values: float) -> int:
    with session_scope(app.extensions["hie.engines"].platform) as session:
        institution_id = session.scalar(select(Institution.id).where(Institution.code == "YAODU-T1"))
        user_id = session.scalar(select(User.id).where(User.username == "yaodu.fd"))
        row = Vitals(user_id=user_id, client_id=new_id(), master_person_id=patient["master_person_id"],
                     tenant_code="yaodu", patient_id=patient["id"], institution_id=institution_id, team_id=team_id,
                     taken_at=taken_at, setting=Setting.self_device if self_reported else Setting.clinic,
                     self_reported=self_reported, observations=[], **values)
        session.add(row)
        session.flush()
        return row.id


def test_a_resident_sees_their_contract_team_and_packages_audited_as_self(client, village, as_user, platform_db):
    response = client.get("/api/v1/me/contract", headers=as_user("resident.wang"))
    assert response.status_code == 200, response.get_json()
    shown = response.get_json()
    assert shown["id"] == village["contracts"]["wang"]["id"]
    assert shown["status"] == "active"
    assert shown["team"]["name"] == "YAODU-T1-A 家庭医生团队"
    assert shown["team"]["institution"] == {"code": "YAODU-T1", "name": "屯里镇卫生院"}
    assert [m["team_role"] for m in shown["team"]["members"]] == ["lead_doctor", "public_health"]
    assert shown["team"]["members"][1]["display_name"] == "赵公卫"
    assert [p["code"] for p in shown["packages"]] == ["basic", "hypertension"]
    assert "blood_pressure_follow_up" in shown["packages"][1]["services"]
    assert shown["packages"][1]["follow_ups_per_year"] == 4
    assert [g["code"] for g in shown["priority_groups"]] == ["elderly_65", "hypertension"]
    assert (datetime.fromisoformat(shown["ends_on"]) - datetime.fromisoformat(shown["starts_on"])).days == 364
    events = _events(platform_db, response)
    assert [(e.username, e.action, e.outcome, e.purpose, e.patient) for e in events] == [
        ("resident.wang", "read", "success", "self", f"yaodu/{village['wang']['id']}")]


def test_a_resident_without_a_contract_is_told_so(app, client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.fd"), mrn="T1-009")
    add_resident(app, "YAODU-T1", patient["id"], "resident.zhou")
    response = client.get("/api/v1/me/contract", headers=as_user("resident.zhou"))
    assert response.status_code == 404
    assert "no active family-doctor contract" in response.get_json()["detail"]
    assert [(e.outcome, e.purpose) for e in _events(platform_db, response)] == [("not_found", "self")]


def test_vitals_by_the_team_and_self_reported_with_trends(app, client, village, as_user, platform_db):
    team, wang = village["team"], village["wang"]
    _reading(app, wang, None, UNTIL - timedelta(days=50), True, systolic=170, diastolic=100)
    _reading(app, wang, team, UNTIL - timedelta(days=40), False, systolic=160, diastolic=96, fasting_glucose=6.1)
    _reading(app, wang, team, UNTIL - timedelta(days=20), False, systolic=140, diastolic=88)
    newest = _reading(app, wang, None, UNTIL - timedelta(days=5), True, systolic=150, diastolic=92, heart_rate=72)
    _reading(app, wang, team, UNTIL + timedelta(days=1), False, systolic=199, diastolic=99)
    _reading(app, village["li"], team, UNTIL - timedelta(days=3), False, systolic=111, diastolic=71)
    since = (UNTIL - timedelta(days=45)).isoformat()
    response = client.get("/api/v1/me/vitals", headers=as_user("resident.wang"),
                          query_string={"since": since, "until": UNTIL.isoformat(), "page_size": 2})
    assert response.status_code == 200, response.get_json()
    shown = response.get_json()
    assert '"total": 3' in response.headers["X-Pagination"]
    assert [(r["id"], r["source"], r["self_reported"], r["setting"]) for r in shown["readings"]] == [
        (newest, "self", True, "self_device"), (shown["readings"][1]["id"], "team", False, "clinic")]
    assert shown["readings"][0]["values"] == {"systolic": 150, "diastolic": 92, "heart_rate": 72}
    assert shown["readings"][1]["team"] == "YAODU-T1-A 家庭医生团队"
    trends = {t["measure"]: t for t in shown["trends"]}
    assert set(trends) == {"systolic", "diastolic", "heart_rate", "fasting_glucose"}
    systolic = trends["systolic"]
    assert [p["value"] for p in systolic["series"]] == [160, 140, 150]
    assert [p["self_reported"] for p in systolic["series"]] == [False, False, True]
    assert systolic["latest"]["value"] == 150 and systolic["latest"]["self_reported"] is True
    assert (systolic["mean_30d"], systolic["count_30d"], systolic["mean_previous_30d"], systolic["change_30d"]) == \
        (145.0, 2, 165.0, -20.0)
    assert systolic["unit"] == "mm[Hg]"
    glucose = trends["fasting_glucose"]
    assert (glucose["latest"]["value"], glucose["mean_30d"], glucose["change_30d"], glucose["unit"]) == \
        (6.1, None, None, "mmol/L")
    page2 = client.get("/api/v1/me/vitals", headers=as_user("resident.wang"),
                       query_string={"since": since, "until": UNTIL.isoformat(), "page_size": 2, "page": 2}).get_json()
    assert [r["values"]["systolic"] for r in page2["readings"]] == [160]
    events = _events(platform_db, response)
    assert [(e.action, e.resource_type, e.purpose, e.patient) for e in events] == [
        ("read", "Vitals", "self", f"yaodu/{wang['id']}")]


def test_vitals_window_must_make_sense(client, village, as_user):
    headers = as_user("resident.wang")
    response = client.get("/api/v1/me/vitals", headers=headers,
                          query_string={"since": UNTIL.isoformat(), "until": (UNTIL - timedelta(days=1)).isoformat()})
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["since"]


def test_follow_ups_done_with_classification_and_the_next_one_due(app, client, village, as_user, platform_db):
    contract = village["contracts"]["wang"]
    with session_scope(app.extensions["hie.engines"].platform) as session:
        scheduled = session.scalars(select(FollowUp).where(FollowUp.contract_id == contract["id"])).all()
        assert [(f.condition, f.status) for f in scheduled] == [(Condition.hypertension, FollowUpStatus.scheduled)]
        session.add(FollowUp(id=new_id(), contract_id=contract["id"], team_id=village["team"],
                             institution_id=scheduled[0].institution_id,
                             master_person_id=village["wang"]["master_person_id"], condition=Condition.hypertension,
                             status=FollowUpStatus.done, due_on=UNTIL.date(), done_at=UNTIL, face_to_face=True,
                             systolic=132, diastolic=84, classification=Classification.controlled))
        due_on = scheduled[0].due_on
    response = client.get("/api/v1/me/follow-ups", headers=as_user("resident.wang"))
    assert response.status_code == 200, response.get_json()
    shown = response.get_json()
    assert [(d["condition"], d["classification"], d["systolic"], d["diastolic"]) for d in shown["done"]] == [
        ("hypertension", "controlled", 132, 84)]
    assert (shown["next_due"]["condition"], shown["next_due"]["due_on"], shown["next_due"]["overdue"]) == \
        ("hypertension", due_on.isoformat(), False)
    assert len(shown["scheduled"]) == 1
    li = client.get("/api/v1/me/follow-ups", headers=as_user("resident.li")).get_json()
    assert li["done"] == [] and li["next_due"]["condition"] == "diabetes"
    assert [(e.resource_type, e.purpose) for e in _events(platform_db, response)] == [("FollowUp", "self")]


def test_shared_record_includes_their_records_in_another_tenant_and_nothing_of_another_resident(
        client, village, as_user, platform_db):
    quwo = as_user("quwo.doctor")
    elsewhere = new_patient(client, quwo, mrn="QW-001")
    assert elsewhere["master_person_id"] == village["wang"]["master_person_id"]
    theirs = create(client, quwo, clinical("Observation", f"Patient/{elsewhere['id']}"))
    at_home = create(client, village["fd"], clinical("Observation", f"Patient/{village['wang']['id']}", "8462-4"))
    others = create(client, village["fd"], clinical("Observation", f"Patient/{village['li']['id']}"))
    response = client.get("/api/v1/me/record", headers=as_user("resident.wang"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    bundle = response.get_json()
    found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
    assert {("Observation", theirs["id"]), ("Observation", at_home["id"]), ("Patient", elsewhere["id"]),
            ("Patient", village["wang"]["id"])} <= found
    assert ("Observation", others["id"]) not in found and ("Patient", village["li"]["id"]) not in found
    assert [(e.action, e.resource_type, e.purpose, e.patient) for e in _events(platform_db, response)] == [
        ("read", "Patient", "self", f"yaodu/{village['wang']['id']}")]  # one event: the exchange's, as self
    li = client.get("/api/v1/me/record", headers=as_user("resident.li")).get_json()
    assert theirs["id"] not in {e["resource"]["id"] for e in li["entry"]}


def test_nothing_of_another_resident_by_any_route(client, village, as_user, platform_db):
    wang, li = as_user("resident.wang"), village["li"]
    observation = create(client, village["fd"], clinical("Observation", f"Patient/{li['id']}"))
    for url in (f"/api/v1/patients/{li['id']}", f"/fhir/Patient/{li['id']}", f"/fhir/Observation/{observation['id']}",
                f"/fhir/Patient/{li['id']}/$everything", f"/fhir/Observation?patient={li['id']}"):
        response = client.get(url, headers=wang)
        assert response.status_code == 404, (url, response.status_code)
        assert [(e.username, e.outcome, e.patient) for e in _events(platform_db, response)] == [
            ("resident.wang", "denied", f"yaodu/{li['id']}")], url
    response = client.get(f"/api/v1/family-doctor/contracts/{village['contracts']['li']['id']}", headers=wang)
    assert response.status_code == 403
    own = client.get("/api/v1/me/contract", headers=wang).get_json()
    assert own["id"] == village["contracts"]["wang"]["id"]
    assert client.get("/api/v1/me/contract", query_string={"patient_id": li["id"]}, headers=wang).get_json()["id"] == \
        own["id"]


def test_staff_get_403_on_every_me_route(client, village, as_user, platform_db):
    for username in ("yaodu.fd", "yaodu.doctor", "healthadmin"):
        for url in ("/api/v1/me/contract", "/api/v1/me/vitals", "/api/v1/me/follow-ups", "/api/v1/me/record",
                    "/api/v1/me/education"):
            response = client.get(url, headers=as_user(username))
            assert response.status_code == 403, (username, url)
            assert [(e.action, e.outcome) for e in _events(platform_db, response)] == [("authorize", "denied")]
        response = client.post("/api/v1/me/education/1/read", headers=as_user(username))
        assert response.status_code == 403


def test_odd_windows_and_pages_answer_cleanly(client, village, as_user):
    headers = as_user("resident.wang")
    for query, status in (({"since": "1000-01-01T00:00:00+14:00"}, 422), ({"until": "1000-01-01T00:00:00+14:00"}, 422),
                          ({"until": "1000-01-02T00:00:00+14:00"}, 200),
                          ({"until": "9998-12-31T00:00:00-12:00"}, 200), ({"since": "yesterday"}, 422),
                          ({"page": 99999999, "page_size": 100}, 200)):
        response = client.get("/api/v1/me/vitals", headers=headers, query_string=query)
        assert response.status_code == status, (query, response.get_json())
    assert client.get("/api/v1/me/follow-ups?page=5000", headers=headers).get_json()["done"] == []
    assert client.get("/api/v1/me/education?page=5000", headers=headers).get_json() == []
