"""Demo consultations: two weeks of questions and reads from the county to the city hospital in every state, and
teaching sessions held, upcoming and cancelled. Each step goes through the module's services at its past time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.consult import opinions, queue, scheduling, services, teaching
from hie.consult.models import Consultation, ConsultStatus, Kind, TeachingSession, Urgency
from hie.exchange.models import FhirResource
from hie.patients.models import Patient
from hie.platform.auth.identity import Identity
from hie.platform.db import utcnow
from hie.platform.scripted import identity_of, in_request
from hie.tenants.models import Institution
from hie.tenants.services import tenant_session

CONSULTANT, CONSULTANT_USER = "LF-PH", "specialist"
REQUESTERS = {"YAODU-T1": "yaodu.familydoctor", "YAODU-CH": "yaodu.doctor"}
DEPARTMENTS = {Kind.consultation: "心内科", Kind.mdt: "肿瘤科", Kind.imaging_read: "放射科", Kind.ecg_read: "心电图室"}
QUESTIONS = {
    Kind.consultation: "患者血压控制不佳，已联用两种降压药，请协助调整方案。",
    Kind.mdt: "肺部占位待查，请多学科会诊明确诊疗方案。",
    Kind.imaging_read: "胸部CT平扫，请远程阅片。",
    Kind.ecg_read: "十二导联心电图，胸闷2小时，请远程判读。",
}
OPINION = {
    Kind.consultation: {"findings": "血压160/95 mmHg，心率78次/分；肾功能正常。",
                        "impression": "原发性高血压2级，控制不佳",
                        "diagnoses": [{"code": "I10", "text": "原发性高血压"}],
                        "recommendations": "加用氢氯噻嗪12.5mg qd，两周后复查血压和电解质。"},
    Kind.imaging_read: {"findings": "右肺上叶见约8mm磨玻璃结节，边界清。", "impression": "右肺上叶磨玻璃结节，建议随访",
                        "diagnoses": [{"code": "R91", "text": "肺部影像学检查异常"}],
                        "recommendations": "6个月后复查胸部CT。"},
    Kind.ecg_read: {"findings": "窦性心律，心率88次/分，V1-V4导联ST段压低0.1mV。",
                    "impression": "ST段改变，心肌缺血可能",
                    "diagnoses": [{"code": "I24.9", "text": "急性缺血性心脏病"}],
                    "recommendations": "建议尽快转诊上级医院行心肌酶谱及冠脉评估。", "refer": True,
                    "refer_to": "LF-PH", "department": "心内科", "refer_urgency": "urgent"},
}
OPINION[Kind.mdt] = OPINION[Kind.consultation]
# (kind, urgency, final state, hours ago it was asked): consultations up to their scheduled session (starting one
# needs a video service: HIE_VIDEO_BASE_URL), reads through every later state (a claimed read is in session)
PLAN: tuple[tuple[Kind, Urgency, ConsultStatus, int], ...] = (
    (Kind.consultation, Urgency.routine, ConsultStatus.requested, 3),
    (Kind.consultation, Urgency.urgent, ConsultStatus.accepted, 20),
    (Kind.mdt, Urgency.routine, ConsultStatus.accepted, 50),
    (Kind.consultation, Urgency.routine, ConsultStatus.declined, 100),
    (Kind.consultation, Urgency.routine, ConsultStatus.cancelled, 120),
    (Kind.imaging_read, Urgency.urgent, ConsultStatus.requested, 2),
    (Kind.imaging_read, Urgency.routine, ConsultStatus.requested, 30),
    (Kind.ecg_read, Urgency.urgent, ConsultStatus.in_session, 1),
    (Kind.imaging_read, Urgency.routine, ConsultStatus.opinion_given, 26),
    (Kind.ecg_read, Urgency.urgent, ConsultStatus.acknowledged, 70),
    (Kind.imaging_read, Urgency.routine, ConsultStatus.closed, 200),
    (Kind.ecg_read, Urgency.routine, ConsultStatus.closed, 300),
)
READ_STATES = (ConsultStatus.in_session, ConsultStatus.opinion_given, ConsultStatus.acknowledged, ConsultStatus.closed)


def _patients(app: Flask, institution: Institution, count: int) -> list[tuple[str, list[str]]]:
    """(patient id, an Observation of theirs to send along) of the institution's first demo patients."""
    with tenant_session(app.extensions["hie.engines"], institution.tenant) as shard:
        ids = shard.scalars(select(Patient.id).where(Patient.institution_id == institution.id)
                            .order_by(Patient.mrn).limit(count)).all()
        out = []
        for patient_id in ids:
            found = shard.scalar(select(FhirResource.id).where(FhirResource.patient_id == patient_id,
                                                               FhirResource.resource_type == "Observation").limit(1))
            out.append((patient_id, [f"Observation/{found}"] if found else []))
    return out


