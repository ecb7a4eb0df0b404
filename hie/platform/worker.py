"""The worker process: RQ jobs when Redis is configured, and a periodic outbox sweep either way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask
from rq import SimpleWorker
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.jobs import tasks
from hie.platform.jobs.services import PLATFORM, QUEUE_NAME, sweep
from hie.platform.modules import installed
from hie.tenants.models import Tenant

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
        try:
            sweep_once(app)
        except Exception:
            log.exception("outbox sweep failed")
        periodic_once(app)


def run_worker(app: Flask, burst: bool, interval: int, echo: Callable[[str], None]) -> None:
    """Block processing jobs until stopped (or, with burst, until the queue is empty)."""
    tasks.bind_app(app)
    client = app.extensions["hie.redis"]
    found = sweep_once(app)
    echo(f"outbox sweep re-dispatched {found} event(s)")
    periodic_once(app)
    if client is None:
        echo("HIE_REDIS_URL is not set: jobs run inline in the API; this worker only sweeps the outbox")
        if burst:
            return
        while True:
            time.sleep(interval)
            sweep_once(app)
            periodic_once(app)
    stop = threading.Event()
    if not burst:
        threading.Thread(target=_sweep_forever, args=(app, interval, stop), daemon=True).start()
    try:
        SimpleWorker([QUEUE_NAME], connection=client).work(burst=burst, with_scheduler=not burst)
    finally:
        stop.set()
