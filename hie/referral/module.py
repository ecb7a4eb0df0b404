"""The referral module as the kernel sees it: its routes, commands, tables and demo step."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask
from sqlalchemy.orm import Session

from hie.platform.modules import Echo, Module
from hie.referral.cli import register


def _api_blueprints() -> list[Blueprint]:
    from hie.referral import (  # noqa: F401  (their routes join the blueprint)
        capacity_api,
        notify_api,
        slip_api,
        stats_api,
    )
    from hie.referral.api import blp

    return [blp]


def _blueprints() -> list[Blueprint]:
    """FHIR ServiceRequest and Task: their routes are more specific than the exchange's /fhir/<type>/<id>."""
    from hie.referral.fhir import bp

    return [bp]


def _demo(app: Flask, echo: Echo) -> None:
    from hie.referral.demo import add_demo_referrals

    add_demo_referrals(app, echo)


def _check_settings(app: Flask, _api: Any) -> None:
    """A malformed HIE_REFERRAL_GRACE_DAYS stops the app at start-up, named, not the first completion."""
    from hie.referral.services import grace_period

    grace_period(app.config["HIE"].extra)


def _fhir_openapi() -> dict[str, Any]:
    from hie.referral.fhir import openapi_operations

    return openapi_operations()


def _fhir_capability() -> list[dict[str, Any]]:
    from hie.referral.fhir import capability_resources

    return capability_resources()


def _periodic(app: Flask) -> None:
    """The worker's tick: overdue reminders and due webhook deliveries."""
    from hie.referral.tasks import periodic

    periodic(app)


def _figures(session: Session, region_codes: set[str], **options: Any) -> dict[str, Any]:
    """Referral figures of these regions (window, group_by as GET /api/v1/stats/referrals takes them)."""
    from hie.referral.stats import referral_figures

    return referral_figures(session, region_codes, **options)


def _demo_logins() -> list[str]:
    return ["Referrals: GET /api/v1/referrals?box=incoming as specialist, ?box=outgoing as yaodu.familydoctor."]


module = Module(
    name="hie.referral",
    api_blueprints=_api_blueprints,
    blueprints=_blueprints,
    commands=register,
    platform_models=("hie.referral.models",),
    registrations=("hie.referral.notifications",),
    demo=_demo,
    demo_logins=_demo_logins,
    figures=_figures,
    on_app=_check_settings,
    extras={"fhir_openapi": _fhir_openapi, "fhir_capability": _fhir_capability},
    hooks={"periodic": _periodic},
)
