"""The audit sequencer: requests append unchained events without the head lock; a sequencer chains them in order,
one at a time, exactly once, and a batch that fails part-way leaves nothing half done."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flask import g, has_request_context
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from hie.platform.audit import services as audit
from hie.platform.audit.models import AuditChainHead, AuditEvent, AuditPending, ShardAuditPending
from hie.platform.worker import chain_once
from tests.conftest import MYSQL_URL, hie_environ, new_patient, shard_engine

ROOT = Path(__file__).resolve().parents[1]

_APPEND_SCRIPT = """
import sys, threading
from flask import g
from hie.platform.app import create_app
from hie.platform.audit import services as audit
from hie.platform.config import load_config
import os

app = create_app(load_config(dict(os.environ), argon2_time_cost=1, argon2_memory_kib=1024, testing=True))
engine, ring = app.extensions["hie.engines"].platform, app.extensions["hie.keyring"]
prefix, threads, requests, per_request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def requests_of(label):
    for number in range(requests):
        with app.test_request_context():
            g.request_id = f"{label}-{number}"
            for index in range(per_request):
                audit.record("read", detail=f"{label}/{number}/{index}")
            audit.flush_pending(engine, ring, failed=False)

workers = [threading.Thread(target=requests_of, args=(f"{prefix}{n}",)) for n in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
"""


def _engine(app):  # noqa: ANN001, ANN202
    return app.extensions["hie.engines"].platform


def _requests(app, label: str, requests: int, per_request: int) -> None:  # noqa: ANN001
    """Requests as the app ends them: events recorded, then flushed and opportunistically chained."""
    for number in range(requests):
        with app.test_request_context():
            g.request_id = f"{label}-{number}"
            for index in range(per_request):
                audit.record("read", detail=f"{label}/{number}/{index}")
            audit.flush_pending(_engine(app), app.extensions["hie.keyring"], failed=False)


def _assert_chained_once(app, platform_db, expected: set[str]) -> None:  # noqa: ANN001
    """Every expected event chained exactly once, seqs 1..n without a gap, each request's events in its order."""
    audit.chain_pending(_engine(app), app.extensions["hie.keyring"], wait=True)
    platform_db.rollback()
    rows = platform_db.execute(select(AuditEvent.seq, AuditEvent.detail).order_by(AuditEvent.seq)).all()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    details = [detail for _, detail in rows]
    assert len(details) == len(set(details)) == len(expected) and set(details) == expected
    assert platform_db.scalar(select(func.count()).select_from(AuditPending)) == 0
    position = {detail: seq for seq, detail in rows}
    for detail in expected:
        label, number, index = detail.rsplit("/", 2)
        if int(index):
            assert position[f"{label}/{number}/{int(index) - 1}"] < position[detail]
    checked, problems = audit.verify(_engine(app), app.extensions["hie.keyring"])
    assert (checked, problems) == (len(expected), [])
    head = platform_db.get(AuditChainHead, 1)
    assert head.last_seq == head.signed_seq == len(expected)


def _expected(labels: list[str], requests: int, per_request: int) -> set[str]:
    return {f"{label}/{n}/{i}" for label in labels for n in range(requests) for i in range(per_request)}


def test_a_request_chains_its_own_events_when_no_one_else_is(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    assert platform_db.scalar(select(func.count()).select_from(AuditPending)) == 0
    actions = platform_db.scalars(select(AuditEvent.action).where(AuditEvent.patient == f"yaodu/{patient['id']}")
                                  .order_by(AuditEvent.seq)).all()
    assert actions == ["create"]


@pytest.mark.usefixtures("client")
def test_events_from_many_threads_are_chained_once_in_order(app, platform_db):
    labels = [f"t{n}" for n in range(8)]
    threads = [threading.Thread(target=_requests, args=(app, label, 15, 3)) for label in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _assert_chained_once(app, platform_db, _expected(labels, 15, 3))


@pytest.mark.usefixtures("client")
def test_events_from_two_processes_and_threads_are_chained_once(app, home, platform_db):
    env = {**os.environ, **hie_environ(home), "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", _APPEND_SCRIPT, prefix, "3", "12", "2"], env=env, cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True) for prefix in ("p", "q")]
    _requests(app, "main", 12, 2)
    for process in processes:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
    labels = ["main", *(f"{prefix}{n}" for prefix in ("p", "q") for n in range(3))]
    _assert_chained_once(app, platform_db, _expected(labels, 12, 2))


@pytest.mark.usefixtures("client")
@pytest.mark.parametrize("statement", ["DELETE FROM audit_pending", "UPDATE audit_chain_head"])
def test_a_sequencer_failing_mid_batch_resumes_without_gap_or_duplicate(app, platform_db, monkeypatch, statement):
    """The batch's events are inserted, then the failure: nothing of it stays, and the next run chains it all."""
    monkeypatch.setattr(audit, "chain_pending", lambda *args, **kwargs: 0)
    _requests(app, "early", 2, 2)
    monkeypatch.undo()
    audit.chain_pending(_engine(app), app.extensions["hie.keyring"], wait=True)
    monkeypatch.setattr(audit, "chain_pending", lambda *args, **kwargs: 0)
    _requests(app, "late", 5, 2)
    monkeypatch.undo()

    def fail(_conn, _cursor, sql, *_args) -> None:  # noqa: ANN001
        if sql.lstrip().upper().startswith(statement.upper()):
            raise RuntimeError("sequencer killed mid-batch")

    event.listen(_engine(app), "before_cursor_execute", fail)
    try:
        with pytest.raises(RuntimeError, match="killed mid-batch"):
            audit.chain_pending(_engine(app), app.extensions["hie.keyring"], wait=True, batch=4)
    finally:
        event.remove(_engine(app), "before_cursor_execute", fail)
    assert platform_db.scalar(select(func.count()).select_from(AuditEvent)) == 4
    assert platform_db.scalar(select(func.count()).select_from(AuditPending)) == 10
    assert platform_db.get(AuditChainHead, 1).last_seq == 4
    _assert_chained_once(app, platform_db, _expected(["early"], 2, 2) | _expected(["late"], 5, 2))


def test_events_wait_unchained_until_a_worker_tick(app, client, as_user, platform_db, monkeypatch):
    """With the sequencer busy elsewhere, the request still answers; its events are committed and verified unchained."""
    headers = as_user("yaodu.doctor")
    before = platform_db.scalar(select(func.count()).select_from(AuditEvent))
    monkeypatch.setattr(audit, "chain_pending", lambda *args, **kwargs: 0)
    patient = new_patient(client, headers)
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 200
    platform_db.rollback()
    pending = platform_db.scalars(select(AuditPending.action).where(AuditPending.patient == f"yaodu/{patient['id']}")
                                  .order_by(AuditPending.id)).all()
    assert pending == ["read"]  # the create waits in the shard it wrote, committed with the patient
    with Session(shard_engine(app, "yaodu")) as shard:
        assert shard.scalars(select(ShardAuditPending.action).where(
            ShardAuditPending.patient == f"yaodu/{patient['id']}")).all() == ["create"]
    assert platform_db.scalar(select(func.count()).select_from(AuditEvent)) == before
    shards = {"yaodu": shard_engine(app, "yaodu")}
    checked, problems = audit.verify(_engine(app), app.extensions["hie.keyring"], shards)
    assert problems == [] and checked == before + 2
    monkeypatch.undo()
    assert chain_once(app) == 2
    platform_db.rollback()
    actions = platform_db.scalars(select(AuditEvent.action).where(AuditEvent.patient == f"yaodu/{patient['id']}")
                                  .order_by(AuditEvent.seq)).all()
    assert sorted(actions) == ["create", "read"]
    assert audit.verify(_engine(app), app.extensions["hie.keyring"], shards) == (before + 2, [])


@pytest.mark.usefixtures("client")
def test_an_unchained_event_edited_is_found_and_chained_as_tampered(app, platform_db, monkeypatch):
    monkeypatch.setattr(audit, "chain_pending", lambda *args, **kwargs: 0)
    _requests(app, "x", 1, 3)
    monkeypatch.undo()
    edited = platform_db.scalars(select(AuditPending.id).order_by(AuditPending.id)).all()[1]
    platform_db.execute(update(AuditPending).where(AuditPending.id == edited).values(outcome="denied"))
    platform_db.commit()
    checked, problems = audit.verify(_engine(app), app.extensions["hie.keyring"])
    assert checked == 3
    assert [p.problem for p in problems] == [f"unchained event (audit_pending id {edited}) edited or forged "
                                             "(its MAC does not match)"]
    assert chain_once(app) == 3
    platform_db.rollback()
    tampered = platform_db.scalars(select(AuditEvent).where(AuditEvent.action == "tampered")).one()
    assert (tampered.seq, tampered.resource_id, tampered.outcome) == (2, str(edited), "error")
    assert '"outcome": "denied"' in tampered.detail and '"action": "read"' in tampered.detail
    checked, problems = audit.verify(_engine(app), app.extensions["hie.keyring"])
    assert checked == 3
    assert [(p.seq, p.problem) for p in problems] == [
        (2, f"edited while unchained (audit_pending id {edited}); its stored values are in the event's detail")]


def test_a_failed_platform_commit_leaves_its_events_once_as_errors(app, client, as_user, platform_db):
    """The read's event is staged in the platform transaction: when that commit fails it is written once, as error."""
    headers = as_user("yaodu.doctor")
    patient = new_patient(client, headers)
    platform_url = str(_engine(app).url)

    def fail(session: Session) -> None:
        if has_request_context() and str(session.get_bind().url) == platform_url:
            raise RuntimeError("platform commit failed")

    event.listen(Session, "before_commit", fail)
    try:
        response = client.get(f"/api/v1/patients/{patient['id']}", headers=headers)
    finally:
        event.remove(Session, "before_commit", fail)
    assert response.status_code == 500
    outcomes = platform_db.scalars(select(AuditEvent.outcome).where(
        AuditEvent.patient == f"yaodu/{patient['id']}", AuditEvent.action == "read")).all()
    assert outcomes == ["error"]
    assert platform_db.scalar(select(func.count()).select_from(AuditPending)) == 0


@pytest.mark.skipif(not MYSQL_URL, reason="SQLite has one writer: a request there waits for the write lock anyway")
def test_a_request_does_not_wait_for_a_sequencer_holding_the_head(app, client, as_user, platform_db):
    headers = as_user("yaodu.doctor")
    patient = new_patient(client, headers)
    with _engine(app).connect() as holder:
        holder.begin()
        holder.execute(select(AuditChainHead.last_seq).where(AuditChainHead.id == 1).with_for_update())
        started = time.monotonic()
        assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 200
        assert time.monotonic() - started < 5
        holder.rollback()
    platform_db.rollback()
    assert platform_db.scalars(select(AuditPending.action).where(
        AuditPending.patient == f"yaodu/{patient['id']}")).all() == ["read"]
    assert chain_once(app) == 1
    platform_db.rollback()
    assert platform_db.scalars(select(AuditEvent.action).where(
        AuditEvent.patient == f"yaodu/{patient['id']}").order_by(AuditEvent.seq)).all() == ["create", "read"]
