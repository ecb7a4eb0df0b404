"""Demo referrals: three weeks of patients sent from the township centre up to the hospitals, in every state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.empi.services import person_of_patient
from hie.exchange.demo_data import demo_people
from hie.exchange.models import FhirResource
from hie.patients.models import Patient
from hie.platform.auth.identity import Identity
from hie.platform.db import utcnow
from hie.platform.scripted import identity_of, in_request
from hie.referral import capacity, services
from hie.referral.models import Direction, Referral, ReferralStatus, Urgency
from hie.tenants.models import Institution
from hie.tenants.services import tenant_session

SENDER, SENDER_USER = "YAODU-T1", "yaodu.familydoctor"
RECEIVERS = {"LF-PH": "specialist", "YAODU-CH": "yaodu.doctor"}
# (final state, urgency, days ago the referral was made): every state, and two left unanswered past the deadline
PLAN: tuple[tuple[ReferralStatus, Urgency, int], ...] = (
    (ReferralStatus.requested, Urgency.routine, 0), (ReferralStatus.requested, Urgency.urgent, 1),
    (ReferralStatus.requested, Urgency.routine, 4), (ReferralStatus.accepted, Urgency.routine, 2),
    (ReferralStatus.accepted, Urgency.urgent, 1), (ReferralStatus.declined, Urgency.routine, 9),
    (ReferralStatus.arrived, Urgency.urgent, 5), (ReferralStatus.arrived, Urgency.emergency, 3),
    (ReferralStatus.completed, Urgency.routine, 20), (ReferralStatus.completed, Urgency.urgent, 16),
    (ReferralStatus.completed, Urgency.emergency, 12), (ReferralStatus.cancelled, Urgency.routine, 8),
    (ReferralStatus.no_show, Urgency.routine, 14), (ReferralStatus.completed, Urgency.routine, 18),
)
# (hospital, department) -> referred patients it takes a day
DEMO_SLOTS = {("LF-PH", "心内科"): 6, ("LF-PH", "内分泌科"): 4, ("YAODU-CH", "心内科"): 4, ("YAODU-CH", "内分泌科"): 3}
DIAGNOSES = ({"code": "I10", "text": "原发性高血压"}, {"code": "E11.9", "text": "2型糖尿病，无并发症"},
             {"code": "I20.0", "text": "不稳定型心绞痛"}, {"code": "J18.9", "text": "肺炎"})


def _local_ids(app: Flask, institution: Institution) -> dict[str, str]:
    """Patient record ids of an institution by MRN."""
    with tenant_session(app.extensions["hie.engines"], institution.tenant) as shard:
        rows = shard.execute(select(Patient.mrn, Patient.id).where(Patient.institution_id == institution.id))
        return {mrn: patient_id for mrn, patient_id in rows}


def _first_record(app: Flask, institution: Institution, patient_id: str) -> list[str]:
    with tenant_session(app.extensions["hie.engines"], institution.tenant) as shard:
        found = shard.scalar(select(FhirResource.id).where(FhirResource.patient_id == patient_id,
                                                           FhirResource.resource_type == "Observation").limit(1))
    return [f"Observation/{found}"] if found else []


def _pairs(app: Flask, session: Session, institutions: dict[str, Institution]) -> list[tuple[str, str, str, str]]:
    """(receiver code, sender's patient id, receiver's patient id, master person) for people registered at both."""
    ids = {code: _local_ids(app, institution) for code, institution in institutions.items()}
    pairs = []
    for person in demo_people():
        held = dict(person.registrations)
        for receiver in RECEIVERS:
            if SENDER in held and receiver in held and held[SENDER] in ids[SENDER] and held[receiver] in ids[receiver]:
                ours, theirs = ids[SENDER][held[SENDER]], ids[receiver][held[receiver]]
                tenants = institutions[SENDER].tenant.code, institutions[receiver].tenant.code
                person_id = person_of_patient(session, tenants[0], ours)
                if person_id and person_id == person_of_patient(session, tenants[1], theirs):
                    pairs.append((receiver, ours, theirs, person_id))
    return pairs


def _play(app: Flask, who: dict[str, Identity], pair: tuple[str, str, str, str], plan: tuple[ReferralStatus,
          Urgency, int], number: int, records: list[str]) -> None:
    """Make one referral and move it, step by step at past times, to its planned state."""
    receiver, ours, theirs, _person = pair
    final, urgency, days = plan
    made = utcnow() - timedelta(days=days, hours=2 + number % 5)
    diagnosis = DIAGNOSES[number % len(DIAGNOSES)]
    body = {"patient_id": ours, "direction": Direction.up, "urgency": urgency, "receiving_institution": receiver,
            "department": "心内科" if diagnosis["code"].startswith("I") else "内分泌科",
            "reason": f"{diagnosis['text']}，乡镇卫生院处理困难，请上级医院进一步诊治", "diagnoses": [diagnosis],
            "clinical_summary": "血压控制不佳，近一周头晕加重。", "records": records}
    referral = in_request(app, who[SENDER], lambda: services.create(who[SENDER], body, made))
    steps: list[tuple[str, Identity, Callable[[datetime], Any]]] = []
    rid, host = referral.id, who[receiver]
    if final is ReferralStatus.declined:
        steps.append(("decline", host, lambda at: services.decline(host, rid, {"reason": "本科室床位已满"}, at)))
    if final is ReferralStatus.cancelled:
        steps.append(("cancel", who[SENDER],
                      lambda at: services.cancel(who[SENDER], rid, {"reason": "患者改去他院"}, at)))
    if final in (ReferralStatus.accepted, ReferralStatus.arrived, ReferralStatus.completed, ReferralStatus.no_show):
        appointment = made + timedelta(days=1)
        steps.append(("accept", host, lambda at: services.accept(host, rid, {"appointment_at": appointment}, at)))
    if final is ReferralStatus.no_show:
        steps.append(("no-show", host, lambda at: services.no_show(host, rid, {"reason": "患者未按时就诊"}, at)))
    if final in (ReferralStatus.arrived, ReferralStatus.completed):
        steps.append(("arrive", host, lambda at: services.arrive(host, rid, {"patient_id": theirs}, at)))
    if final is ReferralStatus.completed:
        back = {"receiving_institution": SENDER, "urgency": Urgency.routine, "department": None,
                "reason": "病情稳定，转回基层继续随访管理", "diagnoses": [diagnosis], "records": [],
                "clinical_summary": "出院带药：氨氯地平5mg qd。每两周测血压，一月后复诊。"}
        summary = {"discharge_summary": "住院7天，经治疗症状缓解，病情稳定出院。",
                   "back_referral": back if number % 2 == 0 else None}
        steps.append(("complete", host, lambda at: services.complete(host, rid, summary, at)))
    for index, (_name, actor, move) in enumerate(steps, start=1):
        at = min(made + timedelta(hours=3 * index if index < 3 else 24 * index), utcnow())
        in_request(app, actor, lambda move=move, at=at: move(at))


def _publish_slots(app: Flask, institutions: dict[str, Institution]) -> None:
    """The hospitals' referral slots from three weeks back to two ahead, so accepting books one and routing ranks."""
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        today = capacity.local_day(utcnow())
        for (code, department), seats in DEMO_SLOTS.items():
            for offset in range(-21, 14):
                capacity.publish(session, institutions[code].id, department, today + timedelta(days=offset), seats)


