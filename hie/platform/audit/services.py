"""Recording audit events, chaining them (the sequencer) and verifying the chain."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import current_app, g, has_request_context, request
from sqlalchemy import Connection, Engine, Row, select, update
from sqlalchemy.event import listen
from sqlalchemy.orm import Session

from hie.platform.audit import sequencer
from hie.platform.audit.models import AuditChainHead, AuditEvent, AuditPending, ShardAuditPending
from hie.platform.crypto import KeyRing
from hie.platform.db import platform_session, utcnow, written_shards
from hie.platform.errors import database_unreachable, log_outage

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_CHAINED_FIELDS = (
    "seq", "occurred_at", "user_id", "username", "role", "institution_id", "tenant_code", "patient",
    "action", "resource_type", "resource_id", "purpose", "outcome", "break_glass", "detail",
    "source_ip", "request_id", "prev_hash",
)
_PENDING_FIELDS = tuple(name for name in _CHAINED_FIELDS if name not in ("seq", "prev_hash"))
_BATCH = 1000
_CHAIN_BATCH = 500
_sequencing = threading.Lock()  # one sequencer per process; the head row's lock makes it one across processes


@dataclass
class PendingEvent:
    """An audit event waiting for its request's outcome before it is chained."""

    action: str
    outcome: str
    resource_type: str | None = None
    resource_id: str | None = None
    patient: str | None = None
    purpose: str | None = None
    break_glass: bool = False
    detail: str | None = None
    actor: dict[str, object] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=utcnow)


def patient_ref(tenant_code: str, patient_id: str) -> str:
    """How the audit names a patient record: its shard and its id."""
    return f"{tenant_code}/{patient_id}"


def record(action: str, outcome: str = "success", **fields: object) -> PendingEvent:
    """Queue an event for this request; it commits with the request's platform transaction, or after it if that
    rolled back or failed."""
    identity = g.get("identity")
    actor: dict[str, object] = {}
    if identity is not None:
        actor = {
            "user_id": identity.user_id,
            "username": identity.username,
            "role": identity.role_label,
            "institution_id": identity.institution_id,
            "tenant_code": identity.tenant_code,
        }
    actor.update(fields.pop("actor", None) or {})  # type: ignore[arg-type]
    event = PendingEvent(action=action, outcome=outcome, actor=actor, **fields)  # type: ignore[arg-type]
    g.setdefault("audit_pending", []).append(event)
    return event


def _canonical_values(values: Mapping[str, Any], names: tuple[str, ...], prefix: bytes = b"") -> bytes:
    data = {name: values[name] for name in names}
    data["occurred_at"] = values["occurred_at"].isoformat(timespec="microseconds")
    if values.get("origin") is not None:
        data["origin"] = values["origin"]  # only events chained from a shard have one: older hashes stay valid
    return prefix + json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _canonical(event: AuditEvent | Row[Any]) -> bytes:
    values = {name: getattr(event, name) for name in _CHAINED_FIELDS}
    values["origin"] = event.origin
    return _canonical_values(values, _CHAINED_FIELDS)


def _pending_mac(keyring: KeyRing, values: Mapping[str, Any]) -> str:
    """MAC of an unchained event: an edit, or a row forged without the audit key, is found before it is chained."""
    return keyring.audit_mac(_canonical_values(values, _PENDING_FIELDS, b"audit_pending|"))


def _to_row(pending: PendingEvent) -> AuditEvent:
    source_ip = request.remote_addr if has_request_context() else None
    return AuditEvent(
        occurred_at=pending.occurred_at,
        user_id=pending.actor.get("user_id"),
        username=pending.actor.get("username"),
        role=pending.actor.get("role"),
        institution_id=pending.actor.get("institution_id"),
        tenant_code=pending.actor.get("tenant_code"),
        patient=pending.patient,
        action=pending.action,
        resource_type=pending.resource_type,
        resource_id=pending.resource_id,
        purpose=pending.purpose,
        outcome=pending.outcome,
        break_glass=pending.break_glass,
        detail=pending.detail,
        source_ip=source_ip,
        request_id=g.get("request_id") if has_request_context() else None,
    )


def _pending_values(keyring: KeyRing, events: Iterable[PendingEvent]) -> list[dict[str, Any]]:
    """Rows for audit_pending, each with its MAC."""
    values = []
    for item in events:
        row = _to_row(item)
        value = {name: getattr(row, name) for name in _PENDING_FIELDS}
        value["mac"] = _pending_mac(keyring, value)
        values.append(value)
    return values


