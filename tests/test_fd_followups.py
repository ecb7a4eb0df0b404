"""Chronic-disease follow-ups over the API: scheduled at signing, a visit recorded with its form (its readings become
FHIR Observations), the next one scheduled by the verdict, an urgent visit's alert with a draft upward referral that
the team sends through the referral module, alerts resolved, bad forms refused naming the field with nothing stored,
and another team seeing none of it."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.exchange.models import FhirResource
from hie.family_doctor import followups
from hie.family_doctor.models import Alert, FollowUp, Vitals
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from hie.referral import capacity
from hie.tenants.models import Institution
from tests.conftest import new_patient, shard_engine, valid_id
from tests.test_fd_teams import add_institution, add_user, make_team

FD = "/api/v1/family-doctor"
ZONE = ZoneInfo("Asia/Shanghai")
NAMES = ("王秀英", "李建国", "张桂兰", "刘志强", "陈淑珍", "杨国华", "赵玉梅", "黄德明")


def local_today() -> date:
    """Today where the platform lives (the test app keeps the default zone)."""
    return datetime.now(ZONE).date()


def at(day: date, hour: int = 10) -> str:
    """A local time on a day, as a device sends it."""
    return datetime.combine(day, time(hour), ZONE).isoformat()


def resident(client, headers, index: int) -> dict:
    """The index-th distinct resident registered at the team's township centre."""
    return new_patient(client, headers, mrn=f"T1-{index:03d}", name=NAMES[index], sex="F" if index % 2 else "M",
                       birth_date=f"195{index}-0{index % 9 + 1}-1{index}", phone=f"1393571{index:04d}",
                       id_number=valid_id(f"14100219{50 + index}0{index % 9 + 1}1{index}0{index}2"),
                       address=f"山西省临汾市尧都区屯里镇{index + 1}村")


