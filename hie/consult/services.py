"""Consultation use cases: who may ask whom, see and move a consultation, the care relationship it opens and ends,
and the audit of each step."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

from flask import current_app
from flask_smorest import abort
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from hie.consult.models import Consultation, ConsultationStep, ConsultStatus, Kind, Participant, Urgency
from hie.empi import services as empi
from hie.exchange import store
from hie.patients.models import Patient
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.config import ConfigError
from hie.platform.db import new_id, platform_session, shard_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.tenants.models import Institution, InstitutionLevel

RESOURCE = "Consultation"
GRACE_SETTING = "HIE_CONSULT_GRACE_DAYS"
VIDEO_SETTING = "HIE_VIDEO_BASE_URL"
DEFAULT_GRACE_DAYS = 7
READS = (Kind.imaging_read, Kind.ecg_read)
TURNAROUND = {Urgency.urgent: timedelta(minutes=30), Urgency.routine: timedelta(hours=24)}
REQUESTER, CONSULTANT = "requesting", "consulting"
# action -> (which side moves it, the states it moves from, the state it moves to)
TRANSITIONS: dict[str, tuple[str, tuple[ConsultStatus, ...], ConsultStatus]] = {
    "accept": (CONSULTANT, (ConsultStatus.requested,), ConsultStatus.accepted),
    "decline": (CONSULTANT, (ConsultStatus.requested,), ConsultStatus.declined),
    "start": (CONSULTANT, (ConsultStatus.accepted,), ConsultStatus.in_session),
    "opinion": (CONSULTANT, (ConsultStatus.in_session, ConsultStatus.opinion_given), ConsultStatus.opinion_given),
    "acknowledge": (REQUESTER, (ConsultStatus.opinion_given,), ConsultStatus.acknowledged),
    "close": (REQUESTER, (ConsultStatus.acknowledged,), ConsultStatus.closed),
    "cancel": (REQUESTER, (ConsultStatus.requested, ConsultStatus.accepted), ConsultStatus.cancelled),
    "reschedule": (CONSULTANT, (ConsultStatus.accepted,), ConsultStatus.accepted),
}
BOOKED = (ConsultStatus.accepted, ConsultStatus.in_session)  # a consultant sitting in it is busy
ENDED = (ConsultStatus.declined, ConsultStatus.closed, ConsultStatus.cancelled)
# Roles that may be asked for an opinion or sit in a session as a consultant.
CONSULTANT_ROLES = frozenset({Role.specialist, Role.clinician, Role.family_doctor})


def grace_period(extra: dict[str, str]) -> timedelta:
    """How long the consulting institution keeps reading after the consultation ends (HIE_CONSULT_GRACE_DAYS)."""
    raw = extra.get(GRACE_SETTING) or str(DEFAULT_GRACE_DAYS)
    if not raw.isascii() or not raw.isdigit() or int(raw) > 365:
        raise ConfigError(f"{GRACE_SETTING} must be a whole number of days from 0 to 365, got {raw!r}")
    return timedelta(days=int(raw))


def video_base_url(extra: dict[str, str]) -> str | None:
    """The self-hosted video service rooms are opened on (HIE_VIDEO_BASE_URL), ending in "/"; None when unset."""
    raw = (extra.get(VIDEO_SETTING) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    local = parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not (parts.scheme == "https" or local) or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password or not raw.isascii() or any(c.isspace() for c in raw):
        raise ConfigError(f"{VIDEO_SETTING} must be an https:// URL with a host and no query, fragment or "
                          f"credentials (http:// only for localhost), got {raw!r}")
    return raw if raw.endswith("/") else raw + "/"


def video_url(consultation: Consultation) -> str | None:
    """The session's room on the video service while it is booked; None without a room or a configured service."""
    base = video_base_url(current_app.config["HIE"].extra)
    if base is None or consultation.video_room is None or consultation.status not in BOOKED:
        return None
    return base + consultation.video_room


def invalid(field: str, message: str) -> NoReturn:
    """422 naming the field, as the schemas' own refusals do."""
    abort(422, message=f"{field} {message}.", errors={"json": {field: [message]}})


