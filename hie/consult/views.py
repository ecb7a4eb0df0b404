"""How a consultation is shown: institutions by code, people by username, its schedule and video room, its steps
and participants."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.consult.models import Consultation, ConsultationStep, Participant
from hie.consult.services import video_base_url, video_url
from hie.platform.auth.models import User
from hie.tenants.models import Institution

NO_VIDEO = "video not configured"


def institution_codes(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """Institution codes by id, in one query."""
    wanted = set(ids)
    if not wanted:
        return {}
    return dict(session.execute(select(Institution.id, Institution.code).where(Institution.id.in_(wanted))).all())


def usernames(session: Session, ids: Iterable[int | None]) -> dict[int, str]:
    """Usernames by id, in one query."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(session.execute(select(User.id, User.username).where(User.id.in_(wanted))).all())


def schedule_of(consultation: Consultation) -> dict[str, Any] | None:
    """When the session sits, once accepted."""
    if consultation.scheduled_at is None:
        return None
    minutes = consultation.duration_minutes or 0
    return {"scheduled_at": consultation.scheduled_at, "duration_minutes": minutes,
            "ends_at": consultation.scheduled_at + timedelta(minutes=minutes)}


def video_note(consultation: Consultation, extra: dict[str, str]) -> str | None:
    """Why a scheduled session shows no link: the platform has no video service configured."""
    if consultation.video_room is not None and video_base_url(extra) is None:
        return NO_VIDEO
    return None


def view(consultation: Consultation, codes: dict[int, str], names: dict[int, str],
         extra: dict[str, str]) -> dict[str, Any]:
    """The consultation as the REST API shows it, without steps and participants."""
    return {
        "id": consultation.id, "kind": consultation.kind.value, "urgency": consultation.urgency.value,
        "status": consultation.status.value, "patient_id": consultation.patient_id,
        "patient_tenant_code": consultation.requester_tenant_code,
        "master_person_id": consultation.master_person_id,
        "requesting_institution": codes[consultation.requester_institution_id],
        "requester": names.get(consultation.requester_user_id),
        "consultant_institution": codes[consultation.consultant_institution_id],
        "department": consultation.department, "consultant": names.get(consultation.consultant_user_id or 0),
        "question": consultation.question, "records": consultation.records,
        "schedule": schedule_of(consultation), "video_url": video_url(consultation),
        "video_note": video_note(consultation, extra), "due_at": consultation.due_at,
        "created_at": consultation.created_at, "updated_at": consultation.updated_at,
        "answered_at": consultation.answered_at, "opinion_at": consultation.opinion_at,
        "closed_at": consultation.closed_at,
    }


def steps_of(session: Session, consultation: Consultation, codes: dict[int, str]) -> list[dict[str, Any]]:
    """Every move of the consultation, oldest first."""
    steps = session.scalars(select(ConsultationStep).where(ConsultationStep.consultation_id == consultation.id)
                            .order_by(ConsultationStep.at, ConsultationStep.id)).all()
    codes = {**codes, **institution_codes(session, {s.institution_id for s in steps} - codes.keys())}
    return [{"from_status": s.from_status.value if s.from_status else None, "to_status": s.to_status.value,
             "username": s.username, "institution": codes[s.institution_id], "at": s.at, "note": s.note}
            for s in steps]


def participants_of(session: Session, consultation: Consultation) -> list[dict[str, Any]]:
    """Who is invited to the session: consultants, the requesting doctor, the patient's resident account."""
    rows = session.execute(select(User.username, Participant.role, Institution.code, Participant.invited_at)
                           .join(User, User.id == Participant.user_id)
                           .join(Institution, Institution.id == User.institution_id)
                           .where(Participant.consultation_id == consultation.id)
                           .order_by(Participant.role, User.username)).all()
    return [{"username": username, "role": role.value, "institution": code, "invited_at": at}
            for username, role, code, at in rows]


def full_view(session: Session, consultation: Consultation, extra: dict[str, str]) -> dict[str, Any]:
    """One consultation with its steps and participants."""
    codes = institution_codes(session, (consultation.requester_institution_id,
                                        consultation.consultant_institution_id))
    names = usernames(session, (consultation.requester_user_id, consultation.consultant_user_id))
    return {**view(consultation, codes, names, extra), "steps": steps_of(session, consultation, codes),
            "participants": participants_of(session, consultation)}


def list_view(session: Session, consultations: list[Consultation], extra: dict[str, str]) -> list[dict[str, Any]]:
    """A page of consultations, without their steps and participants."""
    codes = institution_codes(session, {i for c in consultations
                                        for i in (c.requester_institution_id, c.consultant_institution_id)})
    names = usernames(session, {i for c in consultations for i in (c.requester_user_id, c.consultant_user_id)})
    return [view(consultation, codes, names, extra) for consultation in consultations]
