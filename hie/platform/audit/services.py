"""Recording, chaining and verifying audit events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import Connection, Engine, Row, select, update
from sqlalchemy.orm import Session

from hie.platform.audit.models import AuditChainHead, AuditEvent
from hie.platform.crypto import KeyRing
from hie.platform.db import utcnow

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_CHAINED_FIELDS = (
    "seq", "occurred_at", "user_id", "username", "role", "institution_id", "tenant_code", "patient",
    "action", "resource_type", "resource_id", "purpose", "outcome", "break_glass", "detail",
    "source_ip", "request_id", "prev_hash",
)
_BATCH = 1000


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
    """Queue an event for this request; it is written after the unit of work commits or fails."""
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


def _canonical(event: AuditEvent | Row[Any]) -> bytes:
    values = {name: getattr(event, name) for name in _CHAINED_FIELDS}
    values["occurred_at"] = event.occurred_at.isoformat(timespec="microseconds")
    return json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


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


_HEAD = AuditChainHead.__table__
_EVENTS = AuditEvent.__table__
_LOCK_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(id=1)
_READ_HEAD = select(_HEAD.c.last_seq, _HEAD.c.last_hash, _HEAD.c.signed_seq, _HEAD.c.signed_hash,
                    _HEAD.c.signature).where(_HEAD.c.id == 1)
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1)
_BROKEN = "broken-at:"
_INSERT_EVENT = _EVENTS.insert()
_EVENT_COLUMNS = tuple(column.key for column in _EVENTS.columns)


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


def append(engine: Engine, keyring: KeyRing, events: Iterable[PendingEvent]) -> list[int]:
    """Chain and store events in one short Core transaction that holds the chain head's row lock."""
    rows = [_to_row(event) for event in events]
    if not rows:
        return []
    with engine.begin() as conn:
        head = _locked_head(conn)
        intact = _head_trusted(conn, keyring, head)
        if not intact:
            log.error("audit chain head at event %s fails its signature; appending, the head stays marked",
                      head.last_seq)
        last_seq, last_hash = head.last_seq, head.last_hash
        values = []
        for row in rows:
            row.seq, row.prev_hash = last_seq + 1, last_hash
            row.hash = keyring.audit_mac(_canonical(row))
            last_seq, last_hash = row.seq, row.hash
            values.append({key: getattr(row, key) for key in _EVENT_COLUMNS})
        conn.execute(_INSERT_EVENT, values)
        if intact:
            conn.execute(_MOVE_HEAD, _signed(keyring, last_seq, last_hash))
        else:
            broken = head.signature if (head.signature or "").startswith(_BROKEN) else f"{_BROKEN}{head.last_seq}"
            conn.execute(_MOVE_HEAD, {"last_seq": last_seq, "last_hash": last_hash, "signature": broken})
    return [row.seq for row in rows]


def flush_pending(engine: Engine, keyring: KeyRing, failed: bool) -> None:
    """Write this request's events; if its unit of work failed, successes become errors."""
    pending: list[PendingEvent] = g.pop("audit_pending", [])
    if failed:
        for event in pending:
            if event.outcome == "success":
                event.outcome = "error"
    append(engine, keyring, pending)


@dataclass(frozen=True)
class ChainProblem:
    """One place where the stored chain disagrees with what was written."""

    seq: int
    problem: str


def verify(engine: Engine, keyring: KeyRing) -> tuple[int, list[ChainProblem]]:
    """Recompute the chain; report edited events, deleted events and a truncated tail."""
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
                prev_hash, expected_seq, checked = event.hash, event.seq + 1, checked + 1
                last = event.seq
            session.expunge_all()
        head = session.get(AuditChainHead, 1)
        if head is not None:
            problems.extend(_head_problems(keyring, head, expected_seq - 1, prev_hash, checked))
    return checked, problems


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
