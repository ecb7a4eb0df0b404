"""Outbox events: written with the change, delivered after commit, by RQ or inline, to idempotent handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from flask import current_app, g, has_request_context
from rq import Queue, Retry
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.platform.db import new_id, registry, session_scope, utcnow
from hie.platform.jobs.models import HandledEvent, PlatformOutboxEvent, TenantOutboxEvent

log = logging.getLogger(__name__)

PLATFORM = "platform"
QUEUE_NAME = "hie"
Handler = Callable[[Session, dict], None]
_HANDLERS: dict[str, list[tuple[str, Handler]]] = {}


def handles(topic: str) -> Callable[[Handler], Handler]:
    """Register a handler; it gets a platform Session and must only add and flush."""

    def register(handler: Handler) -> Handler:
        _HANDLERS.setdefault(topic, []).append((f"{handler.__module__}.{handler.__qualname__}", handler))
        return handler

    return register


def _model(shard: str) -> type[PlatformOutboxEvent] | type[TenantOutboxEvent]:
    return PlatformOutboxEvent if shard == PLATFORM else TenantOutboxEvent


def emit(session: Session, shard: str, topic: str, payload: dict) -> str:
    """Add an event to the same Session (and so the same transaction) as the change it announces."""
    event = _model(shard)(id=new_id(), topic=topic, payload=payload, created_at=utcnow(), attempts=0)
    session.add(event)
    if has_request_context():
        g.setdefault("outbox_pending", []).append((shard, event.id))
    return event.id


def _engine(shard: str) -> Engine:
    if shard == PLATFORM:
        return registry().platform
    from hie.tenants.services import tenant_db_url

    with Session(registry().platform) as session:
        return registry().engine(tenant_db_url(session, shard))


def queue() -> Queue | None:
    """The RQ queue when Redis is configured; None means run jobs inline."""
    return current_app.extensions.get("hie.queue")


def dispatch(shard: str, event_id: str) -> None:
    """Hand an event to RQ, or deliver it now when there is no Redis."""
    rq_queue = queue()
    if rq_queue is None:
        try:
            deliver(shard, event_id)
        except Exception:
            log.exception("inline delivery of event %s from %s failed; the sweep will retry", event_id, shard)
        return
    rq_queue.enqueue(
        "hie.platform.jobs.tasks.deliver_event", shard, event_id,
        job_id=f"event-{event_id}", retry=Retry(max=5, interval=[5, 30, 120, 600, 1800]),
    )


def dispatch_committed() -> None:
    """After the request's commit: send on every event it wrote."""
    for shard, event_id in g.pop("outbox_pending", []):
        dispatch(shard, event_id)


def discard_uncommitted() -> None:
    """The request rolled back, so its events never existed."""
    g.pop("outbox_pending", None)


def deliver(shard: str, event_id: str) -> bool:
    """Run every handler of one event once; True when the event is (now) fully delivered."""
    model = _model(shard)
    with session_scope(_engine(shard)) as session:
        event = session.get(model, event_id)
        if event is None:
            log.warning("event %s not found in %s", event_id, shard)
            return False
        if event.delivered_at is not None:
            return True
        topic, payload = event.topic, dict(event.payload)
    try:
        for name, handler in _HANDLERS.get(topic, []):
            _run_once(event_id, name, handler, payload)
    except Exception as exc:
        with session_scope(_engine(shard)) as session:
            failed = session.get(model, event_id)
            if failed is not None:
                failed.attempts += 1
                failed.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    with session_scope(_engine(shard)) as session:
        done = session.get(model, event_id)
        if done is not None:
            done.delivered_at = utcnow()
            done.attempts += 1
    return True


def _run_once(event_id: str, name: str, handler: Handler, payload: dict) -> None:
    try:
        with session_scope(registry().platform) as session:
            if session.get(HandledEvent, (event_id, name)) is not None:
                return
            handler(session, payload)
            session.add(HandledEvent(event_id=event_id, handler=name, handled_at=utcnow()))
    except IntegrityError:
        log.info("event %s already handled by %s in another process", event_id, name)


def sweep(shards: list[str], older_than: timedelta = timedelta(seconds=60)) -> int:
    """Re-dispatch events left undelivered (a crash between commit and dispatch, a failed handler)."""
    cutoff = utcnow() - older_than
    count = 0
    for shard in shards:
        model = _model(shard)
        try:
            with session_scope(_engine(shard)) as session:
                ids = session.scalars(
                    select(model.id).where(model.delivered_at.is_(None), model.created_at <= cutoff)
                    .order_by(model.created_at).limit(1000)
                ).all()
        except Exception:
            log.exception("outbox sweep of %s failed", shard)
            continue
        for event_id in ids:
            dispatch(shard, event_id)
            count += 1
    return count
