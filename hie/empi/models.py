"""The EMPI in the platform database: master persons, registered local records, blind blocking keys."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Enum, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class PersonStatus(enum.StrEnum):
    """A merged person keeps its id and points at the survivor, so old references still resolve."""

    active = "active"
    merged = "merged"


class MasterPerson(PlatformBase):
    """One resident of the region, whatever institutions and tenants hold records of them."""

    __tablename__ = "empi_persons"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[PersonStatus] = mapped_column(Enum(PersonStatus, native_enum=False, length=16),
                                                 default=PersonStatus.active)
    merged_into: Mapped[str | None] = mapped_column(ForeignKey("empi_persons.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PersonRecord(PlatformBase):
    """An institution's local record as the EMPI knows it; demographics sealed as one JSON blob."""

    __tablename__ = "empi_records"
    __table_args__ = (UniqueConstraint("institution_id", "local_id", name="uq_empi_records_local"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    tenant_code: Mapped[str] = mapped_column(String(32))
    local_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(36), index=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("empi_persons.id"), index=True)
    demographics_enc: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    match_weight: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class BlockingKey(PlatformBase):
    """HMAC of one blocking key of one record: candidate search without plaintext identifiers."""

    __tablename__ = "empi_blocking_keys"

    key_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    record_id: Mapped[str] = mapped_column(ForeignKey("empi_records.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)


class MatchModel(PlatformBase):
    """Fellegi-Sunter weights, versioned; the newest row is the one in use."""

    __tablename__ = "empi_match_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    weights: Mapped[dict] = mapped_column(JSON)
    trained_on: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegionThresholds(PlatformBase):
    """Per-region link and review thresholds (log2 odds); regions without a row use the defaults."""

    __tablename__ = "empi_thresholds"

    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), primary_key=True)
    link: Mapped[float] = mapped_column(Float)
    review: Mapped[float] = mapped_column(Float)


class ReviewStatus(enum.StrEnum):
    """Where a possible match stands."""

    open = "open"
    linked = "linked"
    not_a_match = "not_a_match"
    superseded = "superseded"


class ReviewItem(PlatformBase):
    """A possible match for a steward: the new record and the closest existing one."""

    __tablename__ = "empi_reviews"
    __table_args__ = (Index("ix_empi_reviews_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(ForeignKey("empi_records.id", ondelete="CASCADE"))
    candidate_id: Mapped[str] = mapped_column(ForeignKey("empi_records.id", ondelete="CASCADE"))
    weight: Mapped[float] = mapped_column(Float)
    levels: Mapped[dict] = mapped_column(JSON)
    veto: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[ReviewStatus] = mapped_column(Enum(ReviewStatus, native_enum=False, length=16),
                                                 default=ReviewStatus.open)
    decided_by: Mapped[int | None] = mapped_column(Integer)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotAMatch(PlatformBase):
    """Two records a steward said are different people; never proposed or auto-linked again."""

    __tablename__ = "empi_not_a_match"

    record_a: Mapped[str] = mapped_column(ForeignKey("empi_records.id", ondelete="CASCADE"), primary_key=True)
    record_b: Mapped[str] = mapped_column(ForeignKey("empi_records.id", ondelete="CASCADE"), primary_key=True)
    decided_by: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PersonEvent(PlatformBase):
    """Append-only history of links, merges and unmerges: what unmerge replays backwards."""

    __tablename__ = "empi_person_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    person_id: Mapped[str] = mapped_column(String(36), index=True)
    other_person_id: Mapped[str | None] = mapped_column(String(36), index=True)
    record_ids: Mapped[list] = mapped_column(JSON, default=list)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    undone_by: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
