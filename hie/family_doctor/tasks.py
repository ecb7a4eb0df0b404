"""Family-doctor jobs: contracts past their term become expired, once per local day."""

from __future__ import annotations

import logging
from datetime import date

from flask import Flask, current_app

from hie.family_doctor import services
from hie.platform.db import registry, session_scope

log = logging.getLogger(__name__)

DONE_KEY = "hie:family_doctor:expired:{day}"
DONE_TTL = 3 * 24 * 3600
_done_days: set[date] = set()  # this process's memo; Redis tells the other workers


def _done(day: date) -> bool:
    client = current_app.extensions.get("hie.redis")
    if day in _done_days:
        return True
    return client is not None and bool(client.exists(DONE_KEY.format(day=day.isoformat())))


def _mark(day: date) -> None:
    _done_days.add(day)
    client = current_app.extensions.get("hie.redis")
    if client is not None:
        client.set(DONE_KEY.format(day=day.isoformat()), "1", ex=DONE_TTL)


def expire_contracts(today: date | None = None) -> int:
    """Expire every active contract whose last day is over (idempotent: a second run finds none)."""
    today = today or services.local_today()
    with session_scope(registry().platform) as session:
        expired = services.expire_due(session, today)
    log.info("family-doctor contracts expired on %s: %s", today, expired)
    return expired


def periodic(app: Flask, today: date | None = None) -> int | None:
    """The worker's tick: the day's expiry, once per local day (a day marked done is skipped; two workers crossing
    midnight together both run it, which the row locks and the status check make harmless)."""
    with app.app_context():
        today = today or services.local_today()
        if _done(today):
            return None
        expired = expire_contracts(today)
        _mark(today)
        return expired