_HEAD = AuditChainHead.__table__
_EVENTS = AuditEvent.__table__
_PENDING = AuditPending.__table__
_SHARD_PENDING = ShardAuditPending.__table__
_LOCK_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(id=1)
_READ_HEAD = select(_HEAD.c.last_seq, _HEAD.c.last_hash, _HEAD.c.signed_seq, _HEAD.c.signed_hash,
                    _HEAD.c.signature).where(_HEAD.c.id == 1)
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1)
_BROKEN = "broken-at:"
_INSERT_EVENT = _EVENTS.insert()
_INSERT_PENDING = _PENDING.insert()
_TAMPERED = "tampered"


def head_signature(keyring: KeyRing, seq: int, hash_: str) -> str:
    """HMAC of a chain head: cutting events off the tail and moving the head back needs the audit key."""
    return keyring.audit_mac(f"audit_chain_head|{seq}|{hash_}".encode())


def _signed(keyring: KeyRing, last_seq: int, last_hash: str) -> dict[str, object]:
    return {"last_seq": last_seq, "last_hash": last_hash, "signed_seq": last_seq, "signed_hash": last_hash,
            "signature": head_signature(keyring, last_seq, last_hash)}


def _at_genesis(head: Row[Any] | AuditChainHead) -> bool:
    return head.last_seq == 0 and head.last_hash == GENESIS_HASH


def _signature_valid(keyring: KeyRing, head: Row[Any] | AuditChainHead) -> bool:
    """The signature covers the signed (seq, hash); NULL or a broken-at marker never matches."""
    return head.signed_seq is not None and head.signed_hash is not None and \
        head.signature == head_signature(keyring, head.signed_seq, head.signed_hash)


def _links_to_head(conn: Connection, keyring: KeyRing, head: Row[Any]) -> bool:
    """Whether the stored events chain, MACs valid, from the signed head up to the current (unsigned) one."""
    if head.last_seq < head.signed_seq:
        return False
    seq, prev_hash = head.signed_seq, head.signed_hash
    if seq and conn.scalar(select(_EVENTS.c.hash).where(_EVENTS.c.seq == seq)) != prev_hash:
        return False
    while seq < head.last_seq:
        batch = conn.execute(select(_EVENTS).where(_EVENTS.c.seq > seq, _EVENTS.c.seq <= head.last_seq)
                             .order_by(_EVENTS.c.seq).limit(_BATCH)).all()
        if not batch:
            return False
        for event in batch:
            if event.seq != seq + 1 or event.prev_hash != prev_hash or \
                    keyring.audit_mac(_canonical(event)) != event.hash:
                return False
            seq, prev_hash = event.seq, event.hash
    return prev_hash == head.last_hash


def _head_trusted(conn: Connection, keyring: KeyRing, head: Row[Any]) -> bool:
    """Whether the head is at genesis, or descends by intact events from its validly signed state."""
    # Processes of the release before head signing, still running during a rolling upgrade, move
    # last_seq/last_hash without signing; the signed (seq, hash) they leave alone anchors the check.
    if _at_genesis(head):
        return True
    if not _signature_valid(keyring, head):
        return False
    if (head.last_seq, head.last_hash) == (head.signed_seq, head.signed_hash):
        return True
    if not _links_to_head(conn, keyring, head):
        return False
    log.warning("audit events %s-%s were appended without signing the chain head (a process of the previous "
                "release); they chain from the signed head, so it is signed again", head.signed_seq + 1, head.last_seq)
    return True


def _locked_head(conn: Connection) -> Row[Any]:
    """The chain head, locked for this transaction: SELECT ... FOR UPDATE where the database has row locks
    (one round trip), else a write to the head first, which takes SQLite's database write lock at once."""
    if conn.dialect.name == "sqlite":
        conn.execute(_LOCK_HEAD)
        return conn.execute(_READ_HEAD).one()
    return conn.execute(_READ_HEAD.with_for_update()).one()


def sign_unsigned_head(engine: Engine, keyring: KeyRing) -> bool:
    """After the upgrade that added head signatures, sign a head written before it (signature NULL)."""
    with engine.begin() as conn:
        head = _locked_head(conn)
        if head.signature is not None:
            return False
        conn.execute(_MOVE_HEAD, _signed(keyring, head.last_seq, head.last_hash))
    log.warning("audit chain head at event %s was unsigned (written before signing); signed it now", head.last_seq)
    return True


