"""FHIR resources in each tenant's shard, their versions and search index; the platform's record registry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import PlatformBase, TenantBase, UTCDateTime, utcnow


class FhirResource(TenantBase):
    """The current version of one resource; Patient content is sealed (it carries direct identifiers)."""

    __tablename__ = "fhir_resources"
    __table_args__ = (
        # institution_id and last_updated make a search by patient index-only: visibility, count and sort keys.
        Index("ix_fhir_resources_patient", "patient_id", "resource_type", "date", "institution_id", "last_updated"),
        Index("ix_fhir_resources_type_updated", "resource_type", "last_updated"),
    )

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    institution_id: Mapped[int] = mapped_column(Integer, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str] = mapped_column(Text().with_variant(Text(length=2**32 - 1), "mysql"))


class FhirResourceVersion(TenantBase):
    """Every version ever stored, for vread and history."""

    __tablename__ = "fhir_resource_versions"

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    institution_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str] = mapped_column(Text().with_variant(Text(length=2**32 - 1), "mysql"))


class FhirToken(TenantBase):
    """Search index of token parameters (code, category, identifier, status): one row per coding."""

    __tablename__ = "fhir_tokens"
    __table_args__ = (
        # resource_id covers the semi-join of token searches: one probe per candidate in this code's index range.
        Index("ix_fhir_tokens_lookup", "resource_type", "param", "code", "system", "resource_id"),
        Index("ix_fhir_tokens_resource", "resource_type", "resource_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(32))
    system: Mapped[str | None] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(200))


class RecordLocation(PlatformBase):
    """Which shard holds records of which master person: $everything and patient search go only there."""

    __tablename__ = "exchange_registry"

    master_person_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BulkExport(PlatformBase):
    """One FHIR Bulk Data export ($export): who asked, what for, how far it got, and the files it wrote."""

    __tablename__ = "fhir_bulk_exports"
    __table_args__ = (Index("ix_fhir_bulk_exports_user_status", "user_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(64))
    types: Mapped[list[str] | None] = mapped_column(JSON)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_url: Mapped[str] = mapped_column(Text)
    deidentified: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[list[dict] | None] = mapped_column(JSON)
    transaction_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