def _play(app: Flask, asker: Identity, host: Identity, patient: tuple[str, list[str]],
          plan: tuple[Kind, Urgency, ConsultStatus, int]) -> None:
    """Ask, then move the consultation step by step, at past times, to its planned state."""
    kind, urgency, final, hours = plan
    asked = utcnow() - timedelta(hours=hours)
    body = {"kind": kind, "urgency": urgency, "patient_id": patient[0], "consultant_institution": CONSULTANT,
            "department": DEPARTMENTS[kind], "question": QUESTIONS[kind], "records": patient[1]}
    cid = in_request(app, asker, lambda: services.create(asker, body, asked)).id
    moves: list[tuple[Identity, Callable[[datetime], Any]]] = []
    if final is ConsultStatus.declined:
        moves.append((host, lambda at: services.decline(host, cid, {"reason": "本院该专科本周会诊已满，请改约"}, at)))
    if final is ConsultStatus.cancelled:
        moves.append((asker, lambda at: services.cancel(asker, cid, {"reason": "患者病情好转，暂不需要"}, at)))
    if final is ConsultStatus.accepted:
        when = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=1, hours=hours % 7)
        slot = {"scheduled_at": when, "duration_minutes": 30, "consultants": [CONSULTANT_USER]}
        moves.append((host, lambda at: scheduling.accept(host, cid, slot, at)))
    if final in READ_STATES:
        moves.append((host, lambda at: queue.claim(host, cid, at)))
    if final in READ_STATES[1:]:
        moves.append((host, lambda at: opinions.give(host, cid, OPINION[kind], at)))
    if final in READ_STATES[2:]:
        moves.append((asker, lambda at: services.acknowledge(asker, cid, {"note": "已阅，遵嘱处理"}, at)))
    if final is ConsultStatus.closed:
        moves.append((asker, lambda at: services.close(asker, cid, {}, at)))
    for index, (actor, move) in enumerate(moves, start=1):
        at = min(asked + timedelta(minutes=20 * index), utcnow())
        in_request(app, actor, lambda move=move, at=at: move(at))


def _teaching(app: Flask, host: Identity, learners: list[Identity]) -> int:
    """A lecture held last week with its attendance and recording, one next week, and one cancelled."""
    now = utcnow()
    plans = (("高血压基层规范化管理", now - timedelta(days=7), True),
             ("胸痛中心与急性冠脉综合征识别", now + timedelta(days=5), False),
             ("糖尿病足早期筛查", now + timedelta(days=12), False))
    for index, (topic, starts, held) in enumerate(plans):
        body = {"topic": topic, "starts_at": starts, "ends_at": starts + timedelta(hours=1), "credits": 1.0,
                "invited_institutions": sorted(REQUESTERS), "materials": [
                    {"title": f"{topic}（课件）", "url": f"https://edu.linfen-hie.example/slides/{index + 1}"}]}
        made = starts - timedelta(days=3)
        sid = in_request(app, host, partial(teaching.create, host, body, made)).id
        for learner in learners:
            in_request(app, learner, partial(teaching.register, learner, sid, made + timedelta(hours=1)))
        if held:
            for early, learner in zip((2, 40), learners, strict=False):  # the second left 40 minutes early: no credit
                in_request(app, learner, partial(teaching.join, learner, sid, starts))
                in_request(app, learner, partial(teaching.leave, learner, sid, starts + timedelta(minutes=60 - early)))
            recording = {"recording_url": "https://edu.linfen-hie.example/recordings/hypertension-2026"}
            in_request(app, host, partial(teaching.update, host, sid, recording, starts + timedelta(hours=2)))
        if index == 2:
            in_request(app, host, partial(teaching.update, host, sid, {"cancelled": True}, now))
    return len(plans)


def add_demo_consultations(app: Flask, echo: Callable[[str], None]) -> None:
    """The consultation module's demo step: once, so a rerun adds nothing."""
    engines = app.extensions["hie.engines"]
    with Session(engines.platform, expire_on_commit=False) as session:
        made = session.scalar(select(func.count()).select_from(Consultation)) or 0
        if made:
            echo(f"demo consultations: already made ({made})")
            return
        institutions = {i.code: i for i in session.scalars(
            select(Institution).where(Institution.code.in_([*REQUESTERS, CONSULTANT])))}
        askers = {code: identity_of(session, user, "demo-consult") for code, user in REQUESTERS.items()}
        host = identity_of(session, CONSULTANT_USER, "demo-consult")
    patients = {code: _patients(app, institutions[code], len(PLAN)) for code in REQUESTERS}
    for number, plan in enumerate(PLAN):
        code = sorted(REQUESTERS)[number % 2]
        _play(app, askers[code], host, patients[code][number // 2], plan)
    sessions = _teaching(app, host, list(askers.values()))
    with Session(engines.platform) as session:
        states = dict(session.execute(select(Consultation.status, func.count()).group_by(Consultation.status)).all())
        held = session.scalar(select(func.count()).select_from(TeachingSession)) or 0
    echo(f"demo consultations: {sum(states.values())} from {', '.join(sorted(REQUESTERS))} to {CONSULTANT} "
         f"({', '.join(f'{n} {s.value}' for s, n in sorted(states.items()))}); {held} of {sessions} teaching "
         f"sessions; GET /api/v1/consultations?box=incoming and /api/v1/reading-queue?kind=imaging_read as "
         f"{CONSULTANT_USER}")
