"""Regions, tenants with their shard map, and member institutions (platform database)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class RegionLevel(enum.StrEnum):
    """The four levels of the city's administrative tree (GB/T 2260 and below)."""

    province = "province"
    city = "city"
    county = "county"
    township = "township"
    village = "village"


class InstitutionLevel(enum.StrEnum):
    """The tiers of the health system that referrals move between."""

    tertiary_hospital = "tertiary_hospital"
    secondary_hospital = "secondary_hospital"
    township_health_centre = "township_health_centre"
    community_health_centre = "community_health_centre"
    village_clinic = "village_clinic"
    administration = "administration"


class InstitutionType(enum.StrEnum):
    """What an institution does, beside its tier."""

    general_hospital = "general_hospital"
    tcm_hospital = "tcm_hospital"
    maternal_child = "maternal_child"
    primary_care = "primary_care"
    health_commission = "health_commission"


class Region(PlatformBase):
    """A node of the administrative tree; code is GB/T 2260 (6 digits) or a 9/12-digit sub-code."""

    __tablename__ = "regions"

    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    level: Mapped[RegionLevel] = mapped_column(Enum(RegionLevel, native_enum=False, length=20))
    parent_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"), index=True)


class Tenant(PlatformBase):
    """One county-level data domain; db_url is its entry in the shard map (None: from the template)."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    region_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"))
    db_url: Mapped[str | None] = mapped_column(String(500))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    region: Mapped[Region | None] = relationship(lazy="joined")


class Institution(PlatformBase):
    """A member institution; its tenant decides which shard holds its clinical data."""

    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    level: Mapped[InstitutionLevel] = mapped_column(Enum(InstitutionLevel, native_enum=False, length=32))
    type: Mapped[InstitutionType] = mapped_column(
        Enum(InstitutionType, native_enum=False, length=32), default=InstitutionType.general_hospital
    )
    region_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship(lazy="joined")
