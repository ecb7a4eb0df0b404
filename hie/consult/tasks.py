"""Consultation jobs: reads past their turnaround deadline flagged once each (an outbox event for the reading
institution), and expired claims cleared so the reads show unclaimed in the queue."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Flask
from sqlalchemy import select, update

from hie.consult import queue, services
from hie.consult.models import Consultation
from hie.platform.db import registry, session_scope, utcnow
from hie.platform.jobs.services import PLATFORM, emit

log = logging.getLogger(__name__)

BATCH = 500  # reads flagged per tick at most; the next tick takes the rest
OVERDUE_TOPIC = "consultation.read_overdue"


def flag_overdue(now: datetime | None = None) -> int:
    """Flag each open read past its deadline once (overdue_flagged_at), announcing it in the same transaction; a
    rerun, or a second worker at the same time, flags nothing twice (conditional UPDATE)."""
    now = now or utcnow()
    flagged = 0
    with session_scope(registry().platform) as session:
        late = session.execute(
            select(Consultation.id, Consultation.consultant_institution_id, Consultation.urgency, Consultation.due_at)
            .where(Consultation.status.in_(queue.OPEN), Consultation.due_at < now,
                   Consultation.kind.in_(services.READS), Consultation.overdue_flagged_at.is_(None))
            .order_by(Consultation.due_at, Consultation.id).limit(BATCH)).all()
        for consultation_id, institution_id, urgency, due_at in late:
            taken = session.execute(update(Consultation).where(
                Consultation.id == consultation_id, Consultation.overdue_flagged_at.is_(None))
                .values(overdue_flagged_at=now).execution_options(synchronize_session=False))
            if not taken.rowcount:  # type: ignore[attr-defined]
                continue
            emit(session, PLATFORM, OVERDUE_TOPIC, {
                "consultation_id": consultation_id, "institution_id": institution_id, "urgency": urgency.value,
                "due_at": due_at.isoformat()})
            flagged += 1
    if flagged:
        log.warning("reads past their turnaround deadline flagged: %s", flagged)
    return flagged


def clear_claims(now: datetime | None = None) -> int:
    """Clear every claim past its expiry."""
    with session_scope(registry().platform) as session:
        cleared = queue.clear_expired(session, now or utcnow())
    if cleared:
        log.info("expired read claims cleared: %s", cleared)
    return cleared


def periodic(app: Flask, now: datetime | None = None) -> tuple[int, int]:
    """The worker's tick: (reads flagged overdue, claims cleared)."""
    with app.app_context():
        now = now or utcnow()
        return flag_overdue(now), clear_claims(now)
