"""Reading queues: the imaging and ECG reads a reading department has to do, urgent first, then the longest waiting;
one reader at a time holds a read by a claim that expires. A page costs a handful of index range scans, whatever the
queue's length (see page)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, NoReturn

from flask import current_app
from flask_smorest import abort
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from hie.consult import services
from hie.consult.attachments import usernames
from hie.consult.models import Attachment, Consultation, ConsultStatus, Kind, Urgency
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.cache import Cache
from hie.platform.config import ConfigError
from hie.platform.db import platform_session, utcnow
from hie.tenants.models import Institution

CLAIM_SETTING = "HIE_CONSULT_CLAIM_MINUTES"
DEFAULT_CLAIM_MINUTES = 30
MAX_CLAIM_MINUTES = 24 * 60
OPEN = (ConsultStatus.requested, ConsultStatus.accepted, ConsultStatus.in_session)
URGENCY_ORDER = (Urgency.urgent, Urgency.routine)
COUNT_KEY = "hie:consult:queue-length:{institution}:{kind}:{department}"
COUNT_TTL = 10  # seconds the queue's length shown in X-Pagination may lag behind


def claim_period(extra: dict[str, str]) -> timedelta:
    """How long a claim holds a read for its reader (HIE_CONSULT_CLAIM_MINUTES, 1 to 1440, default 30)."""
    raw = extra.get(CLAIM_SETTING) or str(DEFAULT_CLAIM_MINUTES)
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_CLAIM_MINUTES:
        raise ConfigError(f"{CLAIM_SETTING} must be a whole number of minutes from 1 to {MAX_CLAIM_MINUTES}, "
                          f"got {raw!r}")
    return timedelta(minutes=int(raw))


def live_claim(consultation: Consultation, now: datetime) -> bool:
    """Someone holds the read and their claim has not expired."""
    return consultation.claimed_by is not None and consultation.claim_expires_at is not None \
        and consultation.claim_expires_at > now


def _queue_filter(identity: Identity, kind: Kind, department: str | None) -> list[ColumnElement[bool]]:
    where = [Consultation.consultant_institution_id == identity.institution_id, Consultation.kind == kind]
    if department is not None:
        where.append(Consultation.department == department)
    return where


def _count(session: Session, where: list[ColumnElement[bool]]) -> int:
    return session.scalar(select(func.count()).select_from(Consultation).where(
        *where, Consultation.status.in_(OPEN))) or 0


def queue_length(session: Session, identity: Identity, kind: Kind, department: str | None) -> int:
    """How many open reads wait in the queue: cached COUNT_TTL seconds (with Redis), since counting a long queue
    costs more than reading a page of it; the page itself is always current."""
    asked = hashlib.sha256((department or "").encode()).hexdigest()[:16] if department is not None else "all"
    key = COUNT_KEY.format(institution=identity.institution_id, kind=kind.value, department=asked)
    cache: Cache = current_app.extensions["hie.cache"]
    return int(cache.get_or_load(key, lambda: _count(session, _queue_filter(identity, kind, department)),
                                 COUNT_TTL))


def page(identity: Identity, kind: Kind, department: str | None, offset: int, limit: int,
         now: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of the caller's institution's open reads of a kind, urgent first, then oldest first.

    Ordering by urgency, then created_at, over three states cannot be read off one index in order, and sorting the
    whole queue costs as much as the queue is long. So each (urgency, state) stream gives its first offset+limit
    keys in index order (ix_consultations_queue, or ix_consultations_queue_department with a department), urgent
    streams first, routine ones only when the urgent reads do not fill the page; they are merged here and the
    page's rows read by id. A first page costs three to six index range scans of `limit` entries, however long
    the queue."""
    now = now or utcnow()
    session = platform_session()
    where = _queue_filter(identity, kind, department)
    needed = offset + limit
    keys: list[tuple[int, datetime, str]] = []
    for rank, urgency in enumerate(URGENCY_ORDER):
        for status in OPEN:
            keys.extend((rank, created_at, consultation_id) for created_at, consultation_id in session.execute(
                select(Consultation.created_at, Consultation.id)
                .where(*where, Consultation.status == status, Consultation.urgency == urgency)
                .order_by(Consultation.created_at, Consultation.id).limit(needed)))
        if len(keys) >= needed:  # the more urgent reads fill the page: the rest all come after them
            break
    chosen = [key[2] for key in sorted(keys)[offset:needed]]
    rows = {row.id: row for row in session.scalars(select(Consultation).where(Consultation.id.in_(chosen)))}
    ordered = [rows[consultation_id] for consultation_id in chosen if consultation_id in rows]
    audit.record("search", resource_type=services.RESOURCE, purpose="treatment",
                 detail=f"reading queue kind={kind.value} department={department} results={len(ordered)}")
    for consultation in ordered:
        audit.record("read", resource_type=services.RESOURCE, resource_id=consultation.id,
                     patient=services.patient_ref(consultation), purpose="treatment")
    return entries(session, ordered, now), queue_length(session, identity, kind, department)


