"""The append-only, hash-chained audit trail (platform database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, TenantBase, UTCDateTime


class AuditEvent(PlatformBase):
    """Who did what to which patient's data, from where, why, and how it ended."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    user_id: Mapped[int | None] = mapped_column(index=True)
    username: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(200))
    institution_id: Mapped[int | None]
    tenant_code: Mapped[str | None] = mapped_column(String(32), index=True)
    patient: Mapped[str | None] = mapped_column(String(80), index=True)
    action: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(80))
    purpose: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str | None] = mapped_column(Text)
    source_ip: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # "<tenant>:<id>:<mac prefix>" of the shard's audit_pending row it was chained from: a batch chained but not yet
    # deleted from the shard when its sequencer died is recognised, not chained twice. Hashed when set.
    origin: Mapped[str | None] = mapped_column(String(80), unique=True)


class _PendingColumns:
    """An event committed with the change it records but not yet chained: inserted without the chain head's lock."""

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None]
    username: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(200))
    institution_id: Mapped[int | None]
    tenant_code: Mapped[str | None] = mapped_column(String(32))
    patient: Mapped[str | None] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(80))
    purpose: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str | None] = mapped_column(Text)
    source_ip: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class AuditPending(_PendingColumns, PlatformBase):
    """Unchained events of requests that wrote no shard (platform writes, reads, refusals)."""

    __tablename__ = "audit_pending"


class ShardAuditPending(_PendingColumns, TenantBase):
    """Unchained events of a request that wrote this shard, committed in the shard's transaction with the write."""

    __tablename__ = "audit_pending"


class AuditChainHead(PlatformBase):
    """Last sequence number and hash, and the last head signed with the audit key; its row lock admits one sequencer."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    signed_seq: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    signed_hash: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(String(64))