def patient_ref(consultation: Consultation) -> str:
    """How the audit names the consultation's patient: the requester's record."""
    return audit.patient_ref(consultation.requester_tenant_code, consultation.patient_id)


def source_ref(consultation: Consultation) -> str:
    """How a care relationship names the consultation that opened it."""
    return f"consultation/{consultation.id}"


def own_patient(identity: Identity, patient_id: str, field: str = "patient_id") -> str:
    """The master person of a patient record of the caller's own institution, else 422 naming the field (audited)."""
    patient = shard_session(identity.tenant_code).get(Patient, patient_id) if len(patient_id) <= 36 else None
    person = None
    if patient is not None and patient.institution_id == identity.institution_id:
        person = empi.person_of_patient(platform_session(), identity.tenant_code, patient.id)
    if person is None:
        audit.record("create", "not_found" if patient is None else "denied", resource_type="Patient",
                     resource_id=patient_id[:80], patient=audit.patient_ref(identity.tenant_code, patient_id)[:80],
                     detail=f"consultation {field}")
        invalid(field, "is not an EMPI-linked patient record of your institution")
    return person  # type: ignore[return-value]


def step(identity: Identity, consultation: Consultation, target: ConsultStatus, now: datetime,
         note: str | None) -> None:
    """Record a move as a row, an audit event naming the patient, and an outbox event for the other side."""
    previous = consultation.status if consultation.status else None
    platform_session().add(ConsultationStep(
        consultation_id=consultation.id, from_status=previous, to_status=target, user_id=identity.user_id,
        username=identity.username, institution_id=identity.institution_id, at=now, note=note))
    consultation.status, consultation.updated_at = target, now
    emit(platform_session(), PLATFORM, f"consultation.{target.value}",
         {"consultation_id": consultation.id, "status": target.value, "institution_id": identity.institution_id})
    audit.record("create" if previous is None else "update", resource_type=RESOURCE, resource_id=consultation.id,
                 patient=patient_ref(consultation), purpose="treatment",
                 detail=f"consultation {previous.value if previous else 'new'} -> {target.value}")


def consultant_user(session: Session, institution: Institution, username: str, field: str) -> User:
    """An active clinician or specialist of the consulting institution, else 422 naming the field."""
    user = session.scalar(select(User).where(User.username == username)) if len(username) <= 64 else None
    if user is None or not user.active or user.institution_id != institution.id \
            or not user.roles & CONSULTANT_ROLES:
        invalid(field, f"{username!r} is not an active clinician or specialist of {institution.code}")
    return user


def _check_records(identity: Identity, records: list[str], person_id: str) -> None:
    """Each record sent along must be one of this person's records the caller may see (refusals audited)."""
    bad = store.first_refused_record(identity, records, person_id, "consultation records")
    if bad is not None:
        invalid(f"records[{bad}]", "is not a record of this patient that you may see")


def create(identity: Identity, body: dict[str, Any], now: datetime | None = None) -> Consultation:
    """Ask another institution about a patient of the caller's own; opens a care relationship for it."""
    now = now or utcnow()
    session = platform_session()
    person = own_patient(identity, body["patient_id"])
    consultant = session.scalar(select(Institution).where(Institution.code == body["consultant_institution"]))
    if consultant is None or not consultant.active or consultant.id == identity.institution_id \
            or consultant.level is InstitutionLevel.administration:
        invalid("consultant_institution", f"{body['consultant_institution']!r} is not another active institution "
                "that gives consultations")
    consultant_user_id = body.get("consultant_user_id")
    if body.get("consultant"):
        consultant_user_id = consultant_user(session, consultant, body["consultant"], "consultant").id
    _check_records(identity, list(body.get("records") or []), person)
    consultation = Consultation(
        id=new_id(), kind=body["kind"], urgency=body["urgency"], requester_institution_id=identity.institution_id,
        requester_user_id=identity.user_id, requester_tenant_code=identity.tenant_code,
        patient_id=body["patient_id"], master_person_id=person, consultant_institution_id=consultant.id,
        department=body["department"], consultant_user_id=consultant_user_id, question=body["question"],
        records=list(body.get("records") or []), created_at=now, updated_at=now,
        due_at=now + TURNAROUND[body["urgency"]] if body["kind"] in READS else None)
    session.add(consultation)
    step(identity, consultation, ConsultStatus.requested, now, None)
    session.flush()
    care.grant(session, consultant.id, person, care.CareKind.consultation, source_ref=source_ref(consultation))
    return consultation


