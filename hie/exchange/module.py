"""The FHIR shared health record as the kernel sees it: its routes and their OpenAPI paths, tables, sealed columns,
merge handlers and the demo's patients."""

from __future__ import annotations

from typing import Any

import click
from flask import Blueprint, Flask
from flask_smorest import Api

from hie.platform.modules import Echo, Module


def _blueprints() -> list[Blueprint]:
    """The /fhir routes and their catch-all; Werkzeug matches a module's more specific /fhir routes (static
    segments such as /fhir/Task/<id>) before these, whatever the order of registration."""
    from hie.exchange.api import bp
    from hie.exchange.bulk_api import bp as bulk_bp

    return [bp, bulk_bp]


def _on_app(app: Flask, api: Api) -> None:
    """Describe the /fhir routes (every module's) in the served /openapi.json."""
    from hie.exchange.openapi import register

    register(app, api.spec)


def _bulk_openapi() -> dict[str, Any]:
    from hie.exchange.bulk_api import openapi_operations

    return openapi_operations()


def _demo(app: Flask, echo: Echo) -> None:
    from hie.exchange.demo_data import build_demo_records

    build_demo_records(app, echo)


def _demo_logins() -> list[str]:
    from hie.exchange.demo_data import demo_logins

    return demo_logins()


def _commands(main: click.Group) -> None:
    from hie.exchange.reindex import register

    register(main)


module = Module(
    name="hie.exchange",
    blueprints=_blueprints,
    platform_models=("hie.exchange.models",),
    tenant_models=("hie.exchange.models", "hie.exchange.search_index"),
    registrations=("hie.exchange.store", "hie.exchange.tasks"),
    demo=_demo,
    on_app=_on_app,
    demo_logins=_demo_logins,
    commands=_commands,
    extras={"fhir_openapi": _bulk_openapi},
)