def entries(session: Session, rows: list[Consultation], now: datetime) -> list[dict[str, Any]]:
    """Queue entries: deadline and overdue flag, the live claim (an expired one shows as none), the files."""
    names = usernames({row.claimed_by for row in rows if live_claim(row, now) and row.claimed_by is not None})
    ids = [row.id for row in rows]
    files = dict(session.execute(select(Attachment.consultation_id, func.count()).where(
        Attachment.consultation_id.in_(ids)).group_by(Attachment.consultation_id)).all()) if ids else {}
    codes = dict(session.execute(select(Institution.id, Institution.code).where(
        Institution.id.in_({row.requester_institution_id for row in rows}))).all()) if rows else {}
    shown = []
    for row in rows:
        claimed = live_claim(row, now)
        shown.append({
            "id": row.id, "kind": row.kind.value, "urgency": row.urgency.value, "status": row.status.value,
            "department": row.department, "requester_institution": codes.get(row.requester_institution_id),
            "master_person_id": row.master_person_id, "question": row.question, "records": row.records,
            "attachments": files.get(row.id, 0), "created_at": row.created_at,
            "waiting_minutes": max(0, int((now - row.created_at).total_seconds() // 60)), "due_at": row.due_at,
            "overdue": row.due_at is not None and row.due_at < now,
            "claimed_by": names.get(row.claimed_by) if claimed and row.claimed_by is not None else None,
            "claim_expires_at": row.claim_expires_at if claimed else None})
    return shown


def _refuse(consultation: Consultation, action: str, status: int, outcome: str, message: str) -> NoReturn:
    audit.record("update", outcome, resource_type=services.RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), detail=f"{action} refused: {message}"[:500])
    abort(status, message=message)


def _holder(consultation: Consultation) -> str:
    name = usernames({consultation.claimed_by}).get(consultation.claimed_by) if consultation.claimed_by else None
    return name or f"user {consultation.claimed_by}"


def _readable(identity: Identity, consultation_id: str, action: str) -> Consultation:
    """The read locked, if it is an open read of the caller's institution's queue; 404 / 403 / 409 otherwise."""
    consultation = services.visible(identity, consultation_id, "update", lock=True)
    if identity.institution_id != consultation.consultant_institution_id:
        _refuse(consultation, action, 403, "denied", f"only the {services.CONSULTANT} institution may {action} a read")
    if consultation.kind not in services.READS:
        _refuse(consultation, action, 409, "failure",
                f"the consultation is a {consultation.kind.value}, not an imaging or ECG read")
    if consultation.status not in OPEN:
        _refuse(consultation, action, 409, "failure", f"the read is {consultation.status.value}; it can be "
                f"{action}ed only when it is {' or '.join(s.value for s in OPEN)}")
    return consultation


def claim(identity: Identity, consultation_id: str, now: datetime | None = None) -> Consultation:
    """Hold a read for HIE_CONSULT_CLAIM_MINUTES (renewing one's own claim); a live claim of another reader is 409
    naming them and until when, an expired one is taken over. A requested read is accepted and started on the way,
    through the ordinary steps (reads are not scheduled)."""
    now = now or utcnow()
    consultation = _readable(identity, consultation_id, "claim")
    if live_claim(consultation, now) and consultation.claimed_by != identity.user_id:
        until = consultation.claim_expires_at.isoformat() if consultation.claim_expires_at else ""
        _refuse(consultation, "claim", 409, "failure", f"the read is claimed by {_holder(consultation)} until "
                f"{until}")
    previous = consultation.claimed_by if consultation.claimed_by != identity.user_id else None
    consultation.claimed_by = identity.user_id
    consultation.claim_expires_at = now + claim_period(current_app.config["HIE"].extra)
    if consultation.consultant_user_id is None:
        consultation.consultant_user_id = identity.user_id
    if consultation.status is ConsultStatus.requested:
        consultation.answered_at = consultation.answered_at or now
        services.step(identity, consultation, ConsultStatus.accepted, now, "claimed for reading")
    if consultation.status is ConsultStatus.accepted:
        services.step(identity, consultation, ConsultStatus.in_session, now, "claimed for reading")
    consultation.updated_at = now
    took_over = f" (an expired claim of user {previous} taken over)" if previous is not None else ""
    audit.record("update", resource_type=services.RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), purpose="treatment",
                 detail=f"read claimed until {consultation.claim_expires_at.isoformat()}{took_over}")
    return consultation


def release(identity: Identity, consultation_id: str, now: datetime | None = None) -> Consultation:
    """Give a read back to the queue; only its live claim's holder may (the read keeps its state)."""
    now = now or utcnow()
    consultation = _readable(identity, consultation_id, "release")
    if not live_claim(consultation, now) or consultation.claimed_by != identity.user_id:
        held = f"it is claimed by {_holder(consultation)}" if live_claim(consultation, now) else "it is not claimed"
        _refuse(consultation, "release", 409, "failure", f"you hold no claim on this read; {held}")
    consultation.claimed_by = consultation.claim_expires_at = None
    consultation.updated_at = now
    audit.record("update", resource_type=services.RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), purpose="treatment", detail="read claim released")
    return consultation


def check_claim(identity: Identity, consultation: Consultation, now: datetime | None = None) -> None:
    """For the first opinion on a read: 409 (audited) unless the caller holds its live claim; other kinds, and
    reads past their first opinion (a new version is the opinion's own rules), pass."""
    if consultation.kind not in services.READS or consultation.status not in OPEN:
        return
    now = now or utcnow()
    if live_claim(consultation, now) and consultation.claimed_by == identity.user_id:
        return
    held = f"it is claimed by {_holder(consultation)}" if live_claim(consultation, now) else \
        "claim it first (POST /api/v1/reading-queue/<id>/claim)"
    _refuse(consultation, "opinion", 409, "failure", f"only the reader holding the claim may give the opinion on a "
                                                      f"read; {held}")


def clear_expired(session: Session, now: datetime) -> int:
    """Drop claims past their expiry (ix_consultations_claim_expiry); the reads return to the queue unclaimed."""
    result = session.execute(update(Consultation).where(Consultation.claim_expires_at <= now)
                             .values(claimed_by=None, claim_expires_at=None)
                             .execution_options(synchronize_session=False))
    return result.rowcount or 0  # type: ignore[attr-defined]
