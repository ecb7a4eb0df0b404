"""The worker process: RQ jobs when Redis is configured, and a periodic outbox sweep and audit chaining either way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask
from rq import SimpleWorker
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.audit.services import chain_pending
from hie.platform.jobs import tasks
from hie.platform.jobs.services import PLATFORM, QUEUE_NAME, sweep
from hie.platform.modules import installed
from hie.tenants.models import Tenant
from hie.tenants.services import shard_engines

log = logging.getLogger(__name__)


def all_shards(app: Flask) -> list[str]:
    """The platform and every active tenant, for the sweep."""
    with Session(app.extensions["hie.engines"].platform) as session:
        codes = session.scalars(select(Tenant.code).where(Tenant.active.is_(True))).all()
    return [PLATFORM, *codes]


def sweep_once(app: Flask) -> int:
    """Re-dispatch events that were committed but not delivered."""
    with app.app_context():
        return sweep(all_shards(app))


def chain_once(app: Flask) -> int:
    """Chain the audit events no request chained (their sequencer found the lock taken, or they wait in a shard
    no later request wrote); waits for the lock."""
    try:
        engines = app.extensions["hie.engines"]
        chained = chain_pending(engines.platform, app.extensions["hie.keyring"], wait=True,
                                shards=shard_engines(engines, app.config["HIE"]))
    except Exception:
        log.exception("audit chaining failed; the events stay pending for the next tick")
        return 0
    if chained:
        log.info("chained %s pending audit event(s)", chained)
    return chained


def tick(app: Flask) -> None:
    """One round of the worker's periodic duties: outbox sweep, audit chaining, the modules' periodic jobs."""
    try:
        sweep_once(app)
    except Exception:
        log.exception("outbox sweep failed")
    chain_once(app)
    periodic_once(app)


def periodic_once(app: Flask) -> None:
    """Run each installed module's periodic job (hooks["periodic"]); one failing spares the others."""
    for module in installed():
        job = module.hooks.get("periodic")
        if job is None:
            continue
        try:
            job(app)
        except Exception:
            log.exception("periodic job of %s failed", module.name)


def _sweep_forever(app: Flask, interval: int, stop: threading.Event) -> None:
    while not stop.wait(interval):
        tick(app)


def run_worker(app: Flask, burst: bool, interval: int, echo: Callable[[str], None]) -> None:
    """Block processing jobs until stopped (or, with burst, until the queue is empty)."""
    tasks.bind_app(app)
    client = app.extensions["hie.redis"]
    found = sweep_once(app)
    echo(f"outbox sweep re-dispatched {found} event(s)")
    echo(f"audit: chained {chain_once(app)} pending event(s)")
    periodic_once(app)
    if client is None:
        echo("HIE_REDIS_URL is not set: jobs run inline in the API; this worker only sweeps the outbox")
        if burst:
            return
        while True:
            time.sleep(interval)
            tick(app)
    stop = threading.Event()
    if not burst:
        threading.Thread(target=_sweep_forever, args=(app, interval, stop), daemon=True).start()
    try:
        SimpleWorker([QUEUE_NAME], connection=client).work(burst=burst, with_scheduler=not burst)
    finally:
        stop.set()
