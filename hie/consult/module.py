"""The consultation module as the kernel sees it: its routes, commands, tables and demo step."""

from __future__ import annotations

from flask import Blueprint

from hie.platform.modules import Module


def _api_blueprints() -> list[Blueprint]:
    from hie.consult.api import blp

    return [blp]


module = Module(
    name="hie.consult",
    api_blueprints=_api_blueprints,
    platform_models=("hie.consult.models",),
)
