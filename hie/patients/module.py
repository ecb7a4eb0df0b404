"""The local patient register as the kernel sees it: its routes, tables, sealed columns, count handler and figures."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.modules import Module


def _api_blueprints() -> list[Blueprint]:
    from hie.patients.api import blp

    return [blp]


def holder_of(shard: Session, patient_id: str) -> int | None:
    """The institution holding a patient record in this shard: the kernel checks a resident account's record."""
    from hie.patients.models import Patient

    return shard.scalar(select(Patient.institution_id).where(Patient.id == patient_id))


def _figures(session: Session, region_codes: set[str]) -> list[dict]:
    from hie.patients.stats import counts_in

    return counts_in(session, region_codes)


module = Module(
    name="hie.patients",
    api_blueprints=_api_blueprints,
    platform_models=("hie.patients.stats",),
    tenant_models=("hie.patients.models", "hie.patients.name_index"),
    registrations=("hie.patients.sealing", "hie.patients.stats"),
    figures=_figures,
    hooks={"patient_holder": holder_of},
)
