"""The consultation module as the kernel sees it: its routes, commands, tables, demo step and figures."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask
from sqlalchemy.orm import Session

from hie.consult.cli import register
from hie.platform.modules import Echo, Module


def _api_blueprints() -> list[Blueprint]:
    from hie.consult import (  # noqa: F401  (their routes join the blueprint)
        attachments_api,
        consult_api,
        opinion_api,
        queue_api,
        stats_api,
        teaching_api,
    )
    from hie.consult.api import blp

    return [blp]


def _periodic(app: Flask) -> None:
    """The worker's tick: overdue reads flagged, expired read claims cleared."""
    from hie.consult.tasks import periodic

    periodic(app)


def _check_settings(app: Flask, api: Any) -> None:
    """A malformed consultation setting stops the app at start-up, named, not the first request that reads it."""
    from hie.consult import attachments, queue, scheduling

    attachments.max_file_bytes(app.config["HIE"])
    queue.claim_period(app.config["HIE"].extra)
    scheduling.check_settings(app, api)  # HIE_CONSULT_GRACE_DAYS, HIE_VIDEO_BASE_URL


def _demo(app: Flask, echo: Echo) -> None:
    from hie.consult.demo import add_demo_consultations

    add_demo_consultations(app, echo)


def _demo_logins() -> list[str]:
    return ["Consultations: GET /api/v1/consultations?box=incoming and /api/v1/reading-queue?kind=imaging_read as "
            "specialist, ?box=outgoing as yaodu.doctor; teaching GET /api/v1/teaching/sessions."]


def _figures(session: Session, region_codes: set[str], **options: Any) -> dict[str, Any]:
    """Consultation figures of these regions (window, group_by as GET /api/v1/stats/consultations takes them)."""
    from hie.consult.stats import consult_figures

    return consult_figures(session, region_codes, **options)


module = Module(
    name="hie.consult",
    api_blueprints=_api_blueprints,
    platform_models=("hie.consult.models",),
    registrations=("hie.consult.signing",),
    commands=register,
    demo=_demo,
    demo_logins=_demo_logins,
    figures=_figures,
    hooks={"periodic": _periodic},
    on_app=_check_settings,
)
