"""Aggregate patient counts per institution, kept by an outbox handler, for administrators' eyes."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.platform.db import PlatformBase
from hie.platform.jobs.services import handles
from hie.tenants.models import Institution, Tenant


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


def counts_in(session: Session, region_codes: set[str]) -> list[dict]:
    """Patient records per institution of tenants in these regions: the figures administrators may see."""
    rows = session.execute(
        select(Tenant.code, Institution.code, Institution.name, Institution.level, InstitutionPatientCount.patients)
        .join(Institution, Institution.id == InstitutionPatientCount.institution_id)
        .join(Tenant, Tenant.id == Institution.tenant_id)
        .where(Tenant.region_code.in_(region_codes))
        .order_by(Tenant.code, Institution.code)
    ).all()
    return [
        {"tenant_code": t, "institution_code": c, "institution_name": n, "level": lv.value, "patients": p}
        for t, c, n, lv, p in rows
    ]
