"""Sessions: when a consultation sits, who is invited, its video room, and the rule that no consultant is booked in
two sessions at once.

Locks: accept locks the consultation, then the consultants' user rows (ascending id); reschedule locks the user rows
before the consultation. Every booking of a consultant holds that consultant's user row till it commits, so two
accepts or reschedules for one consultant run one after the other; the second then reads the bookings as committed
(on a connection of its own, not through its transaction's older snapshot) and sees the first. No locking read
of other consultations' rows is taken, so bookings of different consultants never wait for each other."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask_smorest import abort
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from hie.consult import services
from hie.consult.models import Consultation, ConsultationStep, ConsultStatus, Participant, ParticipantRole
from hie.empi.index import survivor
from hie.empi.models import PersonRecord
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User, UserRole
from hie.platform.db import platform_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.tenants.models import Institution, Tenant

DEFAULT_MINUTES = 30
MAX_MINUTES = 480


def check_settings(app: Flask, _api: Any) -> None:
    """A malformed HIE_CONSULT_GRACE_DAYS or HIE_VIDEO_BASE_URL stops the app at start-up, named."""
    services.grace_period(app.config["HIE"].extra)
    services.video_base_url(app.config["HIE"].extra)


def new_room() -> str:
    """An unguessable room name (128 random bits): knowing one session's room tells nothing of another's."""
    return f"hie-{secrets.token_urlsafe(16)}"


def consultants_of(session: Session, consultation: Consultation, usernames: list[str] | None) -> list[User]:
    """The consultants asked for (each of the consulting institution), else the one the request named, else none."""
    institution = session.get_one(Institution, consultation.consultant_institution_id)
    if usernames:
        users: dict[int, User] = {}
        for index, username in enumerate(usernames):
            user = services.consultant_user(session, institution, username, f"consultants[{index}]")
            users.setdefault(user.id, user)
        return list(users.values())
    if consultation.consultant_user_id is not None:
        named = session.get(User, consultation.consultant_user_id)
        if named is not None and named.active:
            return [named]
    return []


def resident_accounts(session: Session, consultation: Consultation) -> list[User]:
    """Active resident accounts standing for any of the patient's records the EMPI links to the same person."""
    person = survivor(session, consultation.master_person_id)
    records = {(consultation.requester_tenant_code, consultation.patient_id)}
    records |= {(tenant, pid) for tenant, pid in session.execute(
        select(PersonRecord.tenant_code, PersonRecord.patient_id).where(PersonRecord.person_id == person)) if pid}
    rows = session.execute(
        select(User, Tenant.code).join(Institution, Institution.id == User.institution_id)
        .join(Tenant, Tenant.id == Institution.tenant_id).join(UserRole, UserRole.user_id == User.id)
        .where(UserRole.role == Role.resident, User.active.is_(True),
               User.patient_id.in_({pid for _tenant, pid in records})).order_by(User.id))
    return [user for user, tenant in rows.unique() if (tenant, user.patient_id) in records]


def _lock_users(session: Session, user_ids: Iterable[int]) -> None:
    """Lock the users' rows, lowest id first, so bookings for one consultant run one at a time."""
    wanted = sorted(set(user_ids))
    if wanted:
        session.scalars(select(User.id).where(User.id.in_(wanted)).order_by(User.id).with_for_update()).all()


def _consultant_ids(session: Session, consultation_id: str) -> set[int]:
    """The session's consultants as committed right now."""
    return {row[0] for row in _committed(session, select(Participant.user_id).where(
        Participant.consultation_id == consultation_id, Participant.role == ParticipantRole.consultant))}


def _window(body: dict[str, Any], now: datetime, minutes: int) -> tuple[datetime, datetime]:
    start = body["scheduled_at"].astimezone(UTC)
    if start < now:
        services.invalid("scheduled_at", "must not be in the past")
    return start, start + timedelta(minutes=minutes)


def _committed(session: Session, query: Select[Any]) -> list[Any]:
    """Rows as committed right now, read on a connection of its own (READ COMMITTED on MySQL): this transaction's
    snapshot may predate the booking that held a consultant's lock before it. A plain read takes no gap locks, so
    concurrent bookings of other consultants never deadlock with it."""
    engine = session.get_bind()
    with engine.connect() as own:
        conn = own.execution_options(isolation_level="READ COMMITTED") if engine.dialect.name == "mysql" else own
        rows = list(conn.execute(query).all())
        conn.rollback()
    return rows


def _bookings(session: Session, user_ids: list[int], exclude: str, start: datetime,
              end: datetime) -> list[tuple[int, datetime, int | None]]:
    """The users' booked sessions, other than this one, that may overlap [start, end)."""
    return [(user_id, at, minutes) for user_id, at, minutes in _committed(session, (
        select(Participant.user_id, Consultation.scheduled_at, Consultation.duration_minutes)
        .join(Consultation, Consultation.id == Participant.consultation_id)
        .where(Participant.user_id.in_(user_ids), Participant.role == ParticipantRole.consultant,
               Consultation.status.in_(services.BOOKED), Consultation.id != exclude,
               Consultation.scheduled_at < end, Consultation.scheduled_at > start - timedelta(minutes=MAX_MINUTES))
        .order_by(Participant.user_id, Consultation.scheduled_at)))]


