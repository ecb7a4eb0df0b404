"""RQ entry points; the worker process binds its Flask app here so jobs run in an app context."""

from __future__ import annotations

from flask import Flask

from hie.platform.jobs import services

_bound: dict[str, Flask] = {}


def bind_app(app: Flask) -> None:
    """Jobs in this process run in this app's context."""
    _bound["app"] = app


def worker_app() -> Flask:
    """The app jobs in this process run in, made from the environment when none was bound."""
    if "app" not in _bound:
        from hie.platform.app import create_app

        bind_app(create_app())
    return _bound["app"]


def deliver_event(shard: str, event_id: str) -> bool:
    """Deliver one outbox event to its handlers."""
    with worker_app().app_context():
        return services.deliver(shard, event_id)