def _tamper_record(row: Row[Any], where: str) -> dict[str, Any]:
    """What is chained in place of an unchained event whose MAC fails: its stored values, marked, so the edit
    stays on the record (and `verify` names it) instead of being sealed into the chain as genuine."""
    stored = {name: getattr(row, name) for name in ("action", "outcome", "resource_type", "resource_id")}
    stored["detail"] = (row.detail or "")[:2000]
    values = {name: getattr(row, name) for name in _PENDING_FIELDS}
    values.update(action=_TAMPERED, outcome="error", resource_type="audit_pending", resource_id=where,
                  detail=json.dumps({"stored": stored}, ensure_ascii=False, sort_keys=True))
    return values


def _chain_batch(conn: Connection, keyring: KeyRing, head: Row[Any], rows: list[Row[Any]],
                 shard: str | None = None) -> None:
    """Chain pending rows after the locked head and move the head, in one transaction; the platform's pending rows
    are deleted in it, a shard's are marked by origin (the caller deletes them from the shard afterwards)."""
    intact = _head_trusted(conn, keyring, head)
    if not intact:
        log.error("audit chain head at event %s fails its signature; chaining, the head stays marked", head.last_seq)
    last_seq, last_hash = head.last_seq, head.last_hash
    values = []
    for row in rows:
        value = {name: getattr(row, name) for name in _PENDING_FIELDS}
        origin = _origin(shard, row) if shard is not None else None
        if _pending_mac(keyring, value) != row.mac:
            log.error("unchained audit event %s was edited before it was chained; chained as %r",
                      origin or row.id, _TAMPERED)
            value = _tamper_record(row, origin or str(row.id))
        value.update(seq=last_seq + 1, prev_hash=last_hash, origin=origin)
        value["hash"] = keyring.audit_mac(_canonical_values(value, _CHAINED_FIELDS))
        last_seq, last_hash = value["seq"], value["hash"]
        values.append(value)
    conn.execute(_INSERT_EVENT, values)
    if shard is None:
        conn.execute(_PENDING.delete().where(_PENDING.c.id.in_([row.id for row in rows])))
    if intact:
        conn.execute(_MOVE_HEAD, _signed(keyring, last_seq, last_hash))
    else:
        broken = head.signature if (head.signature or "").startswith(_BROKEN) else f"{_BROKEN}{head.last_seq}"
        conn.execute(_MOVE_HEAD, {"last_seq": last_seq, "last_hash": last_hash, "signature": broken})


def _head_if_free(conn: Connection, wait: bool) -> Row[Any] | None:
    """The locked chain head; without wait, None at once when another sequencer holds it (MariaDB/MySQL SKIP
    LOCKED). SQLite always waits: it has one writer anyway, and a chain step is a few statements."""
    if wait or conn.dialect.name == "sqlite":
        return _locked_head(conn)
    return conn.execute(_READ_HEAD.with_for_update(skip_locked=True)).one_or_none()


def chain_pending(engine: Engine, keyring: KeyRing, wait: bool = False, batch: int = _CHAIN_BATCH,
                  shards: Mapping[str, Engine] | None = None) -> int:
    """Chain unchained events, the platform's then each shard's, a batch per transaction, one sequencer at a time;
    returns how many. Without wait it gives up at once when another thread or process is chaining: that run, the
    next request's or the worker's next tick takes ours."""
    wait = wait or engine.dialect.name == "sqlite"
    if not _sequencing.acquire(blocking=wait):
        return 0
    try:
        chained = _chain_platform(engine, keyring, wait, batch)
        for code, shard in (shards or {}).items():
            if chained is None:
                break
            more = _chain_shard(engine, keyring, code, shard, wait, batch)
            chained = None if more is None else chained + more
        return chained or 0
    finally:
        _sequencing.release()


def _chain_platform(engine: Engine, keyring: KeyRing, wait: bool, batch: int) -> int | None:
    """The platform's pending events; None when another sequencer holds the head."""
    chained = 0
    while True:
        with engine.begin() as conn:
            head = _head_if_free(conn, wait)
            if head is None:
                return chained or None
            rows = list(conn.execute(select(_PENDING).order_by(_PENDING.c.id).limit(batch)))
            if rows:
                _chain_batch(conn, keyring, head, rows)
        chained += len(rows)
        if len(rows) < batch:
            return chained


