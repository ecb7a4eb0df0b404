"""The family-doctor module as the kernel sees it: its routes, commands, tables and demo step."""

from __future__ import annotations

from flask import Blueprint

from hie.platform.modules import Module


def _api_blueprints() -> list[Blueprint]:
    from hie.family_doctor.api import blp

    return [blp]


module = Module(
    name="hie.family_doctor",
    api_blueprints=_api_blueprints,
    platform_models=("hie.family_doctor.models",),
)
