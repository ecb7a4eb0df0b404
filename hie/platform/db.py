"""Engines, the shard registry and the request's unit of work (one Session per shard)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import current_app, g
from pymysql.constants.SERVER_STATUS import SERVER_STATUS_IN_TRANS
from sqlalchemy import Connection, DateTime, Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session
from sqlalchemy.types import TypeDecorator, TypeEngine

from hie.platform.config import Config

SHARD_MAP_TTL = 30.0
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC, hand back aware UTC: SQLite and MySQL both drop the zone otherwise."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[datetime]:
        """Microseconds on MySQL too: the audit chain hashes the exact time."""
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class PlatformBase(DeclarativeBase):
    """Tables of the control plane: regions, tenants, users, EMPI, audit, outbox."""

    metadata = MetaData(naming_convention=NAMING)


class TenantBase(DeclarativeBase):
    """Tables of one tenant's shard: its institutions' clinical data and nothing else."""

    metadata = MetaData(naming_convention=NAMING)


def too_long(table: Table, **values: str | None) -> str | None:
    """The first value longer than its column allows, as a message naming the field; None if all fit."""
    for name, value in values.items():
        length = getattr(table.c[name].type, "length", None)
        if value is not None and length is not None and len(value) > length:
            return f"{name} must be at most {length} characters (got {len(value)})"
    return None


def utcnow() -> datetime:
    """Aware UTC now, the only clock the models use."""
    return datetime.now(UTC)


def new_id() -> str:
    """Row ids are made by the application so encryption can bind a value to its row before insert."""
    return str(uuid.uuid4())


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def _begin_before_savepoint(conn: Connection, _name: str) -> None:
    """pysqlite opens a transaction only before a write: a SAVEPOINT after reads alone would start one itself and
    its RELEASE would commit at once, outside the unit of work. BEGIN first, so the savepoint nests as it should."""
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:  # type: ignore[attr-defined]
        dbapi_connection.execute("BEGIN")  # type: ignore[attr-defined]


def _open_existing(path: str) -> Callable[[], sqlite3.Connection]:
    """Connect to a SQLite file that must already exist: only provisioning creates databases."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=rw"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=15, check_same_thread=False)

    return connect


def build_engine(url: str, config: Config) -> Engine:
    """One pooled engine per database URL; SQLite gets WAL and foreign keys, MySQL gets timeouts."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            engine = create_engine(url, creator=_open_existing(parsed.database))
        else:
            engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _begin_before_savepoint)
        return engine
    engine = create_engine(
        url,
        pool_size=config.db_pool_size,
        max_overflow=config.db_max_overflow,
        pool_recycle=1800,
        pool_reset_on_return=None,
        connect_args={
            "connect_timeout": config.db_connect_timeout,
            "read_timeout": 30,
            "write_timeout": 30,
            "charset": "utf8mb4",
        },
    )
    event.listen(engine, "reset", _rollback_if_in_transaction)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


IDLE_PING_SECONDS = 5.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pre-ping only connections idle for a while: a busy pool skips the round trip, while one that sat
    through a database restart is found dead here and replaced before a request uses it."""
    checked_in = record.info.get("checked_in_at")
    if checked_in is None or time.monotonic() - checked_in < IDLE_PING_SECONDS:
        return
    try:
        dbapi_connection.ping(reconnect=False)
    except Exception as exc:
        raise DisconnectionError("pooled connection died while idle") from exc


def _rollback_if_in_transaction(dbapi_connection: Any, _record: Any, reset_state: Any) -> None:
    """Pool reset without a round trip when the connection comes back with its transaction already ended
    (every Session commits or rolls back first): the server's status flags say whether one is open."""
    if reset_state.terminate_only:
        return
    if getattr(dbapi_connection, "server_status", None) is None or \
            dbapi_connection.server_status & SERVER_STATUS_IN_TRANS:
        dbapi_connection.rollback()


class EngineRegistry:
    """Engines cached by URL so every tenant on one server still gets its own pool."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._engines: dict[str, Engine] = {}
        self._shard_map: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def engine(self, url: str) -> Engine:
        """The cached engine for a URL, made on first use."""
        engine = self._engines.get(url)
        if engine is None:
            with self._lock:
                engine = self._engines.get(url)
                if engine is None:
                    engine = build_engine(url, self.config)
                    self._engines[url] = engine
        return engine

    def tenant_url(self, tenant_code: str, lookup: Callable[[], str]) -> str:
        """The shard map, read through a short-lived copy: a moved shard is seen within SHARD_MAP_TTL."""
        now = time.monotonic()
        hit = self._shard_map.get(tenant_code)
        if hit is not None and now - hit[1] < SHARD_MAP_TTL:
            return hit[0]
        url = lookup()
        self._shard_map[tenant_code] = (url, now)
        return url

    @property
    def platform(self) -> Engine:
        """The control-plane database."""
        return self.engine(self.config.platform_db_url)

    def dispose(self) -> None:
        """Close every pool, e.g. after fork or at shutdown."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
            self._shard_map.clear()


def registry() -> EngineRegistry:
    """The app's engine registry."""
    return current_app.extensions["hie.engines"]


def platform_session() -> Session:
    """The request's platform Session, committed once when the request ends."""
    if "platform_session" not in g:
        g.platform_session = Session(registry().platform, expire_on_commit=False)
    return g.platform_session


def shard_session(tenant_code: str) -> Session:
    """The request's Session on one tenant shard, found through the shard map."""
    from hie.tenants.services import tenant_db_url

    sessions: dict[str, Session] = g.setdefault("shard_sessions", {})
    if tenant_code not in sessions:
        url = registry().tenant_url(tenant_code, lambda: tenant_db_url(platform_session(), tenant_code))
        session = sessions[tenant_code] = Session(registry().engine(url), expire_on_commit=False)
        event.listen(session, "after_flush", _note_flush)
        event.listen(session, "do_orm_execute", _note_statement)
    return sessions[tenant_code]


def _note_flush(session: Session, _context: Any) -> None:
    session.info["wrote"] = True


def _note_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info["wrote"] = True


def written_shards() -> list[tuple[str, Session]]:
    """The request's shard Sessions that wrote something (flushed, ran an INSERT/UPDATE/DELETE, or hold changes not
    yet flushed), in first-use order: the audit events of a write commit in the first of them."""
    return [(code, session) for code, session in g.get("shard_sessions", {}).items()
            if session.info.get("wrote") or session.new or session.dirty or session.deleted]


def keep_changes_on_error() -> None:
    """Let a refusal still commit what it counted (failed logins, a revoked stolen session)."""
    g.keep_changes_on_error = True


def finish_unit_of_work(commit: bool) -> None:
    """Commit the shards first, then the platform, or roll everything back."""
    sessions: list[Session] = list(g.pop("shard_sessions", {}).values())
    platform = g.pop("platform_session", None)
    commit = commit or bool(g.pop("keep_changes_on_error", False))
    if platform is not None:
        sessions.append(platform)
    try:
        for session in sessions:
            if commit:
                session.commit()
            else:
                session.rollback()
    finally:
        for session in sessions:
            session.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A committed-or-rolled-back unit of work outside a request (CLI, jobs)."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
