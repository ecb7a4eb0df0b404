"""Readiness: a deleted, dropped or empty tenant database is named by /readyz, never silently recreated."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hie.platform.db import session_scope
from hie.tenants import services
from tests.conftest import MYSQL_PREFIX, MYSQL_URL, new_patient


def _server_sql(statement: str) -> None:
    engine = create_engine(MYSQL_URL)
    with engine.begin() as conn:
        conn.execute(text(statement))
    engine.dispose()


@pytest.fixture
def add_tenant(app):
    made: list[str] = []

    def add(code: str, db_url: str | None = None, provision: bool = True) -> str:
        engines = app.extensions["hie.engines"]
        with session_scope(engines.platform) as session, app.app_context():
            tenant = services.add_tenant(session, app.config["HIE"], code, code.title(), None, db_url)
            if provision:
                services.provision(engines, tenant)
            made.append(code)
            return services.resolved_url(app.config["HIE"], tenant)

    yield add
    if MYSQL_URL:
        for code in made:
            _server_sql(f"DROP DATABASE IF EXISTS `{MYSQL_PREFIX}{code}`")


def _destroy(app, url: str) -> None:
    """Delete the file (SQLite) or drop the database (MariaDB), as an operator's accident would."""
    engine = app.extensions["hie.engines"].engine(url)
    engine.dispose()
    if MYSQL_URL:
        _server_sql(f"DROP DATABASE `{make_url(url).database}`")
        return
    for path in Path(make_url(url).database).parent.glob(Path(make_url(url).database).name + "*"):
        path.unlink()


def test_deleted_or_dropped_shard_is_named_and_not_recreated(client, app, as_user, add_tenant):
    url = add_tenant("gone")
    assert client.get("/readyz").status_code == 200
    _destroy(app, url)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert list(body["failed"]) == ["tenant:gone"]
    assert body["checks"]["tenant:yaodu"] == "ok" and body["checks"]["platform"] == "ok"
    if not MYSQL_URL:
        assert not Path(make_url(url).database).exists()
    assert new_patient(client, as_user("yaodu.doctor"))["tenant_code"] == "yaodu"


def test_empty_database_is_not_ready(client, app, tmp_path, add_tenant):
    if MYSQL_URL:
        _server_sql(f"CREATE DATABASE `{MYSQL_PREFIX}blank`")
        url = f"{MYSQL_URL}/{MYSQL_PREFIX}blank"
    else:
        empty = tmp_path / "blank.db"
        empty.write_bytes(b"")
        url = f"sqlite:///{empty}"
    add_tenant("blank", url, provision=False)
    body = client.get("/readyz").get_json()
    assert list(body["failed"]) == ["tenant:blank"]
    assert "schema not migrated" in body["failed"]["tenant:blank"]


def test_engine_does_not_create_a_missing_sqlite_file(app, tmp_path):
    if MYSQL_URL:
        pytest.skip("SQLite files only")
    missing = tmp_path / "never.db"
    engine = app.extensions["hie.engines"].engine(f"sqlite:///{missing}")
    with pytest.raises(Exception, match="unable to open"), engine.connect():
        pass
    assert not missing.exists()
