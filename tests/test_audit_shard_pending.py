"""A shard write's audit events commit in the shard's own transaction (audit_pending there) and reach the platform's
chain through the sequencer exactly once, whatever fails between the two databases."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from flask import has_request_context
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from hie.patients.models import Patient
from hie.platform.audit import services as audit
from hie.platform.audit.models import AuditEvent, AuditPending, ShardAuditPending
from hie.platform.config import ConfigError, load_config
from hie.platform.worker import chain_once
from tests.conftest import new_patient, shard_engine, valid_id


def _platform(app):  # noqa: ANN001, ANN202
    return app.extensions["hie.engines"].platform


def _shards(app) -> dict:  # noqa: ANN001
    return {code: shard_engine(app, code) for code in ("quwo", "yaodu")}


def _shard_pending(app, code: str) -> list[ShardAuditPending]:  # noqa: ANN001
    with Session(shard_engine(app, code)) as session:
        return list(session.scalars(select(ShardAuditPending).order_by(ShardAuditPending.id)))


def _events_of(platform_db, patient_ref: str) -> list[tuple[str, str]]:  # noqa: ANN001
    platform_db.rollback()
    return platform_db.execute(select(AuditEvent.action, AuditEvent.outcome).where(
        AuditEvent.patient == patient_ref).order_by(AuditEvent.seq)).all()


@pytest.fixture
def unchained(monkeypatch):
    """Requests leave their events unchained, as when another process holds the chain head."""
    monkeypatch.setattr(audit, "chain_pending", lambda *args, **kwargs: 0)
    return monkeypatch


def test_a_patient_written_to_a_shard_has_its_event_there_not_on_the_platform(app, client, as_user, platform_db,
                                                                             unchained):
    yaodu = new_patient(client, as_user("yaodu.doctor"))
    quwo = new_patient(client, as_user("quwo.doctor"), id_number=valid_id("14102319700101003"))
    assert [(row.action, row.patient) for row in _shard_pending(app, "yaodu")] == [("create", f"yaodu/{yaodu['id']}")]
    assert [(row.action, row.patient) for row in _shard_pending(app, "quwo")] == [("create", f"quwo/{quwo['id']}")]
    platform_db.rollback()
    assert platform_db.scalars(select(AuditPending.action)).all() == ["login", "login"]

    unchained.undo()
    assert chain_once(app) == 4
    assert _events_of(platform_db, f"yaodu/{yaodu['id']}") == [("create", "success")]
    assert _events_of(platform_db, f"quwo/{quwo['id']}") == [("create", "success")]
    assert _shard_pending(app, "yaodu") == [] and _shard_pending(app, "quwo") == []
    origins = platform_db.scalars(select(AuditEvent.origin).where(AuditEvent.action == "create")).all()
    assert sorted(origin.split(":")[0] for origin in origins) == ["quwo", "yaodu"]
    assert audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app)) == (4, [])


def test_a_shard_write_whose_platform_commit_fails_keeps_its_event(app, client, as_user, platform_db):
    """The shard committed the patient and its event; the platform's commit failed: the record is not orphaned."""
    headers = as_user("yaodu.doctor")
    platform_url = str(_platform(app).url)

    def fail(session: Session) -> None:
        if has_request_context() and str(session.get_bind().url) == platform_url:
            raise RuntimeError("platform commit failed")

    event.listen(Session, "before_commit", fail)
    try:
        response = client.post("/api/v1/patients", headers=headers, json={
            "mrn": "MRN-9", "name": "王秀英", "sex": "F", "birth_date": "1958-03-12",
            "id_number": valid_id("14100219580312002")})
    finally:
        event.remove(Session, "before_commit", fail)
    assert response.status_code == 500
    with Session(shard_engine(app, "yaodu")) as shard:
        stored = shard.execute(select(func.count()).select_from(ShardAuditPending)).scalar()
    chain_once(app)
    platform_db.rollback()
    created = platform_db.scalars(select(AuditEvent.resource_id).where(
        AuditEvent.action == "create", AuditEvent.resource_type == "Patient")).all()
    with Session(shard_engine(app, "yaodu")) as shard:
        patients = shard.scalars(select(Patient.id)).all()
    assert stored <= 1 and sorted(created) == sorted(patients) and len(patients) == 1
    assert audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app))[1] == []


