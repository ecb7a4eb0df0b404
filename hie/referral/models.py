"""Referrals between institutions: a platform-database workflow, since sender and receiver may sit in two tenants."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class Direction(enum.StrEnum):
    """Up to a higher level, down to a lower one (or the family-doctor team), lateral to the same level."""

    up = "up"
    down = "down"
    lateral = "lateral"


class Urgency(enum.StrEnum):
    """How soon the receiver must answer; each has its own deadline."""

    routine = "routine"
    urgent = "urgent"
    emergency = "emergency"


class ReferralStatus(enum.StrEnum):
    """The states of a referral, after FHIR Task."""

    requested = "requested"
    accepted = "accepted"
    declined = "declined"
    arrived = "arrived"
    completed = "completed"
    cancelled = "cancelled"
    no_show = "no_show"



class Referral(PlatformBase):
    """One patient sent from one institution to another, with what goes with them and where it stands."""

    __tablename__ = "referrals"
    __table_args__ = (
        Index("ix_referrals_receiver_box", "receiver_institution_id", "status", "created_at"),
        Index("ix_referrals_sender_box", "sender_institution_id", "status", "created_at"),
        Index("ix_referrals_status_due", "status", "due_at"),
        Index("ix_referrals_receiver_newest", "receiver_institution_id", "created_at"),
        Index("ix_referrals_sender_newest", "sender_institution_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    direction: Mapped[Direction] = mapped_column(Enum(Direction, native_enum=False, length=10))
    urgency: Mapped[Urgency] = mapped_column(Enum(Urgency, native_enum=False, length=10))
    status: Mapped[ReferralStatus] = mapped_column(Enum(ReferralStatus, native_enum=False, length=12))
    sender_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    sender_tenant_code: Mapped[str] = mapped_column(String(32))
    sender_patient_id: Mapped[str] = mapped_column(String(36))
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    receiver_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    receiver_department: Mapped[str | None] = mapped_column(String(100))
    receiver_patient_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(Text)
    diagnoses: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    clinical_summary: Mapped[str | None] = mapped_column(Text)
    records: Mapped[list[str]] = mapped_column(JSON)
    appointment_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    discharge_summary: Mapped[str | None] = mapped_column(Text)
    follow_up_of: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"), index=True)
    requested_by: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReferralStep(PlatformBase):
    """One move of a referral: who made it, for which institution, when, from and to which state, and why."""

    __tablename__ = "referral_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[ReferralStatus | None] = mapped_column(Enum(ReferralStatus, native_enum=False, length=12))
    to_status: Mapped[ReferralStatus] = mapped_column(Enum(ReferralStatus, native_enum=False, length=12))
    user_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(200))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class ReferralDeadline(PlatformBase):
    """A tenant's own answer deadline for one urgency, in minutes; without a row the default applies."""

    __tablename__ = "referral_deadlines"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    urgency: Mapped[Urgency] = mapped_column(Enum(Urgency, native_enum=False, length=10), primary_key=True)
    minutes: Mapped[int] = mapped_column(Integer)


class ReferralSlot(PlatformBase):
    """How many referred patients a receiving department takes on one day, and how many are booked."""

    __tablename__ = "referral_slots"
    __table_args__ = (
        CheckConstraint("booked >= 0 AND booked <= capacity", name="within_capacity"),
        Index("ix_referral_slots_department_day", "department", "day"),
    )

    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), primary_key=True)
    department: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    capacity: Mapped[int] = mapped_column(Integer)
    booked: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationKind(enum.StrEnum):
    """What a notification tells: a step of the other side, or a missed deadline."""

    new_referral = "new_referral"
    accepted = "accepted"
    declined = "declined"
    arrived = "arrived"
    completed = "completed"
    cancelled = "cancelled"
    no_show = "no_show"
    overdue_reminder = "overdue_reminder"
    overdue_escalation = "overdue_escalation"


class Notification(PlatformBase):
    """One notice about a referral for an institution (or a tenant's holders of a role); ids only, never names."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("referral_id", "kind", name="uq_notifications_referral_kind"),
        Index("ix_notifications_inbox", "tenant_id", "institution_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    role: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[int | None] = mapped_column(Integer)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"))
    kind: Mapped[NotificationKind] = mapped_column(Enum(NotificationKind, native_enum=False, length=20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationRead(PlatformBase):
    """When one user read one notification: read state is per user, not per institution."""

    __tablename__ = "notification_reads"

    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"),
                                                 primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InstitutionWebhook(PlatformBase):
    """Where an institution's own system wants its notifications POSTed, and the sealed secret that signs them."""

    __tablename__ = "institution_webhooks"

    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    secret_enc: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(PlatformBase):
    """One notification on its way to an institution's webhook, retried with backoff until delivered."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"), unique=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
