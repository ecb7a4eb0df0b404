"""Crash drill: a process writing patients through the app is killed with SIGKILL between the shard's commit and the
platform's, after both, or inside the sequencer's batch; every stored record still has its audit event (committed in
the shard with it), chained exactly once by the next worker tick, and the chain verifies before and after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.patients.models import Patient
from hie.platform.audit import services as audit
from hie.platform.audit.models import AuditEvent, AuditPending, ShardAuditPending
from hie.platform.worker import chain_once
from tests.conftest import PASSWORD, hie_environ, shard_engine

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = 4

_WRITER = """
import os, signal, sys
from flask import g, has_request_context, request
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session
from hie.platform.app import create_app
from hie.platform.config import load_config
from hie.platform.standards import check_digit

mode, kill_at, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = create_app(load_config(dict(os.environ), argon2_time_cost=1, argon2_memory_kib=1024, testing=True))
platform = app.extensions["hie.engines"].platform
seen = {"writes": 0, "deletes": 0}

def creating() -> bool:
    return has_request_context() and request.method == "POST" and request.path == "/api/v1/patients"

def after_commit(session):
    if not (creating() and "audit_staged" in g):
        return
    shard_commit = session.get_bind() is not platform
    if (mode == "after-shard-commit") == shard_commit and mode != "mid-batch":
        seen["writes"] += 1
        if seen["writes"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

def before_execute(_conn, _cursor, sql, *_args):
    if mode == "mid-batch" and creating() and sql.lstrip().upper().startswith("DELETE FROM AUDIT_PENDING"):
        seen["deletes"] += 1
        if seen["deletes"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

event.listen(Session, "after_commit", after_commit)
event.listen(Engine, "before_cursor_execute", before_execute)
client = app.test_client()
token = client.post("/api/v1/auth/token", json={"username": "yaodu.doctor", "password": password}).get_json()
headers = {"Authorization": f"Bearer {token['access_token']}"}
for number in range(2 * kill_at):
    body17 = f"14100219580312{number:03d}"
    response = client.post("/api/v1/patients", headers=headers, json={
        "mrn": f"CRASH-{number}", "name": "王秀英", "sex": "F", "birth_date": "1958-03-12",
        "id_number": body17 + check_digit(body17)})
    assert response.status_code == 201, response.get_data(as_text=True)
    print(response.get_json()["id"], flush=True)
"""


def _stored_patients(app) -> set[str]:  # noqa: ANN001
    with Session(shard_engine(app, "yaodu")) as session:
        return set(session.scalars(select(Patient.id)))


def _create_events(session: Session, model: type[AuditEvent] | type[ShardAuditPending]) -> list[str]:
    return list(session.scalars(select(model.resource_id).where(
        model.action == "create", model.resource_type == "Patient", model.outcome == "success")))


@pytest.mark.parametrize("mode", ["after-shard-commit", "after-commit", "mid-batch"])
def test_a_writer_killed_mid_request_leaves_no_record_without_its_audit_event(app, client, home, platform_db, mode):
    """Killed after the shard committed the patient (the platform not yet), after both commits, or inside the
    sequencer after the chained batch committed and before the shard's pending rows were deleted."""
    env = {**os.environ, **hie_environ(home), "PYTHONPATH": str(ROOT)}
    writer = subprocess.run([sys.executable, "-c", _WRITER, mode, str(KILL_AT), PASSWORD], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert writer.returncode == -signal.SIGKILL, writer.stderr
    acknowledged = set(writer.stdout.split())
    stored = _stored_patients(app)
    assert len(acknowledged) == KILL_AT - 1 and acknowledged < stored and len(stored) == KILL_AT
    engine, ring = app.extensions["hie.engines"].platform, app.extensions["hie.keyring"]
    shards = {"yaodu": shard_engine(app, "yaodu")}

    platform_db.rollback()
    with Session(shards["yaodu"]) as shard:
        unchained = _create_events(shard, ShardAuditPending)
    chained = _create_events(platform_db, AuditEvent)
    assert stored - acknowledged <= set(unchained) | set(chained)
    assert set(chained) | set(unchained) == stored
    checked, problems = audit.verify(engine, ring, shards)
    assert problems == []

    chain_once(app)
    platform_db.rollback()
    assert sorted(_create_events(platform_db, AuditEvent)) == sorted(stored)  # each exactly once
    with Session(shards["yaodu"]) as shard:
        assert shard.scalar(select(func.count()).select_from(ShardAuditPending)) == 0
    assert platform_db.scalar(select(func.count()).select_from(AuditPending)) == 0
    assert audit.verify(engine, ring, shards) == (platform_db.scalar(select(func.count()).select_from(AuditEvent)), [])