def test_a_sequencer_dying_before_the_shard_delete_chains_nothing_twice(app, client, as_user, platform_db, unchained):
    headers = as_user("yaodu.doctor")
    for number in range(3):
        new_patient(client, headers, mrn=f"MRN-{number}", id_number=valid_id(f"1410021958031200{number}"))
    unchained.undo()
    engine = shard_engine(app, "yaodu")

    def die(_conn, _cursor, sql, *_args) -> None:  # noqa: ANN001
        if sql.lstrip().upper().startswith("DELETE FROM AUDIT_PENDING"):
            raise RuntimeError("sequencer killed after the platform's commit")

    event.listen(engine, "before_cursor_execute", die)
    try:
        with pytest.raises(RuntimeError, match="killed after"):
            audit.chain_pending(_platform(app), app.extensions["hie.keyring"], wait=True, shards={"yaodu": engine})
    finally:
        event.remove(engine, "before_cursor_execute", die)
    assert len(_shard_pending(app, "yaodu")) == 3, "chained on the platform, still pending in the shard"
    assert audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app))[1] == []

    chain_once(app)
    platform_db.rollback()
    assert len(platform_db.scalars(select(AuditEvent.seq).where(AuditEvent.action == "create")).all()) == 3
    assert _shard_pending(app, "yaodu") == []
    head_seq = platform_db.scalar(select(func.count()).select_from(AuditEvent))
    assert audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app)) == (head_seq, [])


def test_an_edited_shard_event_is_named_by_verify_and_chained_as_tampered(app, client, as_user, platform_db,
                                                                          unchained):
    patient = new_patient(client, as_user("yaodu.doctor"))
    [row] = _shard_pending(app, "yaodu")
    with Session(shard_engine(app, "yaodu")) as shard:
        shard.execute(update(ShardAuditPending).values(action="read"))
        shard.commit()
    _, problems = audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app))
    assert [p.problem for p in problems] == [f"unchained event (yaodu audit_pending id {row.id}) edited or forged "
                                             "(its MAC does not match)"]
    unchained.undo()
    chain_once(app)
    platform_db.rollback()
    tampered = platform_db.scalars(select(AuditEvent).where(AuditEvent.action == "tampered")).one()
    assert tampered.resource_id.startswith(f"yaodu:{row.id}:") and tampered.patient == f"yaodu/{patient['id']}"
    assert '"action": "read"' in tampered.detail
    _, problems = audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app))
    assert [p.seq for p in problems] == [tampered.seq]


def test_a_read_of_shard_data_is_staged_on_the_platform(app, client, as_user, platform_db, unchained):
    """Reads write no shard: their events go to the platform's audit_pending, committed before the answer."""
    headers = as_user("yaodu.doctor")
    patient = new_patient(client, headers)
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 200
    platform_db.rollback()
    assert platform_db.scalars(select(AuditPending.action).where(
        AuditPending.patient == f"yaodu/{patient['id']}")).all() == ["read"]
    assert [row.action for row in _shard_pending(app, "yaodu")] == ["create"]


@pytest.fixture
def background(app, monkeypatch):
    """HIE_AUDIT_CHAIN_INTERVAL=0.05: requests leave their events to the process's sequencer thread; stopped after."""
    monkeypatch.setitem(app.config, "HIE", dataclasses.replace(app.config["HIE"], audit_chain_interval=0.05))
    yield
    monkeypatch.undo()
    for thread in threading.enumerate():
        if thread.name == "audit-sequencer":
            thread.join(10)


def _wait_until_chained(app, platform_db, seconds: float = 10.0) -> float:  # noqa: ANN001
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        platform_db.rollback()
        if not platform_db.scalar(select(func.count()).select_from(AuditPending)) and not _shard_pending(app, "yaodu"):
            return time.monotonic() - began
        time.sleep(0.02)
    raise AssertionError("events still unchained")


@pytest.mark.usefixtures("background")
def test_with_an_interval_requests_leave_chaining_to_the_sequencer_thread(app, client, as_user, platform_db,
                                                                       monkeypatch):
    headers = as_user("yaodu.doctor")
    chained_in_request: list[int] = []
    real_chain = audit.chain_pending

    def counting(*args, **kwargs) -> int:  # noqa: ANN002, ANN003
        if has_request_context():
            chained_in_request.append(1)
        return real_chain(*args, **kwargs)

    monkeypatch.setattr(audit, "chain_pending", counting)
    patient = new_patient(client, headers)
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 200
    assert chained_in_request == [], "no request chained its own events"
    assert any(thread.name == "audit-sequencer" for thread in threading.enumerate())
    _wait_until_chained(app, platform_db)
    # one chain, but not in time order across databases: a round chains the platform's pending rows, then each shard's
    assert sorted(action for action, _ in _events_of(platform_db, f"yaodu/{patient['id']}")) == ["create", "read"]
    count = platform_db.scalar(select(func.count()).select_from(AuditEvent))
    assert audit.verify(_platform(app), app.extensions["hie.keyring"], _shards(app)) == (count, [])


def test_the_chain_interval_is_validated(tmp_path):
    assert load_config({"HIE_HOME": str(tmp_path)}).audit_chain_interval == 0.2
    assert load_config({"HIE_HOME": str(tmp_path), "HIE_AUDIT_CHAIN_INTERVAL": "0"}).audit_chain_interval == 0
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ConfigError, match="HIE_AUDIT_CHAIN_INTERVAL"):
            load_config({"HIE_HOME": str(tmp_path), "HIE_AUDIT_CHAIN_INTERVAL": bad})