def add_demo_referrals(app: Flask, echo: Callable[[str], None]) -> None:
    """The referral module's demo step: once, so a rerun adds nothing."""
    engines = app.extensions["hie.engines"]
    with Session(engines.platform, expire_on_commit=False) as session:
        institutions = {i.code: i for i in session.scalars(
            select(Institution).where(Institution.code.in_([SENDER, *RECEIVERS])))}
        made = session.scalar(select(func.count()).select_from(Referral)
                              .where(Referral.sender_institution_id == institutions[SENDER].id)) or 0
        if made:
            echo(f"demo referrals: already made ({made} from {SENDER})")
            return
        who = {code: identity_of(session, username, "demo-referral")
               for code, username in ((SENDER, SENDER_USER), *RECEIVERS.items())}
        pairs = _pairs(app, session, institutions)
    _publish_slots(app, institutions)
    for number, (pair, plan) in enumerate(zip(pairs, PLAN, strict=False)):
        _play(app, who, pair, plan, number, _first_record(app, institutions[SENDER], pair[1]))
    with Session(engines.platform) as session:
        states = dict(session.execute(select(Referral.status, func.count()).group_by(Referral.status)).all())
    echo(f"demo referrals: {sum(states.values())} referrals from {SENDER} to {', '.join(RECEIVERS)} and back "
         f"({', '.join(f'{count} {status.value}' for status, count in sorted(states.items()))}); "
         f"inbox GET /api/v1/referrals?box=incoming; slots GET /api/v1/referral-slots?department=心内科")
