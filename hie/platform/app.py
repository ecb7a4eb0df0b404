"""The application factory: extensions bound in init functions, one unit of work per request."""

from __future__ import annotations

import logging
import re
import uuid

import redis
from flask import Flask, Response, g, request, send_from_directory
from rq import Queue
from swagger_ui_bundle import swagger_ui_path
from werkzeug.middleware.proxy_fix import ProxyFix

from hie.platform import health
from hie.platform.audit.services import flush_pending, stage_pending
from hie.platform.cache import Cache
from hie.platform.config import Config, load_config
from hie.platform.crypto import DecryptionError, open_keyring
from hie.platform.db import EngineRegistry, finish_unit_of_work
from hie.platform.errors import ProblemApi, database_unreachable, outage_response, problem_response
from hie.platform.jobs.services import QUEUE_NAME, discard_uncommitted, dispatch_committed
from hie.platform.limits import AnyPathConverter, IdConverter, PagingParser, check_request_body
from hie.platform.logs import configure_logging
from hie.platform.modules import import_all, installed

log = logging.getLogger(__name__)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def _api_settings(app: Flask) -> None:
    app.config.update(
        API_TITLE="Regional Health Information Exchange",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
            },
            "security": [{"bearerAuth": []}],
        },
    )


def _swagger_assets(app: Flask) -> None:
    """Swagger UI served from the installed package: a machine room may have no internet."""

    def asset(filename: str) -> Response:
        return send_from_directory(swagger_ui_path, filename)

    app.add_url_rule("/docs/static/<path:filename>", "swagger_ui_asset", asset)


def _bind_services(app: Flask, config: Config) -> None:
    engines = app.extensions["hie.engines"] = EngineRegistry(config)
    app.extensions["hie.keyring"] = open_keyring(config.keyring_file, engines.platform)
    client = redis.Redis.from_url(config.redis_url, socket_timeout=2) if config.redis_url else None
    app.extensions["hie.redis"] = client
    app.extensions["hie.cache"] = Cache(client, config.cache_ttl)
    app.extensions["hie.queue"] = Queue(QUEUE_NAME, connection=client) if client is not None else None


def _roll_back_what_is_open() -> None:
    """After a failed commit, or a failed flush while staging the audit events before it: release every Session
    still open (on SQLite an open one holds its file's write lock), without letting a dead connection raise."""
    try:
        finish_unit_of_work(commit=False)
    except Exception as exc:
        log.warning("rolling back after a failed commit failed too: %s", type(exc).__name__)


def _unit_of_work(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        supplied = request.headers.get("X-Request-Id", "")
        g.request_id = supplied if _REQUEST_ID_RE.fullmatch(supplied) else uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        committed = response.status_code < 400
        try:
            stage_pending(failed=not committed)
            finish_unit_of_work(commit=committed)
        except Exception as exc:
            committed = False
            _roll_back_what_is_open()
            if database_unreachable(exc):
                response = outage_response(exc)
            else:
                log.exception("commit failed")
                response = problem_response(500, "Internal Server Error", "The change could not be saved.")
        try:
            flush_pending(app.extensions["hie.engines"].platform, app.extensions["hie.keyring"],
                          failed=not committed)
        except Exception as exc:
            if database_unreachable(exc):
                response = outage_response(exc)
            else:
                log.exception("audit write failed; withholding the response")
                response = problem_response(503, "Service Unavailable", "The audit trail could not be written.")
        if committed:
            dispatch_committed()
        else:
            discard_uncommitted()
        response.headers["X-Request-Id"] = g.request_id
        return response

    @app.teardown_request
    def _cleanup(exc: BaseException | None) -> None:
        if "platform_session" in g or "shard_sessions" in g:
            finish_unit_of_work(commit=False)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DecryptionError)
    def _tampered(exc: DecryptionError) -> Response:
        log.error("stored ciphertext failed to open: %s", exc)
        return problem_response(500, "Integrity Failure", "A stored value failed its integrity check; "
                                "it was not shown. Operators have been alerted.")


def _register_blueprints(app: Flask) -> None:
    """The kernel's routes and every installed module's, in list order; then the modules' hooks on the whole app."""
    from hie.platform.audit.api import blp as audit_blp
    from hie.platform.auth.api import blp as auth_blp
    from hie.tenants.api import blp as tenants_blp

    modules = installed()
    api = ProblemApi(app)
    module_blps = [blueprint for module in modules for blueprint in module.api_blueprints()]
    for blueprint in (auth_blp, tenants_blp, *module_blps, audit_blp):
        blueprint.PAGINATION_ARGUMENTS_PARSER = PagingParser()
        api.register_blueprint(blueprint)
    app.extensions["hie.api"] = api
    for module in modules:
        for blueprint in module.blueprints():
            app.register_blueprint(blueprint)
    for module in modules:
        if module.on_app is not None:
            module.on_app(app, api)


def create_app(config: Config | None = None) -> Flask:
    """Build the WSGI application for one configuration."""
    config = config or load_config()
    configure_logging(config.log_level)
    app = Flask("hie")
    app.url_map.converters.update(int=IdConverter, path=AnyPathConverter)
    app.config["HIE"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["TESTING"] = config.testing
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    _api_settings(app)
    _swagger_assets(app)
    _bind_services(app, config)
    health.init_app(app)
    _unit_of_work(app)
    app.before_request(check_request_body)
    _register_error_handlers(app)
    for kind in ("platform_models", "tenant_models", "registrations"):
        import_all(kind)  # every process with an app (API, worker, commands) has every table, sealed column, handler
    _register_blueprints(app)
    if config.proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.proxy_hops, x_proto=config.proxy_hops)  # type: ignore[method-assign]
    return app
