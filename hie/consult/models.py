"""Remote consultation, remote reading and teleteaching: platform-database workflows, since the asking and the
answering institutions may sit in two tenants; the opinion itself is written through the exchange into the
consulting institution's shard."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class Kind(enum.StrEnum):
    """What is asked: an opinion, a multidisciplinary team, or a read of images or an ECG."""

    consultation = "consultation"
    mdt = "mdt"
    imaging_read = "imaging_read"
    ecg_read = "ecg_read"


class Urgency(enum.StrEnum):
    """How soon it must be answered; reads have a turnaround deadline per urgency."""

    routine = "routine"
    urgent = "urgent"


class ConsultStatus(enum.StrEnum):
    """requested -> accepted (scheduled) | declined -> in_session -> opinion_given -> acknowledged -> closed;
    cancelled before the session."""

    requested = "requested"
    accepted = "accepted"
    declined = "declined"
    in_session = "in_session"
    opinion_given = "opinion_given"
    acknowledged = "acknowledged"
    closed = "closed"
    cancelled = "cancelled"


class ParticipantRole(enum.StrEnum):
    """Who takes part in a session."""

    requester = "requester"
    consultant = "consultant"
    patient = "patient"


class Consultation(PlatformBase):
    """One question about one patient, from one institution to another (or to a reading department)."""

    __tablename__ = "consultations"
    __table_args__ = (
        Index("ix_consultations_consultant_box", "consultant_institution_id", "status", "created_at"),
        Index("ix_consultations_requester_box", "requester_institution_id", "status", "created_at"),
        Index("ix_consultations_queue", "consultant_institution_id", "kind", "status", "urgency", "created_at"),
        Index("ix_consultations_status_due", "status", "due_at"),
        Index("ix_consultations_queue_department", "consultant_institution_id", "kind", "department", "status",
              "urgency", "created_at"),
        Index("ix_consultations_claim_expiry", "claim_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[Kind] = mapped_column(Enum(Kind, native_enum=False, length=16))
    urgency: Mapped[Urgency] = mapped_column(Enum(Urgency, native_enum=False, length=10))
    status: Mapped[ConsultStatus] = mapped_column(Enum(ConsultStatus, native_enum=False, length=16))
    requester_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    requester_user_id: Mapped[int] = mapped_column(Integer)
    requester_tenant_code: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(36))
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    consultant_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    department: Mapped[str] = mapped_column(String(100))
    consultant_user_id: Mapped[int | None] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    records: Mapped[list[str]] = mapped_column(JSON)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    video_room: Mapped[str | None] = mapped_column(String(80))
    claimed_by: Mapped[int | None] = mapped_column(Integer)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    overdue_flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when the worker flagged it overdue
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opinion_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsultationStep(PlatformBase):
    """One move of a consultation: who, for which institution, when, from and to which state, and why."""

    __tablename__ = "consultation_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[ConsultStatus | None] = mapped_column(Enum(ConsultStatus, native_enum=False, length=16))
    to_status: Mapped[ConsultStatus] = mapped_column(Enum(ConsultStatus, native_enum=False, length=16))
    user_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(80))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class Participant(PlatformBase):
    """A user invited to a consultation's session; a consultant's sessions may not overlap."""

    __tablename__ = "consultation_participants"
    __table_args__ = (Index("ix_consultation_participants_user", "user_id"),)

    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id", ondelete="CASCADE"),
                                                 primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[ParticipantRole] = mapped_column(Enum(ParticipantRole, native_enum=False, length=12))
    invited_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Attachment(PlatformBase):
    """A file sent with a consultation (image, PDF, DICOM): checked on upload, its content sealed."""

    __tablename__ = "consultation_attachments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content_enc: Mapped[bytes] = mapped_column(LargeBinary(length=2**32 - 1))
    uploaded_by: Mapped[int] = mapped_column(Integer)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SigningKey(PlatformBase):
    """A user's Ed25519 key: the public half in clear, the private half sealed under the key ring."""

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    public_key: Mapped[str] = mapped_column(String(64))
    private_key_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Opinion(PlatformBase):
    """One signed version of a consultant's opinion; a later edit is a new version, never a change."""

    __tablename__ = "consultation_opinions"
    __table_args__ = (UniqueConstraint("consultation_id", "version", name="uq_consultation_opinion_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    canonical: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(100))
    signing_key_id: Mapped[int] = mapped_column(ForeignKey("signing_keys.id"))
    signed_by: Mapped[int] = mapped_column(Integer)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    fhir_reference: Mapped[str | None] = mapped_column(String(120))


class TeachingSession(PlatformBase):
    """A remote lecture: topic, lecturer, time, invited institutions, materials, the recording afterwards."""

    __tablename__ = "teaching_sessions"
    __table_args__ = (Index("ix_teaching_sessions_starts", "starts_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200))
    lecturer_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    host_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    credits: Mapped[float] = mapped_column(Float)
    materials: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    recording_url: Mapped[str | None] = mapped_column(String(500))
    video_room: Mapped[str | None] = mapped_column(String(80))
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeachingInvite(PlatformBase):
    """An institution invited to a session: its clinicians may register."""

    __tablename__ = "teaching_invites"

    session_id: Mapped[str] = mapped_column(ForeignKey("teaching_sessions.id", ondelete="CASCADE"), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), primary_key=True)


class TeachingRegistration(PlatformBase):
    """A clinician registered for a session, with their attendance and the credit it earned."""

    __tablename__ = "teaching_registrations"
    __table_args__ = (Index("ix_teaching_registrations_user", "user_id"),)

    session_id: Mapped[str] = mapped_column(ForeignKey("teaching_sessions.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    credits: Mapped[float | None] = mapped_column(Float)
