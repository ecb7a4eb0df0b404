"""Family-doctor workflow tables: teams, contracts, the readings index, follow-ups, alerts and health education.

They live in the platform database, since a team's residents may have records in several tenants; the clinical
content (each reading as a FHIR Observation) is written through the exchange into the team's shard."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class TeamRole(enum.StrEnum):
    """What a member does in a team (not a platform role: a village doctor is a clinician of a village clinic)."""

    lead_doctor = "lead_doctor"
    doctor = "doctor"
    nurse = "nurse"
    public_health = "public_health"
    village_doctor = "village_doctor"


class ContractStatus(enum.StrEnum):
    """Where a contract stands; only `active` opens a care relationship."""

    active = "active"
    expired = "expired"
    renewed = "renewed"
    terminated = "terminated"
    transferred = "transferred"


class Setting(enum.StrEnum):
    """Where a reading was taken."""

    clinic = "clinic"
    home_visit = "home_visit"
    self_device = "self_device"


class Condition(enum.StrEnum):
    """The chronic diseases with scheduled follow-ups (National Basic Public Health Service Specification, 3rd ed.)."""

    hypertension = "hypertension"
    diabetes = "diabetes"


class Classification(enum.StrEnum):
    """A follow-up's verdict, after the specification's tables."""

    controlled = "controlled"
    not_controlled = "not_controlled"
    urgent = "urgent"


class FollowUpStatus(enum.StrEnum):
    """A scheduled follow-up is done, or dropped when its contract ends."""

    scheduled = "scheduled"
    done = "done"
    cancelled = "cancelled"


class Team(PlatformBase):
    """A family-doctor team of a township or community health centre."""

    __tablename__ = "fd_teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamArea(PlatformBase):
    """A village or community (GB/T 2260 region code) the team serves."""

    __tablename__ = "fd_team_areas"

    team_id: Mapped[int] = mapped_column(ForeignKey("fd_teams.id", ondelete="CASCADE"), primary_key=True)
    region_code: Mapped[str] = mapped_column(String(12), primary_key=True)


class TeamMember(PlatformBase):
    """A user in a team; a user serves in one team at a time."""

    __tablename__ = "fd_team_members"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("fd_teams.id", ondelete="CASCADE"), index=True)
    team_role: Mapped[TeamRole] = mapped_column(Enum(TeamRole, native_enum=False, length=20))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Contract(PlatformBase):
    """A resident signed with a team (签约): packages, priority groups, term; one active contract per person."""

    __tablename__ = "fd_contracts"
    __table_args__ = (
        Index("ix_fd_contracts_team_status_end", "team_id", "status", "ends_on"),
        Index("ix_fd_contracts_institution_status", "institution_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("fd_teams.id"))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    tenant_code: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(36))
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    # the person while the contract is active, else NULL: the unique index allows one active contract per person
    active_person_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    packages: Mapped[list[str]] = mapped_column(JSON)
    priority_groups: Mapped[list[str]] = mapped_column(JSON)
    region_code: Mapped[str | None] = mapped_column(String(12))
    status: Mapped[ContractStatus] = mapped_column(Enum(ContractStatus, native_enum=False, length=12))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    signed_by: Mapped[int] = mapped_column(Integer)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[int | None] = mapped_column(Integer)
    end_reason: Mapped[str | None] = mapped_column(Text)
    previous_id: Mapped[str | None] = mapped_column(ForeignKey("fd_contracts.id"), index=True)


class Vitals(PlatformBase):
    """One set of readings taken at one time: the module's index of the Observations it wrote, for trends and figures.

    (user_id, client_id) makes an offline upload idempotent per entry."""

    __tablename__ = "fd_vitals"
    __table_args__ = (
        UniqueConstraint("user_id", "client_id", name="uq_fd_vitals_client"),
        Index("ix_fd_vitals_person_taken", "master_person_id", "taken_at"),
        Index("ix_fd_vitals_team_taken", "team_id", "taken_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str] = mapped_column(String(64))
    master_person_id: Mapped[str] = mapped_column(String(36))
    tenant_code: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(36))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("fd_teams.id"))
    contract_id: Mapped[str | None] = mapped_column(ForeignKey("fd_contracts.id"))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    setting: Mapped[Setting] = mapped_column(Enum(Setting, native_enum=False, length=12))
    self_reported: Mapped[bool] = mapped_column(Boolean, default=False)
    systolic: Mapped[float | None] = mapped_column(Float)
    diastolic: Mapped[float | None] = mapped_column(Float)
    heart_rate: Mapped[float | None] = mapped_column(Float)
    fasting_glucose: Mapped[float | None] = mapped_column(Float)
    random_glucose: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[float | None] = mapped_column(Float)
    height: Mapped[float | None] = mapped_column(Float)
    bmi: Mapped[float | None] = mapped_column(Float)
    waist: Mapped[float | None] = mapped_column(Float)
    spo2: Mapped[float | None] = mapped_column(Float)
    temperature: Mapped[float | None] = mapped_column(Float)
    observations: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FollowUp(PlatformBase):
    """A chronic-disease follow-up: scheduled with a due date, then done with its form and classification."""

    __tablename__ = "fd_follow_ups"
    __table_args__ = (
        Index("ix_fd_follow_ups_team_due", "team_id", "status", "due_on"),
        Index("ix_fd_follow_ups_person_condition", "master_person_id", "condition", "done_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    contract_id: Mapped[str] = mapped_column(ForeignKey("fd_contracts.id"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("fd_teams.id"))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    master_person_id: Mapped[str] = mapped_column(String(36))
    condition: Mapped[Condition] = mapped_column(Enum(Condition, native_enum=False, length=16))
    status: Mapped[FollowUpStatus] = mapped_column(Enum(FollowUpStatus, native_enum=False, length=12))
    due_on: Mapped[date] = mapped_column(Date)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_by: Mapped[int | None] = mapped_column(Integer)
    face_to_face: Mapped[bool | None] = mapped_column(Boolean)
    form: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    systolic: Mapped[float | None] = mapped_column(Float)
    diastolic: Mapped[float | None] = mapped_column(Float)
    fasting_glucose: Mapped[float | None] = mapped_column(Float)
    classification: Mapped[Classification | None] = mapped_column(
        Enum(Classification, native_enum=False, length=16))
    vitals_id: Mapped[int | None] = mapped_column(ForeignKey("fd_vitals.id"))
    referral_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(PlatformBase):
    """Something the team must look at: an alarming reading, an urgent follow-up, a referral to make."""

    __tablename__ = "fd_alerts"
    __table_args__ = (Index("ix_fd_alerts_team_open", "team_id", "resolved_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("fd_teams.id"))
    contract_id: Mapped[str | None] = mapped_column(ForeignKey("fd_contracts.id"))
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(String(500))
    vitals_id: Mapped[int | None] = mapped_column(ForeignKey("fd_vitals.id"))
    follow_up_id: Mapped[str | None] = mapped_column(ForeignKey("fd_follow_ups.id"))
    draft_referral: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[int | None] = mapped_column(Integer)
    resolution: Mapped[str | None] = mapped_column(String(500))


class Article(PlatformBase):
    """A health-education article of a tenant, tagged by condition and priority group."""

    __tablename__ = "fd_articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON)
    author_id: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Population(PlatformBase):
    """The registered population of a priority group in a region and year, loaded by administrators: coverage's
    denominator (`hie family-doctor population import`)."""

    __tablename__ = "fd_populations"

    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), primary_key=True)
    priority_group: Mapped[str] = mapped_column(String(40), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    persons: Mapped[int] = mapped_column(Integer)
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(PlatformBase):
    """An article delivered to one resident (master person), with its read receipt."""

    __tablename__ = "fd_deliveries"
    __table_args__ = (UniqueConstraint("article_id", "master_person_id", name="uq_fd_delivery"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("fd_articles.id", ondelete="CASCADE"))
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
