"""The family-doctor module as the kernel sees it: its routes, commands, tables and demo step."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask
from sqlalchemy.orm import Session

from hie.family_doctor.cli import register
from hie.platform.modules import Echo, Module


def _api_blueprints() -> list[Blueprint]:
    from hie.family_doctor import (
        contracts_api,  # noqa: F401  (its routes join the blueprint)
        education_api,  # noqa: F401  (its routes join the blueprint)
        followups_api,  # noqa: F401  (its routes join the blueprint)
        portal_api,  # noqa: F401  (its routes join the blueprint)
        stats_api,  # noqa: F401  (its routes join the blueprint)
        vitals_api,  # noqa: F401  (its routes join the blueprint)
        worklist_api,  # noqa: F401  (its routes join the blueprint)
    )
    from hie.family_doctor.api import blp

    return [blp]


def _figures(session: Session, region_codes: set[str], **options: Any) -> dict[str, Any]:
    """Family-doctor figures of these regions (window, group_by as GET /api/v1/stats/family-doctor takes them)."""
    from hie.family_doctor.stats import family_doctor_figures

    return family_doctor_figures(session, region_codes, **options)


def _demo(app: Flask, echo: Echo) -> None:
    from hie.family_doctor.demo import add_demo_family_doctor

    add_demo_family_doctor(app, echo)


def _demo_logins() -> list[str]:
    from hie.family_doctor.demo import demo_logins

    return demo_logins()


def _check_settings(app: Flask, _api: Any) -> None:
    """A province's rules file that cannot be read stops the app at start-up, named, not the first follow-up."""
    from hie.family_doctor.rules import table

    table(app.config["HIE"].extra)


def _periodic(app: Flask) -> None:
    """The worker's tick: contracts past their term expire, once per local day."""
    from hie.family_doctor.tasks import periodic

    periodic(app)


module = Module(
    name="hie.family_doctor",
    api_blueprints=_api_blueprints,
    platform_models=("hie.family_doctor.models",),
    registrations=("hie.family_doctor.education",),
    commands=register,
    figures=_figures,
    hooks={"periodic": _periodic},
    demo=_demo,
    demo_logins=_demo_logins,
    on_app=_check_settings,
)
