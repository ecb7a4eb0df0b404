"""Outbox handlers: the record registry and the $everything cache follow EMPI merges and unmerges; bulk exports
start after their kick-off commits."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.empi.models import PersonRecord
from hie.exchange import bulk
from hie.exchange.bulk_job import run_export
from hie.exchange.models import RecordLocation
from hie.exchange.registry import merged_cluster
from hie.exchange.store import everything_cache_key
from hie.platform.db import utcnow
from hie.platform.jobs.services import handles, queue
from hie.platform.jobs.tasks import worker_app

BULK_EXPORT_TIMEOUT = 6 * 3600  # seconds an export job may run in the worker


def _forget(*person_ids: str | None) -> None:
    """Drop the cached summaries of these persons (after commit: the stamp already keeps readers correct)."""
    current_app.extensions["hie.cache"].invalidate(*(everything_cache_key(p) for p in person_ids if p))


def _locate(session: Session, person_id: str, tenant_code: str) -> None:
    """Make sure the registry names this shard for the person; a concurrent writer's row is as good as ours."""
    if session.get(RecordLocation, (person_id, tenant_code)) is not None:
        return
    try:
        with session.begin_nested():
            session.add(RecordLocation(master_person_id=person_id, tenant_code=tenant_code, last_updated=utcnow()))
    except IntegrityError:
        pass


@handles("empi.merged")
def follow_merge(session: Session, payload: dict) -> None:
    """The survivor's registry rows gain the source's shards (locate also follows merges), caches dropped."""
    for (tenant_code,) in session.execute(select(RecordLocation.tenant_code).where(
            RecordLocation.master_person_id == payload["source"])):
        _locate(session, payload["target"], tenant_code)
    session.flush()
    _forget(payload["source"], payload["target"])


@handles("empi.unmerged")
def follow_unmerge(session: Session, payload: dict) -> None:
    """The restored person keeps the shards written for it while merged (they were registered under the survivor)."""
    restored, survivor = payload["restored"], payload["from"]
    own = set(session.scalars(select(PersonRecord.tenant_code).where(PersonRecord.person_id == restored,
                                                                     PersonRecord.patient_id.is_not(None))))
    for tenant_code in sorted(own & set(session.scalars(select(RecordLocation.tenant_code).where(
            RecordLocation.master_person_id.in_(merged_cluster(session, survivor)))))):
        _locate(session, restored, tenant_code)
    session.flush()
    _forget(restored, survivor)


@handles(bulk.TOPIC)
def start_bulk_export(session: Session, payload: dict) -> None:
    """A kick-off committed: queue the export job with RQ, or without Redis run it now (inline, as every job)."""
    rq_queue = queue()
    if rq_queue is None:
        run_export(current_app._get_current_object(), payload["export_id"])  # type: ignore[attr-defined]
        return
    rq_queue.enqueue("hie.exchange.tasks.bulk_export_job", payload["export_id"],
                     job_id=f"bulk-export-{payload['export_id']}", job_timeout=BULK_EXPORT_TIMEOUT)


def bulk_export_job(export_id: str) -> str:
    """RQ entry point of an export; returns the status it ended in."""
    return run_export(worker_app(), export_id)