def _refuse_overlaps(session: Session, consultation: Consultation, consultants: list[User], start: datetime,
                     end: datetime, action: str) -> None:
    """409 naming each consultant already sitting in a booked session that overlaps [start, end) (audited)."""
    _lock_users(session, (user.id for user in consultants))
    rows = _bookings(session, [user.id for user in consultants], consultation.id, start, end)
    names = {user.id: user.username for user in consultants}
    busy = [f"{names[user_id]} ({at:%Y-%m-%d %H:%M}-{at + timedelta(minutes=minutes or 0):%H:%M} UTC)"
            for user_id, at, minutes in rows if at + timedelta(minutes=minutes or 0) > start]
    if busy:
        audit.record("update", "failure", resource_type=services.RESOURCE, resource_id=consultation.id,
                     patient=services.patient_ref(consultation), detail=f"{action} refused: double booking")
        abort(409, message=f"Already booked in an overlapping session: {', '.join(busy)}. Nothing was changed.")


def _invite(session: Session, consultation: Consultation, users: Iterable[User], role: ParticipantRole,
            now: datetime) -> None:
    for user in users:
        if session.get(Participant, (consultation.id, user.id)) is None:
            session.add(Participant(consultation_id=consultation.id, user_id=user.id, role=role, invited_at=now))


def accept(identity: Identity, consultation_id: str, body: dict[str, Any], now: datetime | None = None) -> Consultation:
    """The consulting side books the session: its time, its consultants (never double-booked), the requesting
    doctor, optionally the patient's resident account, and a video room."""
    now = now or utcnow()
    session = platform_session()
    consultation = services.begin_move(identity, consultation_id, "accept")
    consultants = consultants_of(session, consultation, body.get("consultants"))
    if not consultants:
        if identity.institution_id == consultation.consultant_institution_id and \
                session.get_one(User, identity.user_id).roles & services.CONSULTANT_ROLES:
            consultants = [session.get_one(User, identity.user_id)]
        else:
            services.invalid("consultants", "must name at least one clinician or specialist of your institution")
    residents = resident_accounts(session, consultation) if body.get("invite_patient") else []
    if body.get("invite_patient") and not residents:
        services.invalid("invite_patient", "the patient has no resident account to invite")
    start, end = _window(body, now, body["duration_minutes"])
    _refuse_overlaps(session, consultation, consultants, start, end, "accept")
    consultation.scheduled_at, consultation.duration_minutes = start, body["duration_minutes"]
    consultation.video_room, consultation.answered_at = new_room(), now
    _invite(session, consultation, consultants, ParticipantRole.consultant, now)
    requester = session.get(User, consultation.requester_user_id)
    _invite(session, consultation, [requester] if requester is not None else [], ParticipantRole.requester, now)
    _invite(session, consultation, residents, ParticipantRole.patient, now)
    services.step(identity, consultation, ConsultStatus.accepted, now, body.get("note"))
    return consultation


def reschedule(identity: Identity, consultation_id: str, body: dict[str, Any],
               now: datetime | None = None) -> Consultation:
    """The consulting side moves an accepted session (and may change its consultants); same double-booking rule."""
    now = now or utcnow()
    session = platform_session()
    peek = services.visible(identity, consultation_id, "update")
    if identity.institution_id != peek.consultant_institution_id or peek.status is not ConsultStatus.accepted:
        services.begin_move(identity, consultation_id, "reschedule")  # the other side's 403, a wrong state's 409
    asked = consultants_of(session, peek, body["consultants"]) if body.get("consultants") else []
    held = _consultant_ids(session, peek.id) | {user.id for user in asked}
    _lock_users(session, held)
    consultation = services.begin_move(identity, consultation_id, "reschedule")
    current = _consultant_ids(session, consultation.id)
    if not current <= held:
        abort(409, message="The session's consultants changed meanwhile; read it again and retry.")
    consultants = asked or list(session.scalars(select(User).where(User.id.in_(current)).order_by(User.id)))
    minutes = body.get("duration_minutes") or consultation.duration_minutes or DEFAULT_MINUTES
    start, end = _window(body, now, minutes)
    _refuse_overlaps(session, consultation, consultants, start, end, "reschedule")
    if asked:
        keep = {user.id for user in asked}
        session.execute(delete(Participant).where(Participant.consultation_id == consultation.id,
                                                  Participant.role == ParticipantRole.consultant,
                                                  Participant.user_id.not_in(keep)))
        _invite(session, consultation, asked, ParticipantRole.consultant, now)
    was = consultation.scheduled_at
    consultation.scheduled_at, consultation.duration_minutes, consultation.updated_at = start, minutes, now
    note = f"rescheduled from {was:%Y-%m-%d %H:%M} to {start:%Y-%m-%d %H:%M} UTC ({minutes} min)" if was else \
        f"scheduled at {start:%Y-%m-%d %H:%M} UTC ({minutes} min)"
    session.add(ConsultationStep(
        consultation_id=consultation.id, from_status=ConsultStatus.accepted, to_status=ConsultStatus.accepted,
        user_id=identity.user_id, username=identity.username, institution_id=identity.institution_id, at=now,
        note=f"{note}; {body['note']}" if body.get("note") else note))
    emit(session, PLATFORM, "consultation.rescheduled",
         {"consultation_id": consultation.id, "status": consultation.status.value,
          "institution_id": identity.institution_id})
    audit.record("update", resource_type=services.RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), purpose="treatment", detail=f"consultation {note}")
    return consultation
