"""The follow-up classification of the National Basic Public Health Service Specification (3rd ed.) at its boundaries,
through the API: controlled below 140/90 and fasting glucose 7.0 (next visit in 90 days), not controlled up to the
urgent limits (next within 2 weeks), urgent from 180/110, glucose 16.7 or 3.9, or a danger symptom (referral at
once, next within 2 weeks), and two consecutive not-controlled visits recommending a referral."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from hie.family_doctor import rules
from hie.family_doctor.models import Classification, Condition
from hie.platform.audit.models import AuditEvent
from tests.test_fd_followups import FD, at, bp, local_today, pending, resident, sign, visit
from tests.test_fd_teams import make_team

DAY = local_today() - timedelta(days=7)


@pytest.fixture
def fd(client, as_user) -> dict:
    """yaodu.fd leading team YAODU-T1-A."""
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    return as_user("yaodu.fd")


def _contract(client, fd, condition: str, index: int = 0) -> dict:
    return sign(client, fd, resident(client, fd, index)["id"], ("basic", condition))


def _classified(client, fd, condition: str, visited: date = DAY, **form) -> dict:
    contract = _contract(client, fd, condition)
    return visit(client, fd, pending(client, fd, contract["id"], condition)["id"], visited_at=at(visited), **form)


@pytest.mark.parametrize(("systolic", "diastolic", "verdict", "days"), [
    (139, 89, "controlled", 90),
    (140, 89, "not_controlled", 14),
    (139, 90, "not_controlled", 14),
    (140, 90, "not_controlled", 14),
    (179, 109, "not_controlled", 14),
    (180, 100, "urgent", 14),
    (150, 110, "urgent", 14),
    (180, 110, "urgent", 14),
])
def test_blood_pressure_at_the_boundaries(client, fd, systolic, diastolic, verdict, days):
    done = _classified(client, fd, "hypertension", vitals=bp(systolic, diastolic))
    assert (done["classification"], done["next_due"]) == (verdict, (DAY + timedelta(days=days)).isoformat())
    assert pending(client, fd, done["contract_id"])["due_on"] == done["next_due"]
    assert done["refer"] == ("urgent" if verdict == "urgent" else None)
    assert [a["kind"] for a in done["alerts"]] == (["urgent_referral"] if verdict == "urgent" else [])


@pytest.mark.parametrize(("glucose", "verdict", "days"), [
    (6.9, "controlled", 90),
    (7.0, "not_controlled", 14),
    (16.6, "not_controlled", 14),
    (16.7, "urgent", 14),
    (3.9, "urgent", 14),
    (4.0, "controlled", 90),
])
def test_fasting_glucose_at_the_boundaries(client, fd, glucose, verdict, days):
    done = _classified(client, fd, "diabetes", vitals={"fasting_glucose": glucose})
    assert (done["classification"], done["next_due"]) == (verdict, (DAY + timedelta(days=days)).isoformat())
    assert done["vitals"] == {"fasting_glucose": glucose}


@pytest.mark.parametrize(("condition", "symptom", "words"), [
    ("hypertension", "blurred_vision_eye_pain", "视力模糊、眼痛"),
    ("diabetes", "acetone_breath", "呼气有烂苹果样丙酮味"),
])
def test_a_danger_symptom_makes_a_controlled_visit_urgent(client, fd, condition, symptom, words):
    readings = bp(128, 78) if condition == "hypertension" else {"fasting_glucose": 6.1}
    done = _classified(client, fd, condition, vitals=readings, symptoms=[symptom])
    assert (done["classification"], done["refer"], done["symptoms"]) == ("urgent", "urgent", [symptom])
    assert done["reasons"] == [f"symptom: {words}"]
    assert done["next_due"] == (DAY + timedelta(days=14)).isoformat()


def test_a_diabetic_with_a_racing_heart_or_fever_is_urgent(client, fd):
    done = _classified(client, fd, "diabetes", vitals={"fasting_glucose": 6.0, "heart_rate": 101})
    assert done["classification"] == "urgent" and done["reasons"] == ["heart rate > 100 /min"]


def test_an_adverse_drug_reaction_is_not_controlled(client, fd):
    done = _classified(client, fd, "hypertension", vitals=bp(128, 78),
                       adverse_reactions={"present": True, "description": "干咳"})
    assert (done["classification"], done["reasons"]) == ("not_controlled", ["adverse drug reaction"])
    assert done["adverse_reactions"] == {"present": True, "description": "干咳"}


def test_two_consecutive_poorly_controlled_visits_recommend_a_referral(client, fd, platform_db):
    contract = _contract(client, fd, "hypertension")

    def next_visit(day: date, systolic: float) -> dict:
        return visit(client, fd, pending(client, fd, contract["id"])["id"], visited_at=at(day),
                     vitals=bp(systolic, 85))

    first = next_visit(DAY - timedelta(days=40), 150)
    assert (first["classification"], first["refer"], first["alerts"]) == ("not_controlled", None, [])
    fine = next_visit(DAY - timedelta(days=26), 130)
    assert fine["classification"] == "controlled"  # breaks the run
    again = next_visit(DAY - timedelta(days=12), 152)
    assert (again["classification"], again["refer"]) == ("not_controlled", None)
    second = next_visit(DAY, 148)
    assert (second["classification"], second["refer"]) == ("not_controlled", "recommended")
    assert second["next_due"] == (DAY + timedelta(days=14)).isoformat()
    alerts = client.get(f"{FD}/alerts", headers=fd).get_json()
    assert [(a["kind"], a["follow_up_id"]) for a in alerts] == [("referral_recommended", second["id"])]
    assert alerts[0]["message"].startswith("Referral recommended")
    assert alerts[0]["draft_referral"]["urgency"] == "routine"
    platform_db.rollback()
    assert platform_db.scalar(select(AuditEvent.detail).where(AuditEvent.resource_id == second["id"],
                                                              AuditEvent.action == "update")).startswith(
        "hypertension follow-up (clinic): not_controlled")


def test_a_late_entry_counts_only_the_visits_before_it_and_keeps_the_schedule(client, fd):
    contract = _contract(client, fd, "hypertension")
    recent = visit(client, fd, pending(client, fd, contract["id"])["id"], visited_at=at(DAY), vitals=bp(150, 95))
    assert recent["next_due"] == (DAY + timedelta(days=14)).isoformat()
    older = at(DAY - timedelta(days=20))
    refused = visit(client, fd, pending(client, fd, contract["id"])["id"], status=422, visited_at=older,
                    vitals=bp(150, 95))
    assert [e["field"] for e in refused["errors"]] == ["visited_at"]
    late = client.post(f"{FD}/follow-ups", headers=fd, json={
        "contract_id": contract["id"], "condition": "hypertension", "visited_at": older, "vitals": bp(150, 95)})
    assert late.status_code == 201, late.get_json()
    entered = late.get_json()
    assert (entered["classification"], entered["refer"], entered["next_due"]) == ("not_controlled", None, None)
    assert entered["id"] not in (recent["id"], pending(client, fd, contract["id"])["id"])
    assert pending(client, fd, contract["id"])["due_on"] == recent["next_due"]


def test_the_rules_table_cites_the_specification_and_its_thresholds():
    table = rules.DEFAULT_RULES.read_text(encoding="utf-8")
    assert "国家基本公共卫生服务规范（第三版）" in table
    verdict = rules.classify(Condition.hypertension, {"systolic": 139, "diastolic": 89}, [], False, DAY)
    assert verdict.classification is Classification.controlled
