"""The master patient index as the kernel sees it: its routes, commands, tables, sealed columns and merge handlers."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy.orm import Session

from hie.empi.cli import register
from hie.platform.modules import Module


def _api_blueprints() -> list[Blueprint]:
    from hie.empi.api import blp

    return [blp]


def _blueprints() -> list[Blueprint]:
    """FHIR Patient/$match: registered before the exchange's /fhir catch-all routes."""
    from hie.empi.fhir import bp

    return [bp]


def _person_of_patient(platform: Session, tenant_code: str, patient_id: str) -> str | None:
    """The master person a shard's patient record belongs to: the kernel asks it for a resident's own person."""
    from hie.empi.services import person_of_patient

    return person_of_patient(platform, tenant_code, patient_id)


def _demo_logins() -> list[str]:
    return ["The steward's review queue is GET /api/v1/empi/reviews."]


module = Module(
    name="hie.empi",
    api_blueprints=_api_blueprints,
    blueprints=_blueprints,
    commands=register,
    platform_models=("hie.empi.models",),
    registrations=("hie.empi.index", "hie.empi.stewardship"),
    hooks={"person_of_patient": _person_of_patient},
    demo_logins=_demo_logins,
)