def involved(identity: Identity, consultation: Consultation) -> bool:
    """The caller's institution asks or answers it, with a clinical role."""
    clinical = access.Permission.patient_read in access.permissions_of(identity)
    return clinical and identity.institution_id in (consultation.requester_institution_id,
                                                    consultation.consultant_institution_id)


def participates(identity: Identity, consultation: Consultation) -> bool:
    """The caller was invited to the consultation's session (a resident invited as the patient, too)."""
    return platform_session().get(Participant, (consultation.id, identity.user_id)) is not None


def visible(identity: Identity, consultation_id: str, action: str = "read", lock: bool = False) -> Consultation:
    """The consultation if the caller's institution is involved (or, to read it, the caller was invited to its
    session); otherwise 404, audited."""
    session = platform_session()
    consultation = None
    if len(consultation_id) <= 36:
        query = select(Consultation).where(Consultation.id == consultation_id)
        consultation = session.scalar(query.with_for_update() if lock else query)
    if consultation is None or not (involved(identity, consultation)
                                    or (action == "read" and participates(identity, consultation))):
        audit.record(action, "denied" if consultation is not None else "not_found", resource_type=RESOURCE,
                     resource_id=consultation_id[:80], patient=patient_ref(consultation) if consultation else None)
        abort(404, message="No such consultation.")
    return consultation


def get_visible(identity: Identity, consultation_id: str) -> Consultation:
    """A consultation the caller may see, its reading audited; 404 for any other id."""
    consultation = visible(identity, consultation_id)
    audit.record("read", resource_type=RESOURCE, resource_id=consultation.id, patient=patient_ref(consultation),
                 purpose="treatment")
    return consultation


def begin_move(identity: Identity, consultation_id: str, action: str) -> Consultation:
    """The consultation locked for a move: 404 if not visible, 403 for the other side's move, 409 from a wrong
    state (naming it)."""
    consultation = visible(identity, consultation_id, "update", lock=True)
    side, sources, _target = TRANSITIONS[action]
    mover = consultation.consultant_institution_id if side == CONSULTANT else consultation.requester_institution_id
    if identity.institution_id != mover:
        audit.record("update", "denied", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=patient_ref(consultation), detail=f"{action}: only the {side} institution may")
        abort(403, message=f"Only the {side} institution may {action} this consultation.")
    if consultation.status not in sources:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=patient_ref(consultation),
                     detail=f"{action} refused: consultation is {consultation.status.value}")
        abort(409, message=f"The consultation is {consultation.status.value}; {action} is possible only when it "
                           f"is {' or '.join(s.value for s in sources)}.")
    return consultation


def end_care(consultation: Consultation, when: datetime) -> None:
    """End the relationship the consultation opened, at once or at the end of the grace period."""
    session = platform_session()
    rows = session.scalars(select(care.CareRelationship).where(
        care.CareRelationship.source_ref == source_ref(consultation),
        or_(care.CareRelationship.ends_at.is_(None), care.CareRelationship.ends_at > when)))
    for relationship in rows.all():
        care.end(session, relationship, when)


def finish(identity: Identity, consultation: Consultation, target: ConsultStatus, now: datetime,
           note: str | None) -> None:
    """A final move: the relationship ends at once (declined, cancelled) or after the grace period (closed)."""
    step(identity, consultation, target, now, note)
    if target is ConsultStatus.closed:
        consultation.closed_at = now
        end_care(consultation, now + grace_period(current_app.config["HIE"].extra))
    else:
        end_care(consultation, now)


def decline(identity: Identity, consultation_id: str, body: dict[str, Any],
            now: datetime | None = None) -> Consultation:
    """The consulting side refuses, saying why; its care relationship ends at once."""
    now = now or utcnow()
    consultation = begin_move(identity, consultation_id, "decline")
    consultation.answered_at = now
    finish(identity, consultation, ConsultStatus.declined, now, body["reason"].strip())
    return consultation


