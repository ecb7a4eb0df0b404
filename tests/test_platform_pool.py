"""Pooled MySQL connections: reset on return only when a transaction is still open, never losing a rollback."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import MYSQL_URL, shard_engine

pytestmark = pytest.mark.skipif(not MYSQL_URL, reason="the status-flag reset is MySQL's pool behaviour")


@pytest.fixture
def probe_table(app):
    engine = shard_engine(app, "yaodu")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE pool_probe (id INT PRIMARY KEY)"))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE pool_probe"))


def _count(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT COUNT(*) FROM pool_probe"))


def test_a_connection_returned_inside_a_transaction_is_rolled_back(probe_table):
    raw = probe_table.raw_connection()
    raw.cursor().execute("INSERT INTO pool_probe VALUES (1)")
    raw.close()
    assert _count(probe_table) == 0


def _rollbacks(raw) -> tuple[int, int]:
    """This server session's id and how many ROLLBACKs it has run."""
    cursor = raw.cursor()
    cursor.execute("SELECT CONNECTION_ID()")
    session_id = cursor.fetchone()[0]
    cursor.execute("SHOW SESSION STATUS LIKE 'Com_rollback'")
    return session_id, int(cursor.fetchone()[1])


def test_a_connection_returned_after_its_commit_costs_no_rollback(probe_table):
    probe_table.dispose()
    raw = probe_table.raw_connection()
    session_id, before = _rollbacks(raw)
    raw.commit()
    raw.cursor().execute("INSERT INTO pool_probe VALUES (2)")
    raw.commit()
    raw.close()
    again = probe_table.raw_connection()
    assert _rollbacks(again) == (session_id, before), "the pool sent a ROLLBACK after a committed transaction"
    again.close()
    assert _count(probe_table) == 1


def test_a_connection_killed_while_idle_is_replaced_before_a_request_uses_it(probe_table, monkeypatch):
    from hie.platform import db

    probe_table.dispose()
    with probe_table.connect() as conn:
        victim = conn.scalar(text("SELECT CONNECTION_ID()"))
    killer = create_engine(probe_table.url.render_as_string(hide_password=False))
    with killer.connect() as conn:
        conn.execute(text(f"KILL {victim}"))
    killer.dispose()
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    with probe_table.connect() as conn:
        assert conn.scalar(text("SELECT CONNECTION_ID()")) != victim
        assert conn.scalar(text("SELECT COUNT(*) FROM pool_probe")) == 0
