"""Alembic for both trees: the platform database and every tenant shard."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(tree: str, engine: Engine) -> AlembicConfig:
    """An in-memory alembic config for one tree, running on the given engine."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS / tree))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(tree: str, engine: Engine, revision: str = "head") -> None:
    """Bring one database to the newest revision of its tree."""
    command.upgrade(alembic_config(tree, engine), revision)


@cache
def head_revisions(tree: str) -> frozenset[str]:
    """The newest revision(s) of a migration tree."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS / tree))
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


def check_at_head(tree: str, engine: Engine) -> None:
    """Raise unless the database exists and its schema is at the newest revision of its tree."""
    with engine.connect() as conn:
        try:
            current = frozenset(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        except Exception as exc:
            raise RuntimeError(f"schema not migrated (no alembic_version: {type(exc).__name__})") from None
    if current != head_revisions(tree):
        raise RuntimeError(f"schema at {', '.join(sorted(current)) or 'nothing'}, expected "
                           f"{', '.join(sorted(head_revisions(tree)))}; run `hie db upgrade`")


def _server_engine(parsed: URL) -> Engine:
    """An engine on the database server itself, for creating or looking up databases."""
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r} must be letters, digits and underscores")
    server_url = URL.create(parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.port,
                            query=parsed.query)
    return create_engine(server_url, connect_args={"connect_timeout": 5})


def create_database(url: str) -> None:
    """Make the empty database a shard needs: CREATE DATABASE on MySQL, the (empty) file on SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(parsed.database).close()
        return
    server = _server_engine(parsed)
    try:
        with server.begin() as conn:
            conn.execute(text(
                f"CREATE DATABASE IF NOT EXISTS `{parsed.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
    finally:
        server.dispose()


def database_exists(url: str) -> bool:
    """Whether a database is there (the file on SQLite, the schema on MySQL), without creating it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return not parsed.database or parsed.database == ":memory:" or Path(parsed.database).is_file()
    server = _server_engine(parsed)
    try:
        with server.connect() as conn:
            return conn.scalar(text("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :name"),
                               {"name": parsed.database}) > 0
    finally:
        server.dispose()


@dataclass
class UpgradeReport:
    """Which databases upgraded and which failed, so one broken shard does not stop the rest."""

    upgraded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