def sign(client, headers, patient_id: str, packages: tuple[str, ...] = ("basic", "hypertension"),
         starts_on: date | None = None, status: int = 201, **more) -> dict:
    """A contract through the API, starting 60 days ago unless told otherwise."""
    body = {"patient_id": patient_id, "packages": list(packages), "priority_groups": [],
            "starts_on": (starts_on or local_today() - timedelta(days=60)).isoformat(), **more}
    response = client.post(f"{FD}/contracts", json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def follow_ups(client, headers, contract_id: str, status: int = 200) -> list[dict]:
    """A contract's follow-ups, the scheduled one first."""
    response = client.get(f"{FD}/contracts/{contract_id}/follow-ups?page_size=100", headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def pending(client, headers, contract_id: str, condition: str = "hypertension") -> dict:
    """The follow-up the contract has scheduled for a condition."""
    found = [f for f in follow_ups(client, headers, contract_id)
             if f["status"] == "scheduled" and f["condition"] == condition]
    assert len(found) == 1, found
    return found[0]


def visit(client, headers, follow_up_id: str, status: int = 200, **form) -> dict:
    """Complete a scheduled follow-up with a form."""
    response = client.post(f"{FD}/follow-ups/{follow_up_id}", json=form, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def refused_fields(body: dict) -> list[str]:
    """The fields a 422 names."""
    return [error["field"] for error in body.get("errors", [])]


def bp(systolic: float, diastolic: float, **more) -> dict:
    """A face-to-face visit's readings."""
    return {"systolic": systolic, "diastolic": diastolic, **more}


@pytest.fixture
def desk(client, as_user) -> dict:
    """Team YAODU-T1-A (yaodu.fd leads it), a resident under a hypertension and diabetes contract that began 60 days
    ago, and the follow-ups it scheduled."""
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    fd = as_user("yaodu.fd")
    patient = resident(client, fd, 0)
    contract = sign(client, fd, patient["id"], ("basic", "hypertension", "diabetes"))
    return {"fd": fd, "patient": patient, "contract": contract}


@pytest.fixture
def other_team(app, client, as_user) -> dict:
    """A team of another township centre of the same tenant."""
    add_institution(app, "YAODU-T2", "yaodu", "township_health_centre", "县底镇卫生院")
    add_user(app, "t2.fd", Role.family_doctor, "YAODU-T2")
    make_team(client, as_user("yaodu.admin"), "YAODU-T2-A", "YAODU-T2", {"t2.fd": "lead_doctor"})
    return as_user("t2.fd")


def stored(app, platform_db) -> tuple:
    """What a visit may write: follow-ups by status, readings, alerts, Observations in the yaodu shard."""
    platform_db.rollback()
    with Session(shard_engine(app, "yaodu")) as shard:
        observations = shard.scalar(select(func.count()).select_from(FhirResource)
                                    .where(FhirResource.resource_type == "Observation"))
    return (platform_db.execute(select(FollowUp.id, FollowUp.status, FollowUp.due_on, FollowUp.classification)
                                .order_by(FollowUp.id)).all(),
            platform_db.scalar(select(func.count()).select_from(Vitals)),
            platform_db.scalar(select(func.count()).select_from(Alert)), observations)


def test_signing_schedules_each_condition_and_a_visit_schedules_the_next(app, client, desk, platform_db):
    fd, contract = desk["fd"], desk["contract"]
    scheduled = follow_ups(client, fd, contract["id"])
    assert sorted((f["condition"], f["status"]) for f in scheduled) == [("diabetes", "scheduled"),
                                                                        ("hypertension", "scheduled")]
    assert all(f["due_on"] == (local_today() + timedelta(days=14)).isoformat() for f in scheduled)
    assert all(f["patient_id"] == desk["patient"]["id"] and f["patient_tenant_code"] == "yaodu" for f in scheduled)

    day = local_today() - timedelta(days=3)
    form = {"visited_at": at(day), "method": "clinic", "symptoms": [],
            "vitals": bp(132, 84, heart_rate=72, weight=70, height=165),
            "lifestyle": {"smoking_per_day": 5, "alcohol_per_day": 1, "exercise_per_week": 3, "exercise_minutes": 30,
                          "salt_intake": "moderate", "diet": "少油", "psychological_adjustment": "good",
                          "compliance": "good"},
            "medication_adherence": "regular", "adverse_reactions": {"present": False},
            "medications": [{"name": "氨氯地平", "dose": "5 mg", "frequency": "qd"}], "note": "血压平稳"}
    done = visit(client, fd, pending(client, fd, contract["id"])["id"], **form)
    assert (done["status"], done["classification"], done["face_to_face"], done["method"]) == \
        ("done", "controlled", True, "clinic")
    assert done["next_due"] == (day + timedelta(days=90)).isoformat() and done["reasons"] == []
    assert done["recorded_by"] == "yaodu.fd" and done["visited_at"].startswith(f"{day}T02:00")
    assert done["lifestyle"]["salt_intake"] == "moderate" and done["medications"][0]["name"] == "氨氯地平"
    assert done["vitals"] == {"systolic": 132, "diastolic": 84, "heart_rate": 72, "weight": 70, "height": 165}
    assert done["observations"] and all(ref.startswith("Observation/yaodu.") for ref in done["observations"])

    platform_db.rollback()
    reading = platform_db.get(Vitals, done["vitals_id"])
    assert (reading.client_id, reading.contract_id, reading.systolic, reading.setting.value) == \
        (f"follow-up/{done['id']}", contract["id"], 132, "clinic")
    observation = client.get(f"/fhir/{done['observations'][0]}", headers=fd)
    assert observation.status_code == 200
    nxt = pending(client, fd, contract["id"])
    assert nxt["due_on"] == (day + timedelta(days=90)).isoformat() and nxt["id"] != done["id"]
    assert client.get(f"{FD}/follow-ups/{done['id']}", headers=fd).get_json() == done

    platform_db.rollback()
    events = platform_db.execute(select(AuditEvent.action, AuditEvent.resource_type, AuditEvent.patient).where(
        AuditEvent.resource_id == done["id"])).all()
    patient = f"yaodu/{desk['patient']['id']}"
    assert ("update", "FollowUp", patient) in events and ("read", "FollowUp", patient) in events


def test_an_unscheduled_visit_fulfils_the_scheduled_one(client, desk, other_team, platform_db):
    fd, contract = desk["fd"], desk["contract"]
    scheduled = pending(client, fd, contract["id"], "diabetes")
    response = client.post(f"{FD}/follow-ups", headers=fd, json={
        "contract_id": contract["id"], "condition": "diabetes", "visited_at": at(local_today() - timedelta(days=1)),
        "method": "home", "vitals": {"fasting_glucose": 8.2}})
    assert response.status_code == 201, response.get_json()
    done = response.get_json()
    assert (done["id"], done["unscheduled"], done["classification"], done["method"]) == \
        (scheduled["id"], True, "not_controlled", "home")
    assert pending(client, fd, contract["id"], "diabetes")["due_on"] == (local_today() + timedelta(days=13)).isoformat()

    before = client.post(f"{FD}/follow-ups", headers=fd, json={"contract_id": contract["id"], "condition": "diabetes",
                                                                 "visited_at": at(local_today() - timedelta(days=61))})
    assert before.status_code == 422 and refused_fields(before.get_json()) == ["visited_at"]
    other = client.post(f"{FD}/follow-ups", headers=other_team, json={"contract_id": contract["id"],
                                                                       "condition": "diabetes"})
    assert other.status_code == 404
    again = visit(client, fd, done["id"], status=409, vitals=bp(130, 80))
    assert "done" in again["detail"]


def test_a_condition_outside_the_packages_is_refused(client, as_user):
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    fd = as_user("yaodu.fd")
    contract = sign(client, fd, resident(client, fd, 1)["id"], ("basic", "hypertension"))
    response = client.post(f"{FD}/follow-ups", headers=fd,
                           json={"contract_id": contract["id"], "condition": "diabetes"})
    assert response.status_code == 422 and refused_fields(response.get_json()) == ["condition"]
    assert [f["condition"] for f in follow_ups(client, fd, contract["id"])] == ["hypertension"]


def _visit_pending(client, fd, contract_id: str, condition: str = "hypertension", status: int = 200, **form) -> dict:
    return visit(client, fd, pending(client, fd, contract_id, condition)["id"], status=status, **form)


def test_an_urgent_visit_drafts_a_referral_that_the_team_sends(client, desk, as_user, platform_db):
    fd, contract = desk["fd"], desk["contract"]
    done = _visit_pending(client, fd, contract["id"], visited_at=at(local_today() - timedelta(days=1)),
                          vitals=bp(186, 112), symptoms=["severe_headache_or_dizziness"],
                          medications=[{"name": "硝苯地平", "dose": "10 mg", "frequency": "tid"}])
    assert done["classification"] == "urgent" and done["refer"] == "urgent"
    assert done["next_due"] == (local_today() + timedelta(days=13)).isoformat()
    assert any("剧烈头痛" in reason for reason in done["reasons"])
    assert [a["kind"] for a in done["alerts"]] == ["urgent_referral"]

    open_alerts = client.get(f"{FD}/alerts", headers=fd).get_json()
    assert [a["kind"] for a in open_alerts] == ["urgent_referral"]  # the reading's own alarm is folded into it
    alert = open_alerts[0]
    draft = alert["draft_referral"]
    assert (alert["patient_id"], alert["patient_tenant_code"], alert["follow_up_id"]) == \
        (desk["patient"]["id"], "yaodu", done["id"])
    assert (draft["patient_id"], draft["direction"], draft["urgency"], draft["diagnoses"]) == \
        (desk["patient"]["id"], "up", "urgent", [{"code": "I10", "text": "原发性高血压"}])
    assert draft["receiving_institution"] is None  # nobody publishes slots: the team chooses
    assert "systolic >= 180" in draft["reason"] and draft["records"] == done["observations"]

    missing = client.post(f"{FD}/alerts/{alert['id']}/referral", json={}, headers=fd)
    assert missing.status_code == 422 and refused_fields(missing.get_json()) == ["receiving_institution"]
    sent = client.post(f"{FD}/alerts/{alert['id']}/referral", json={"receiving_institution": "LF-PH"}, headers=fd)
    assert sent.status_code == 201, sent.get_json()
    referral = sent.get_json()
    assert (referral["status"], referral["direction"], referral["urgency"], referral["sending_institution"],
            referral["receiving_institution"], referral["patient_id"]) == \
        ("requested", "up", "urgent", "YAODU-T1", "LF-PH", desk["patient"]["id"])
    assert referral["records"] == done["observations"]
    outgoing = client.get("/api/v1/referrals?box=outgoing", headers=fd).get_json()
    assert [r["id"] for r in outgoing] == [referral["id"]]
    incoming = client.get("/api/v1/referrals?box=incoming", headers=as_user("lfph.specialist")).get_json()
    assert [r["id"] for r in incoming] == [referral["id"]]

    assert client.get(f"{FD}/follow-ups/{done['id']}", headers=fd).get_json()["referral_id"] == referral["id"]
    assert client.get(f"{FD}/alerts", headers=fd).get_json() == []
    resolved = client.get(f"{FD}/alerts/{alert['id']}", headers=fd).get_json()
    assert resolved["resolved_by"] == "yaodu.fd" and referral["id"] in resolved["resolution"]
    again = client.post(f"{FD}/alerts/{alert['id']}/referral", json={"receiving_institution": "LF-PH"}, headers=fd)
    assert again.status_code == 409


def test_the_draft_names_the_receiver_the_referral_module_suggests(app, client, desk):
    with session_scope(app.extensions["hie.engines"].platform) as session:
        hospital = session.scalar(select(Institution).where(Institution.code == "LF-PH"))
        for offset in range(3):
            capacity.publish(session, hospital.id, "内分泌科", local_today() + timedelta(days=offset), 5)
    fd = desk["fd"]
    done = _visit_pending(client, fd, desk["contract"]["id"], "diabetes", vitals={"fasting_glucose": 3.5})
    assert done["classification"] == "urgent"
    draft = client.get(f"{FD}/alerts", headers=fd).get_json()[0]["draft_referral"]
    assert (draft["receiving_institution"], draft["department"], draft["diagnoses"][0]["code"]) == \
        ("LF-PH", "内分泌科", "E11.9")


def test_without_the_referral_module_the_alert_says_so(client, desk, monkeypatch):
    monkeypatch.setattr(followups, "installed", lambda: ())
    fd = desk["fd"]
    _visit_pending(client, fd, desk["contract"]["id"], vitals=bp(182, 100))
    alert = client.get(f"{FD}/alerts", headers=fd).get_json()[0]
    assert alert["draft_referral"] is None and "referral module is not installed" in alert["message"]
    assert alert["message"].startswith("Urgent referral needed")
    refused = client.post(f"{FD}/alerts/{alert['id']}/referral", json={"receiving_institution": "LF-PH"}, headers=fd)
    assert refused.status_code == 409
    assert client.get("/api/v1/referrals?box=outgoing", headers=fd).get_json() == []


def test_an_alert_is_resolved_with_a_note(client, desk, platform_db):
    fd = desk["fd"]
    _visit_pending(client, fd, desk["contract"]["id"], vitals=bp(190, 100))
    alert = client.get(f"{FD}/alerts", headers=fd).get_json()[0]
    blank = client.post(f"{FD}/alerts/{alert['id']}/resolve", json={"resolution": "  "}, headers=fd)
    assert blank.status_code == 422 and refused_fields(blank.get_json()) == ["resolution"]
    done = client.post(f"{FD}/alerts/{alert['id']}/resolve", json={"resolution": "已电话联系，患者自行去市医院"},
                       headers=fd)
    assert done.status_code == 200 and done.get_json()["resolution"] == "已电话联系，患者自行去市医院"
    assert client.get(f"{FD}/alerts", headers=fd).get_json() == []
    resolved = client.get(f"{FD}/alerts?resolved=true", headers=fd).get_json()
    assert [(a["kind"], a["resolved_by"]) for a in resolved] == [("urgent_referral", "yaodu.fd"), ("reading", None)]
    assert resolved[0]["id"] == alert["id"] and "part of the urgent referral" in resolved[1]["resolution"]
    assert client.post(f"{FD}/alerts/{alert['id']}/resolve", json={"resolution": "again"}, headers=fd).status_code \
        == 409


def test_ending_the_contract_drops_its_schedule_and_closes_its_alerts(client, desk, platform_db):
    fd, contract = desk["fd"], desk["contract"]
    _visit_pending(client, fd, contract["id"], vitals=bp(185, 95))
    response = client.post(f"{FD}/contracts/{contract['id']}/terminate", json={"reason": "迁居外地"}, headers=fd)
    assert response.status_code == 200, response.get_json()
    statuses = sorted(f["status"] for f in follow_ups(client, fd, contract["id"]))
    assert statuses == ["cancelled", "cancelled", "done"]
    assert client.get(f"{FD}/alerts", headers=fd).get_json() == []
    platform_db.rollback()
    assert platform_db.scalar(select(Alert.resolution).where(Alert.kind == "urgent_referral")) == \
        "contract terminated"
    cancelled = [f for f in follow_ups(client, fd, contract["id"]) if f["status"] == "cancelled"][0]
    assert "terminated" in visit(client, fd, cancelled["id"], status=409, vitals=bp(130, 80))["detail"]


def test_a_renewal_keeps_the_schedule_and_the_open_alerts(client, desk):
    fd, contract = desk["fd"], desk["contract"]
    _visit_pending(client, fd, contract["id"], vitals=bp(181, 95), visited_at=at(local_today() - timedelta(days=2)))
    due = pending(client, fd, contract["id"])["due_on"]
    assert due == (local_today() + timedelta(days=12)).isoformat()
    renewed = client.post(f"{FD}/contracts/{contract['id']}/renew", json={}, headers=fd)
    assert renewed.status_code == 201, renewed.get_json()
    new = renewed.get_json()
    assert new["starts_on"] > due  # the new term starts after the old one ends, the schedule runs on meanwhile
    assert pending(client, fd, new["id"])["due_on"] == due
    assert pending(client, fd, new["id"], "diabetes")["due_on"] == (local_today() + timedelta(days=14)).isoformat()
    assert [a["contract_id"] for a in client.get(f"{FD}/alerts", headers=fd).get_json()] == [new["id"]]
    done = _visit_pending(client, fd, new["id"], vitals=bp(135, 85))
    assert done["classification"] == "controlled"


def test_a_phone_visit_is_not_face_to_face_and_keeps_the_quarterly_visit(client, desk):
    fd, contract = desk["fd"], desk["contract"]
    first = local_today() - timedelta(days=50)
    _visit_pending(client, fd, contract["id"], visited_at=at(first), vitals=bp(130, 80))
    phoned = _visit_pending(client, fd, contract["id"], visited_at=at(local_today() - timedelta(days=1)),
                            method="phone", vitals=bp(128, 82))
    assert (phoned["face_to_face"], phoned["classification"]) == (False, "controlled")
    assert phoned["next_due"] == (first + timedelta(days=91)).isoformat()  # not a full quarter after the call
    contradiction = _visit_pending(client, fd, contract["id"], status=422, method="phone", face_to_face=True)
    assert refused_fields(contradiction) == ["face_to_face"]


@pytest.mark.parametrize(("form", "field"), [
    ({"method": "fax"}, "method"),
    ({"vitals": {"systolic": 400, "diastolic": 90}}, "vitals.systolic"),
    ({"vitals": {"systolic": 120, "diastolic": 130}}, "vitals.diastolic"),
    ({"vitals": {"fasting_glucose": 0}}, "vitals.fasting_glucose"),
    ({"vitals": {"systolic": "high", "diastolic": 80}}, "vitals.systolic"),
    ({"symptoms": ["nausea_vomiting", "tired"]}, "symptoms[1]"),
    ({"symptoms": ["polydipsia_polyuria"]}, "symptoms[0]"),
    ({"lifestyle": {"salt_intake": "lots"}}, "lifestyle.salt_intake"),
    ({"lifestyle": {"smoking_per_day": -1}}, "lifestyle.smoking_per_day"),
    ({"medication_adherence": "sometimes"}, "medication_adherence"),
    ({"adverse_reactions": {"present": True}}, "adverse_reactions.description"),
    ({"medications": [{"name": "二甲双胍"}, {"dose": "5 mg"}]}, "medications[1].name"),
    ({"visited_at": "2099-01-01T10:00:00+08:00"}, "visited_at"),
    ({"visited_at": "2026-01-01T10:00:00"}, "visited_at"),
    ({"note": "x" * 2001}, "note"),
    ({"colour": "blue"}, "colour"),
])
def test_a_bad_form_is_refused_naming_the_field_and_nothing_is_stored(app, client, desk, platform_db, form, field):
    fd, contract = desk["fd"], desk["contract"]
    follow_up = pending(client, fd, contract["id"])
    before = stored(app, platform_db)
    body = {"vitals": bp(150, 95), **form}
    response = client.post(f"{FD}/follow-ups/{follow_up['id']}", json=body, headers=fd)
    assert response.status_code == 422, response.get_json()
    assert refused_fields(response.get_json()) == [field], response.get_json()
    assert stored(app, platform_db) == before


def test_another_team_sees_none_of_it(client, desk, other_team, platform_db, as_user):
    fd, contract = desk["fd"], desk["contract"]
    done = _visit_pending(client, fd, contract["id"], vitals=bp(185, 100))
    alert = client.get(f"{FD}/alerts", headers=fd).get_json()[0]
    patient = f"yaodu/{desk['patient']['id']}"
    attempts = [("GET", f"{FD}/follow-ups/{done['id']}", None),
                ("POST", f"{FD}/follow-ups/{done['id']}", {}),
                ("GET", f"{FD}/contracts/{contract['id']}/follow-ups", None),
                ("GET", f"{FD}/alerts/{alert['id']}", None),
                ("POST", f"{FD}/alerts/{alert['id']}/resolve", {"resolution": "not ours"}),
                ("POST", f"{FD}/alerts/{alert['id']}/referral", {"receiving_institution": "LF-PH"})]
    for headers in (other_team, as_user("quwo.doctor")):
        for method, url, body in attempts:
            request_id = f"fd-iso-{len(url)}-{method}-{headers['Authorization'][-8:]}"
            response = client.open(url, method=method, json=body, headers={**headers, "X-Request-Id": request_id})
            assert response.status_code == 404, (method, url, response.get_json())
            platform_db.rollback()
            events = platform_db.execute(select(AuditEvent.outcome, AuditEvent.patient).where(
                AuditEvent.request_id == request_id)).all()
            assert events == [("denied", patient)], (method, url, events)
    assert client.get(f"{FD}/alerts", headers=other_team).get_json() == []
    assert client.get(f"{FD}/follow-ups/no-such-id", headers=fd).status_code == 404
    assert client.get(f"{FD}/alerts/{alert['id']}", headers=fd).get_json()["resolved_at"] is None
    platform_db.rollback()
    assert platform_db.get(FollowUp, done["id"]).referral_id is None
    assert client.get("/api/v1/referrals?box=outgoing", headers=fd).get_json() == []
