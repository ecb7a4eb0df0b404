"""Care relationships: the reasons an institution may read a person's records held elsewhere."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, Select, String, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.platform.db import PlatformBase, UTCDateTime, utcnow
from hie.platform.jobs.services import handles


class CareKind(enum.StrEnum):
    """Where a relationship comes from; the workflow modules write them."""

    referral = "referral"
    consultation = "consultation"
    contract = "contract"


class CareRelationship(PlatformBase):
    """While active, institution_id may read the master person's records in every institution and tenant."""

    __tablename__ = "care_relationships"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    master_person_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[CareKind] = mapped_column(Enum(CareKind, native_enum=False, length=20))
    source_ref: Mapped[str | None] = mapped_column(String(80))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    moved_by_merge: Mapped[int | None] = mapped_column(Integer)
    original_person_id: Mapped[str | None] = mapped_column(String(36))


def grant(
    session: Session, institution_id: int, master_person_id: str, kind: CareKind,
    source_ref: str | None = None, ends_at: datetime | None = None,
) -> CareRelationship:
    """Open a relationship; the referral, consultation and contract workflows call this."""
    relationship = CareRelationship(institution_id=institution_id, master_person_id=master_person_id, kind=kind,
                                    source_ref=source_ref, ends_at=ends_at, starts_at=utcnow())
    session.add(relationship)
    session.flush()
    return relationship


def end(session: Session, relationship: CareRelationship, when: datetime | None = None) -> None:
    """Close a relationship when its referral, consultation or contract ends."""
    relationship.ends_at = when or utcnow()
    session.flush()


def active_persons(institution_id: int) -> Select[tuple[str]]:
    """Subquery: master persons the institution is caring for right now."""
    now = utcnow()
    return select(CareRelationship.master_person_id).where(
        CareRelationship.institution_id == institution_id, CareRelationship.starts_at <= now,
        or_(CareRelationship.ends_at.is_(None), CareRelationship.ends_at > now),
    )


def has_active(session: Session, institution_id: int, master_person_id: str | None) -> bool:
    """Whether the institution is caring for this person right now."""
    if master_person_id is None:
        return False
    query = active_persons(institution_id).where(CareRelationship.master_person_id == master_person_id)
    return session.scalar(query.limit(1)) is not None


@handles("empi.merged")
def follow_merge(session: Session, payload: dict) -> None:
    """Relationships follow their person into the survivor, remembering where they came from."""
    session.execute(update(CareRelationship).where(CareRelationship.master_person_id == payload["source"]).values(
        master_person_id=payload["target"], moved_by_merge=payload["event_id"], original_person_id=payload["source"]))


@handles("empi.unmerged")
def follow_unmerge(session: Session, payload: dict) -> None:
    """Undo follow_merge for exactly the relationships that merge moved."""
    session.execute(update(CareRelationship).where(
        CareRelationship.original_person_id == payload["restored"],
        CareRelationship.master_person_id == payload["from"],
    ).values(master_person_id=payload["restored"], moved_by_merge=None, original_person_id=None))