def start(identity: Identity, consultation_id: str, body: dict[str, Any], now: datetime | None = None) -> Consultation:
    """The session begins in its video room; nothing starts without a video service configured."""
    now = now or utcnow()
    consultation = begin_move(identity, consultation_id, "start")
    if video_url(consultation) is None:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=patient_ref(consultation), detail="start refused: video not configured")
        abort(409, message="Video is not configured (HIE_VIDEO_BASE_URL): no session starts without its video "
                           "room. The consultation stays accepted.")
    step(identity, consultation, ConsultStatus.in_session, now, body.get("note"))
    return consultation


def acknowledge(identity: Identity, consultation_id: str, body: dict[str, Any],
                now: datetime | None = None) -> Consultation:
    """The requesting side confirms it has read the opinion."""
    now = now or utcnow()
    consultation = begin_move(identity, consultation_id, "acknowledge")
    step(identity, consultation, ConsultStatus.acknowledged, now, body.get("note"))
    return consultation


def close(identity: Identity, consultation_id: str, body: dict[str, Any], now: datetime | None = None) -> Consultation:
    """The requesting side closes it; the consulting side keeps reading for the grace period."""
    now = now or utcnow()
    consultation = begin_move(identity, consultation_id, "close")
    finish(identity, consultation, ConsultStatus.closed, now, body.get("note"))
    return consultation


def cancel(identity: Identity, consultation_id: str, body: dict[str, Any],
           now: datetime | None = None) -> Consultation:
    """The requesting side withdraws before the session; the care relationship ends at once."""
    now = now or utcnow()
    consultation = begin_move(identity, consultation_id, "cancel")
    finish(identity, consultation, ConsultStatus.cancelled, now, body.get("reason"))
    return consultation


def list_query(identity: Identity, filters: dict[str, Any]) -> Select[tuple[Consultation]]:
    """The caller's sessions (participant=me), or the institution's incoming or outgoing box, filtered."""
    if filters.get("participant") == "me":
        query = select(Consultation).join(Participant, Participant.consultation_id == Consultation.id).where(
            Participant.user_id == identity.user_id)
    else:
        column = Consultation.consultant_institution_id if filters.get("box", "incoming") == "incoming" \
            else Consultation.requester_institution_id
        query = select(Consultation).where(column == identity.institution_id)
    for name in ("status", "kind", "urgency"):
        if filters.get(name) is not None:
            query = query.where(getattr(Consultation, name) == filters[name])
    return query


def search(identity: Identity, filters: dict[str, Any], offset: int, limit: int) -> tuple[list[Consultation], int]:
    """One page of a box or of the caller's sessions, newest first; each consultation shown is audited."""
    session = platform_session()
    query = list_query(identity, filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(Consultation.created_at.desc(), Consultation.id.desc())
                                .offset(offset).limit(limit)))
    asked = ",".join(f"{k}={v}" for k, v in sorted(filters.items()))
    audit.record("search", resource_type=RESOURCE, purpose="treatment", detail=f"{asked} results={len(rows)}")
    for consultation in rows:
        audit.record("read", resource_type=RESOURCE, resource_id=consultation.id, patient=patient_ref(consultation),
                     purpose="treatment")
    return rows, total


def unanswered(identity: Identity) -> dict[str, int]:
    """Incoming consultations still waiting for an answer, and how many of them are urgent."""
    base = select(func.count()).select_from(Consultation).where(
        Consultation.consultant_institution_id == identity.institution_id,
        Consultation.status == ConsultStatus.requested)
    session = platform_session()
    return {"unanswered": session.scalar(base) or 0,
            "urgent": session.scalar(base.where(Consultation.urgency == Urgency.urgent)) or 0}


def overdue_reads(session: Session, now: datetime | None = None) -> list[Consultation]:
    """Reads still waiting for an opinion past their turnaround deadline, most overdue first."""
    query = select(Consultation).where(Consultation.kind.in_(READS), Consultation.due_at < (now or utcnow()),
                                       Consultation.status.not_in([*ENDED, ConsultStatus.opinion_given,
                                                                   ConsultStatus.acknowledged]))
    return list(session.scalars(query.order_by(Consultation.due_at, Consultation.id)))
