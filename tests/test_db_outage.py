"""An unreachable database (platform or shard) answers 503 with Retry-After and one log line, and service recovers."""

from __future__ import annotations

import logging
import sqlite3

import pymysql
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from hie.patients.models import Patient
from tests.conftest import MYSQL_PREFIX, MYSQL_URL, PASSWORD, login, new_patient, shard_engine

PATIENTS = "/api/v1/patients?mrn=MRN-1"
FHIR_SEARCH = "/fhir/Patient?identifier=MRN-1"


@pytest.fixture
def shard_at(app, monkeypatch):
    """shard_at(url): the yaodu shard map entry points there for the rest of the test."""
    engines = app.extensions["hie.engines"]
    real = engines.tenant_url

    def point(url: str) -> None:
        monkeypatch.setattr(engines, "tenant_url",
                            lambda code, lookup: url if code == "yaodu" else real(code, lookup))

    return point


def _problems(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


def _assert_one_outage_line(caplog) -> None:
    [line] = _problems(caplog)
    assert line.levelno == logging.WARNING and "database unreachable" in line.getMessage()
    assert line.exc_info is None and line.stack_info is None, "an outage is logged without a traceback"
    assert "[SQL:" not in line.getMessage(), "the statement (and its parameters) stays out of the log"


def _assert_503_problem(response) -> None:
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 503 and "database cannot be reached" in body["detail"]


def _assert_503_outcome(response) -> None:
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert "database cannot be reached" in body["issue"][0]["diagnostics"]


def test_an_unreachable_shard_answers_503_with_one_log_line(client, as_user, shard_at, tmp_path, caplog):
    headers = as_user("yaodu.doctor")
    new_patient(client, headers)
    shard_at(f"sqlite:///{tmp_path / 'gone' / 'tenant_yaodu.db'}")
    caplog.clear()
    _assert_503_problem(client.get(PATIENTS, headers=headers))
    _assert_one_outage_line(caplog)


def test_an_unreachable_shard_answers_fhir_routes_with_an_operation_outcome(client, as_user, shard_at, tmp_path,
                                                                           caplog):
    headers = as_user("yaodu.doctor")
    shard_at(f"sqlite:///{tmp_path / 'gone' / 'tenant_yaodu.db'}")
    caplog.clear()
    _assert_503_outcome(client.get(FHIR_SEARCH, headers=headers))
    _assert_one_outage_line(caplog)


def test_other_tenants_are_served_while_one_shard_is_down(client, as_user, shard_at, tmp_path):
    quwo = as_user("quwo.doctor")
    shard_at(f"sqlite:///{tmp_path / 'gone' / 'tenant_yaodu.db'}")
    assert client.get(PATIENTS, headers=quwo).status_code == 200


def _platform_fails(app, monkeypatch, error: Exception) -> None:
    """Every new connection to the platform database fails with this error, as at the driver."""
    engine = app.extensions["hie.engines"].platform

    def refuse():
        raise error

    monkeypatch.setattr(engine, "raw_connection", refuse)


CANNOT_CONNECT = pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' (111)") \
    if MYSQL_URL else sqlite3.OperationalError("unable to open database file")


@pytest.mark.parametrize("error", [
    CANNOT_CONNECT,
    sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"),
], ids=["unreachable", "pool-timeout"])
def test_an_unreachable_platform_answers_503_to_login_and_to_authenticated_calls(app, client, monkeypatch, caplog,
                                                                                 error):
    headers = login(client, "yaodu.doctor")
    _platform_fails(app, monkeypatch, error)
    for method, path, kwargs in (
        ("post", "/api/v1/auth/token", {"json": {"username": "yaodu.doctor", "password": PASSWORD}}),
        ("get", "/api/v1/auth/me", {"headers": headers}),
    ):
        caplog.clear()
        _assert_503_problem(getattr(client, method)(path, **kwargs))
        _assert_one_outage_line(caplog)
    monkeypatch.undo()
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200


def test_a_write_whose_commit_finds_the_shard_gone_answers_503(app, client, as_user, monkeypatch,
                                                                                 caplog):
    headers = as_user("yaodu.doctor")
    engine = shard_engine(app, "yaodu")

    def gone(dbapi_connection) -> None:
        dbapi_connection.rollback()  # the server dropped the transaction with the connection
        if MYSQL_URL:
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(engine.dialect, "do_commit", gone)
    caplog.clear()
    response = client.post("/api/v1/patients", headers=headers, json={
        "mrn": "MRN-7", "name": "李四", "sex": "M", "birth_date": "1970-01-01"})
    monkeypatch.undo()
    _assert_503_problem(response)
    _assert_one_outage_line(caplog)
    with Session(engine) as shard:
        assert shard.scalar(select(func.count()).select_from(Patient)) == 0


def test_any_other_database_error_is_still_a_500_with_its_traceback(app, client, monkeypatch, caplog):
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    _platform_fails(app, monkeypatch, sqlite3.OperationalError("no such table: users"))
    caplog.clear()
    response = client.post("/api/v1/auth/token", json={"username": "yaodu.doctor", "password": PASSWORD})
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert any(record.levelno == logging.ERROR and record.exc_info for record in caplog.records)


mysql_only = pytest.mark.skipif(not MYSQL_URL, reason="a real MariaDB server refusing and dropping connections")


@mysql_only
def test_a_shard_on_a_closed_port_answers_503(client, as_user, shard_at, caplog):
    headers = as_user("yaodu.doctor")
    shard_at("mysql+pymysql://root@127.0.0.1:1/hie_nowhere")
    caplog.clear()
    _assert_503_problem(client.get(PATIENTS, headers=headers))
    _assert_one_outage_line(caplog)
    caplog.clear()
    _assert_503_outcome(client.get(FHIR_SEARCH, headers=headers))
    _assert_one_outage_line(caplog)


def _kill_test_connections() -> int:
    """KILL every server connection of this test run's databases (other test runs' connections are left alone)."""
    killer = create_engine(MYSQL_URL)
    with killer.connect() as conn:
        ids = conn.scalars(text("SELECT ID FROM information_schema.PROCESSLIST WHERE DB LIKE :prefix AND "
                                "ID <> CONNECTION_ID()"),
                           {"prefix": MYSQL_PREFIX.replace("_", "\\_") + "%"}).all()
        for victim in ids:
            conn.execute(text(f"KILL {int(victim)}"))
    killer.dispose()
    return len(ids)


@pytest.fixture
def fresh_pools_after(app):
    """Pools the test's requests did not touch still hold killed connections: start the next test without them."""
    yield
    app.extensions["hie.engines"].dispose()


@mysql_only
def test_after_the_server_drops_every_connection_requests_answer_503_never_500_and_recover(client, as_user, caplog,
                                                                                          fresh_pools_after):
    headers = as_user("yaodu.doctor")
    new_patient(client, headers)
    assert client.get(PATIENTS, headers=headers).status_code == 200
    assert _kill_test_connections() > 0
    caplog.clear()
    statuses = [client.get(PATIENTS, headers=headers).status_code for _ in range(4)]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[-1] == 200, f"the pools did not recover: {statuses}"
    failed = statuses.count(503)
    assert len(_problems(caplog)) == failed, "one warning line per refused request"
    assert all(record.exc_info is None for record in caplog.records)
    assert client.get(PATIENTS, headers=headers).get_json()[0]["mrn"] == "MRN-1"