def _origin(code: str, row: Row[Any]) -> str:
    """A shard row's name in the chain: its id with part of its MAC, unique even where a database reuses the ids of
    deleted rows (SQLite does)."""
    return f"{code}:{row.id}:{row.mac[:16]}"


def _chain_shard(engine: Engine, keyring: KeyRing, code: str, shard: Engine, wait: bool, batch: int) -> int | None:
    """One shard's pending events: read from the shard, chained (by origin, once) under the platform head's lock,
    then deleted from the shard. A sequencer dying between the two commits leaves rows the next run finds chained
    already and only deletes. No lock of one database is held while waiting on the other."""
    chained = 0
    while True:
        with shard.connect() as sconn:
            rows = list(sconn.execute(select(_SHARD_PENDING).order_by(_SHARD_PENDING.c.id).limit(batch)))
        if not rows:
            return chained
        with engine.begin() as conn:
            head = _head_if_free(conn, wait)
            if head is None:
                return chained or None
            done = set(conn.scalars(select(_EVENTS.c.origin).where(
                _EVENTS.c.origin.in_([_origin(code, row) for row in rows]))))
            fresh = [row for row in rows if _origin(code, row) not in done]
            if fresh:
                _chain_batch(conn, keyring, head, fresh, shard=code)
        with shard.begin() as sconn:
            sconn.execute(_SHARD_PENDING.delete().where(_SHARD_PENDING.c.id.in_([row.id for row in rows])))
        chained += len(fresh)
        if len(rows) < batch:
            return chained


def append(engine: Engine, keyring: KeyRing, events: Iterable[PendingEvent]) -> int:
    """Store events and chain them before returning: for work outside a request (commands, tests)."""
    values = _pending_values(keyring, events)
    if values:
        with engine.begin() as conn:
            conn.execute(_INSERT_PENDING, values)
    return chain_pending(engine, keyring, wait=True)


def _mark_committed(_session: Session) -> None:
    g.audit_staged_committed = True


def stage_pending(failed: bool) -> None:
    """Insert this request's events into the Session of the database it wrote before the unit of work commits: the
    shard it wrote (the first, if several), else the platform. A write and its events commit together (or neither);
    a read's events commit before its response is sent."""
    if failed and not g.get("keep_changes_on_error", False):
        return
    pending: list[PendingEvent] = g.pop("audit_pending", [])
    if not pending:
        return
    if failed:
        _mark_failed(pending)
    g.audit_staged = pending
    written = written_shards()
    if written:
        code, session = written[0]
        g.audit_staged_shard = (code, session.get_bind())
        insert = _SHARD_PENDING.insert()
    else:
        session, insert = platform_session(), _INSERT_PENDING
    listen(session, "after_commit", _mark_committed, once=True)
    session.execute(insert, _pending_values(current_app.extensions["hie.keyring"], pending))


def _mark_failed(pending: list[PendingEvent]) -> None:
    for item in pending:
        if item.outcome == "success":
            item.outcome = "error"


def flush_pending(engine: Engine, keyring: KeyRing, failed: bool) -> None:
    """After the unit of work: write the events it did not commit (a refusal's, or all of them when its commit
    failed: successes become errors) in their own transaction; then hand them to the process's sequencer thread,
    or (HIE_AUDIT_CHAIN_INTERVAL=0) chain what is pending now if no one else is."""
    pending: list[PendingEvent] = g.pop("audit_pending", [])
    staged: list[PendingEvent] = g.pop("audit_staged", [])
    committed = g.pop("audit_staged_committed", False)
    shard = g.pop("audit_staged_shard", None)
    if not committed:
        pending = staged + pending
    if failed:
        _mark_failed(pending)
    values = _pending_values(keyring, pending)
    if values:
        with engine.begin() as conn:
            conn.execute(_INSERT_PENDING, values)
    if not (values or committed):
        return  # a request that wrote no event (health checks, static files) leaves the chaining to others
    if has_request_context() and current_app.config["HIE"].audit_chain_interval > 0:
        sequencer.hand_over(current_app._get_current_object(), shard if committed else None, chain_pending)
        return
    try:
        chain_pending(engine, keyring, shards=dict([shard]) if shard is not None and committed else None)
    except Exception as exc:
        if not database_unreachable(exc):
            log.exception("chaining audit events failed; they stay pending for the next request or worker tick")
        elif has_request_context():
            log_outage(exc)


@dataclass(frozen=True)
class ChainProblem:
    """One place where the stored chain disagrees with what was written."""

    seq: int
    problem: str


