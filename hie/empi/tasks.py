"""Whole-index jobs: retrain the weights and re-run matching over every record, reporting progress."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import current_app
from rq import get_current_job
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.empi import services
from hie.empi.index import normalized_of
from hie.empi.matching import Outcome, cluster
from hie.empi.models import MatchModel, PersonRecord
from hie.platform.db import registry, session_scope, utcnow
from hie.tenants.models import Institution, Tenant

log = logging.getLogger(__name__)

BATCH = 500
Progress = Callable[[int, int], None]


def _job_progress(done: int, total: int) -> None:
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = {"done": done, "total": total}
        job.save_meta()


def train(session: Session) -> int:
    """Estimate Fellegi-Sunter weights by EM over the whole index and store them as a new version."""
    ring = current_app.extensions["hie.keyring"]
    records = [normalized_of(ring, r) for r in session.scalars(select(PersonRecord).order_by(PersonRecord.id))]
    model = cluster(records).model
    version = (session.scalar(select(func.max(MatchModel.version))) or 0) + 1
    session.add(MatchModel(version=version, weights=model.to_dict(), trained_on=len(records), created_at=utcnow()))
    session.flush()
    services.forget_cached_model()
    return version


def _region_of(session: Session, institution_id: int) -> str | None:
    return session.scalar(select(Tenant.region_code).join(Institution, Institution.tenant_id == Tenant.id)
                          .where(Institution.id == institution_id))


def _rematch(session: Session, record: PersonRecord, counts: dict[str, int]) -> None:
    ring, cache = current_app.extensions["hie.keyring"], current_app.extensions["hie.cache"]
    normalized = normalized_of(ring, record)
    hashes = services.key_hashes(ring, normalized)
    services.store_keys(session, record.id, hashes)
    thresholds = services.thresholds_for(session, _region_of(session, record.institution_id))
    outcome, fresh = services.rematch(session, ring, cache, record, normalized, hashes, thresholds,
                                      whole_person=True)
    if outcome is Outcome.AUTO_LINK:
        counts["linked"] += 1
    elif outcome is Outcome.REVIEW and fresh:
        counts["queued"] += 1


def rebuild(retrain: bool = False, progress: Progress = _job_progress) -> dict[str, Any]:
    """Recompute blocking keys and re-match every record; links are merges a steward can unmerge."""
    engine = registry().platform
    counts = {"records": 0, "linked": 0, "queued": 0, "model_version": 0}
    if retrain:
        with session_scope(engine) as session:
            counts["model_version"] = train(session)
    with Session(engine) as session:
        ids = list(session.scalars(select(PersonRecord.id).order_by(PersonRecord.id)))
    total = len(ids)
    for start in range(0, total, BATCH):
        with session_scope(engine) as session:
            for record in session.scalars(select(PersonRecord).where(PersonRecord.id.in_(ids[start:start + BATCH]))):
                _rematch(session, record, counts)
                counts["records"] += 1
        progress(min(start + BATCH, total), total)
    log.info("EMPI rebuild done: %s", counts)
    return counts


def rebuild_job(retrain: bool) -> dict[str, Any]:
    """RQ entry point."""
    from hie.platform.jobs.tasks import worker_app

    with worker_app().app_context():
        return rebuild(retrain)
