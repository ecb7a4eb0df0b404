"""Aggregate patient counts per institution, kept by an outbox handler, for administrators' eyes."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.platform.db import PlatformBase
from hie.platform.jobs.services import handles


class InstitutionPatientCount(PlatformBase):
    """How many local patient records an institution holds: a number, never a name."""

    __tablename__ = "institution_patient_counts"

    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), primary_key=True)
    patients: Mapped[int] = mapped_column(Integer, default=0)


@handles("patient.registered")
def count_registration(session: Session, payload: dict) -> None:
    """One more patient for the registering institution (run once per event by the outbox)."""
    row = session.get(InstitutionPatientCount, payload["institution_id"], with_for_update=True)
    if row is None:
        row = InstitutionPatientCount(institution_id=payload["institution_id"], patients=0)
        session.add(row)
    row.patients += 1
    session.flush()