def verify(engine: Engine, keyring: KeyRing,
           shards: Mapping[str, Engine] | None = None) -> tuple[int, list[ChainProblem]]:
    """Recompute the chain and check the unchained tail; report edited events, deleted events and a truncated tail."""
    problems: list[ChainProblem] = []
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    with Session(engine) as session:
        last = 0
        while True:
            batch = session.scalars(
                select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(_BATCH)
            ).all()
            if not batch:
                break
            for event in batch:
                if event.seq != expected_seq:
                    missing = f"{expected_seq}" if event.seq == expected_seq + 1 else (
                        f"{expected_seq}-{event.seq - 1}")
                    problems.append(ChainProblem(expected_seq, f"event(s) {missing} deleted"))
                elif event.prev_hash != prev_hash:
                    problems.append(ChainProblem(event.seq, "previous event was edited or removed"))
                if keyring.audit_mac(_canonical(event)) != event.hash:
                    problems.append(ChainProblem(event.seq, "event edited (its hash does not match)"))
                elif event.action == _TAMPERED:
                    problems.append(ChainProblem(event.seq, f"edited while unchained (audit_pending id "
                                                 f"{event.resource_id}); its stored values are in the event's detail"))
                prev_hash, expected_seq, checked = event.hash, event.seq + 1, checked + 1
                last = event.seq
            session.expunge_all()
        head = session.get(AuditChainHead, 1)
        if head is not None:
            problems.extend(_head_problems(keyring, head, expected_seq - 1, prev_hash, checked))
        tail, tail_problems = _pending_problems(session.connection(), keyring, expected_seq - 1, _PENDING)
    for code, shard in (shards or {}).items():
        with shard.connect() as conn:
            more, more_problems = _pending_problems(conn, keyring, expected_seq - 1, _SHARD_PENDING, code)
        tail, tail_problems = tail + more, tail_problems + more_problems
    return checked + tail, problems + tail_problems


def _pending_problems(conn: Connection, keyring: KeyRing, last_seq: int, table: Any,
                      shard: str | None = None) -> tuple[int, list[ChainProblem]]:
    """An unchained tail (the platform's or a shard's), in insertion order: every row must carry its MAC (an edit or
    a forgery is named)."""
    where = f"{shard} " if shard else ""
    problems, checked, last = [], 0, 0
    while True:
        rows = conn.execute(select(table).where(table.c.id > last).order_by(table.c.id).limit(_BATCH)).all()
        if not rows:
            return checked, problems
        for row in rows:
            if _pending_mac(keyring, {name: getattr(row, name) for name in _PENDING_FIELDS}) != row.mac:
                problems.append(ChainProblem(last_seq, f"unchained event ({where}audit_pending id {row.id}) edited or "
                                             "forged (its MAC does not match)"))
            checked, last = checked + 1, row.id


def _head_problems(keyring: KeyRing, head: AuditChainHead, last_seq: int, last_hash: str,
                   count: int) -> list[ChainProblem]:
    """The head must descend from its signed state, agree with the last stored event, and count every event."""
    problems = []
    signature = head.signature or ""
    if signature.startswith(_BROKEN) and signature[len(_BROKEN):].isdigit():
        problems.append(ChainProblem(int(signature[len(_BROKEN):]), "chain head forged or moved (found by a later "
                                     "append); events after it may have been deleted"))
    elif not (count == 0 and _at_genesis(head)) and not _signature_valid(keyring, head):
        problems.append(ChainProblem(head.last_seq, "chain head forged or moved (its signature does not match); "
                                     "events after it may have been deleted"))
    elif not _at_genesis(head) and head.last_seq < (head.signed_seq or 0):
        problems.append(ChainProblem(head.last_seq, f"chain head forged or moved (back from event {head.signed_seq}, "
                                     "where it was signed); events after it may have been deleted"))
    if head.last_seq > last_seq:
        problems.append(ChainProblem(last_seq + 1, f"event(s) {last_seq + 1}-{head.last_seq} deleted"))
    elif head.last_seq < last_seq:
        problems.append(ChainProblem(head.last_seq + 1, f"event(s) {head.last_seq + 1}-{last_seq} stored beyond "
                                     "the chain head"))
    elif head.last_hash != last_hash:
        problems.append(ChainProblem(head.last_seq, "last event edited (chain head disagrees)"))
    if count != head.last_seq:
        problems.append(ChainProblem(head.last_seq, f"{count} events stored but the chain head counts "
                                     f"{head.last_seq}"))
    return problems
