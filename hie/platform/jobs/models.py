"""The outbox (one table on the platform and on every shard) and the record of handled events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, TenantBase, UTCDateTime, utcnow


class _OutboxColumns:
    """An event written in the same transaction as the change it announces."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    topic: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class PlatformOutboxEvent(_OutboxColumns, PlatformBase):
    """Events of control-plane changes."""

    __tablename__ = "outbox_events"


class TenantOutboxEvent(_OutboxColumns, TenantBase):
    """Events of a shard's changes, committed atomically with them."""

    __tablename__ = "outbox_events"


class HandledEvent(PlatformBase):
    """(event, handler) pairs already done: delivering an event twice changes nothing."""

    __tablename__ = "handled_events"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    handler: Mapped[str] = mapped_column(String(100), primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
