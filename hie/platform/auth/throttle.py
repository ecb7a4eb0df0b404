"""Login throttling after NIST SP 800-63B §5.2.2 (see docs/access.md): backoff per (username, address), no lockout."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import ColumnElement, case, delete, func, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from hie.platform.audit import services as audit
from hie.platform.auth.models import LoginAlert, LoginThrottle, User
from hie.platform.config import Config
from hie.platform.crypto import keyring

log = logging.getLogger(__name__)

_TABLE = LoginThrottle.__table__
_MAX_DOUBLINGS = 32


def _config() -> Config:
    return current_app.config["HIE"]


def username_index(username: str) -> str:
    """The blind index a username is counted under (the table never holds the name itself)."""
    return keyring().blind_index("login_throttle.username", username)


def _pair(index: str, source_ip: str) -> list[ColumnElement[bool]]:
    return [LoginThrottle.username_index == index, LoginThrottle.source_ip == source_ip]


def backoff(failures: int, config: Config) -> int:
    """Seconds a pair must wait after this many failures: none at first, then doubling up to the cap."""
    extra = failures - config.login_free_failures
    if extra <= 0:
        return 0
    return min(config.login_delay_seconds * 2 ** min(extra - 1, _MAX_DOUBLINGS), config.login_max_delay_seconds)


def retry_after(session: Session, index: str, source_ip: str, now: datetime, locking: bool = False) -> int | None:
    """Whole seconds the pair must still wait, or None when it may try now."""
    query = select(LoginThrottle.blocked_until).where(*_pair(index, source_ip))
    blocked_until = session.scalar(query.with_for_update() if locking else query)
    if blocked_until is None or blocked_until <= now:
        return None
    return max(1, math.ceil((blocked_until - now).total_seconds()))


def _upsert(session: Session, index: str, source_ip: str, now: datetime, cutoff: datetime) -> None:
    """One statement that adds the pair or counts one more failure (restarting after a quiet window)."""
    counted = case((_TABLE.c.last_failure_at < cutoff, 1), else_=_TABLE.c.failures + 1)
    row = {"username_index": index, "source_ip": source_ip, "failures": 1, "last_failure_at": now}
    if session.get_bind().dialect.name == "sqlite":
        sqlite_stmt = sqlite_insert(_TABLE).values(row)
        session.execute(sqlite_stmt.on_conflict_do_update(
            index_elements=[_TABLE.c.username_index, _TABLE.c.source_ip],
            set_={"failures": counted, "last_failure_at": now}))
        return
    # MySQL applies the assignments in order: failures must read the old last_failure_at.
    mysql_stmt = mysql_insert(_TABLE).values(row)
    session.execute(mysql_stmt.on_duplicate_key_update([("failures", counted), ("last_failure_at", now)]))


def count_failure(session: Session, index: str, source_ip: str, now: datetime) -> int:
    """Count one failed login atomically (the upsert holds the row lock) and set the pair's wait; its seconds."""
    config = _config()
    _upsert(session, index, source_ip, now, now - timedelta(seconds=config.login_failure_window))
    failures = session.scalar(select(LoginThrottle.failures).where(*_pair(index, source_ip))) or 1
    wait = backoff(failures, config)
    session.execute(update(LoginThrottle).where(*_pair(index, source_ip))
                    .values(blocked_until=now + timedelta(seconds=wait) if wait else None)
                    .execution_options(synchronize_session=False))
    return wait


def clear(session: Session, index: str, source_ip: str, now: datetime) -> int | None:
    """Forget the pair's failures after a good password; the wait instead if a concurrent failure just set one."""
    session.execute(delete(LoginThrottle).where(
        *_pair(index, source_ip), or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until <= now))
        .execution_options(synchronize_session=False))
    return retry_after(session, index, source_ip, now, locking=True)


def alert_if_sustained(session: Session, user: User | None, index: str, now: datetime,
                       actor: dict[str, object]) -> LoginAlert | None:
    """Once per window, alert the account's institution when its failures from all addresses reach the limit."""
    config = _config()
    cutoff = now - timedelta(seconds=config.login_failure_window)
    failures, addresses = session.execute(
        select(func.coalesce(func.sum(LoginThrottle.failures), 0), func.count())
        .where(LoginThrottle.username_index == index, LoginThrottle.last_failure_at >= cutoff)).one()
    # Counted for unknown names too, so refusing a known name takes no measurably longer.
    if user is None or failures < config.login_alert_failures:
        return None
    if session.scalar(select(LoginAlert.id).where(LoginAlert.user_id == user.id, LoginAlert.raised_at >= cutoff)
                      .limit(1)) is not None:
        return None
    alert = LoginAlert(user_id=user.id, institution_id=user.institution_id, raised_at=now, failures=failures,
                       source_addresses=addresses)
    session.add(alert)
    session.flush()
    detail = (f"{failures} failed logins from {addresses} source address(es) within "
              f"{config.login_failure_window} s; the administrators of institution {user.institution.code} are alerted")
    audit.record("login_alert", "failure", resource_type="User", resource_id=str(user.id), detail=detail, actor=actor)
    log.warning("login alert %s for user %s of institution %s: %s", alert.id, user.id, user.institution.code, detail)
    return alert
