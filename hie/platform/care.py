"""Care relationships: the reasons an institution may read a patient's records held elsewhere."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow


class CareKind(enum.StrEnum):
    """Where a relationship comes from; the workflow modules write them."""

    referral = "referral"
    consultation = "consultation"
    contract = "contract"


class CareRelationship(PlatformBase):
    """While active, institution_id may read the named patient record (shard + id)."""

    __tablename__ = "care_relationships"
    __table_args__ = (Index("ix_care_relationships_patient", "patient_tenant_code", "patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    patient_tenant_code: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[CareKind] = mapped_column(Enum(CareKind, native_enum=False, length=20))
    source_ref: Mapped[str | None] = mapped_column(String(80))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def grant(
    session: Session, institution_id: int, tenant_code: str, patient_id: str, kind: CareKind,
    source_ref: str | None = None, ends_at: datetime | None = None,
) -> CareRelationship:
    """Open a relationship; the referral, consultation and contract workflows call this."""
    relationship = CareRelationship(
        institution_id=institution_id, patient_tenant_code=tenant_code, patient_id=patient_id,
        kind=kind, source_ref=source_ref, ends_at=ends_at,
    )
    session.add(relationship)
    session.flush()
    return relationship


def end(session: Session, relationship: CareRelationship, when: datetime | None = None) -> None:
    """Close a relationship when its referral, consultation or contract ends."""
    relationship.ends_at = when or utcnow()
    session.flush()


def has_active(session: Session, institution_id: int, tenant_code: str, patient_id: str) -> bool:
    """Whether the institution is caring for this patient record right now."""
    now = utcnow()
    found = session.scalar(
        select(CareRelationship.id).where(
            CareRelationship.institution_id == institution_id,
            CareRelationship.patient_tenant_code == tenant_code,
            CareRelationship.patient_id == patient_id,
            CareRelationship.starts_at <= now,
            (CareRelationship.ends_at.is_(None)) | (CareRelationship.ends_at > now),
        ).limit(1)
    )
    return found is not None
