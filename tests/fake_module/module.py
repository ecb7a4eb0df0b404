"""The fake module's declaration: a REST route, a FHIR-style route, a command, a demo step, no tables."""

from __future__ import annotations

import click
from flask import Blueprint, Flask, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint as ApiBlueprint

from hie.platform.modules import Echo, Module

api_blp = ApiBlueprint("fake_api", __name__, url_prefix="/api/v1/fake", description="A module added by one line")
bp = Blueprint("fake_plain", __name__, url_prefix="/fake")


@api_blp.route("/ping")
class Ping(MethodView):
    """Answers without a login: the route exists because the list names the module."""

    @api_blp.response(200)
    def get(self) -> dict[str, bool]:
        """Pong"""
        return {"pong": True}


@bp.get("/ping")
def ping() -> object:
    """The plain blueprint's route."""
    return jsonify(pong=True)


@click.command("fake-hello")
def hello() -> None:
    """Say hello from the fake module."""
    click.echo("hello from the fake module")


def _commands(main: click.Group) -> None:
    main.add_command(hello)


def _demo(app: Flask, echo: Echo) -> None:
    echo(f"fake module demo step ran in {app.name}")


module = Module(
    name="tests.fake_module",
    api_blueprints=lambda: [api_blp],
    blueprints=lambda: [bp],
    commands=_commands,
    demo=_demo,
    demo_logins=lambda: ["fake module login line"],
)
