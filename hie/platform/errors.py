"""RFC 9457 problem+json for every error the REST API returns, with field-level validation messages; an unreachable
database answers 503."""

from __future__ import annotations

import http
import logging
import sqlite3
from typing import Any

from apispec import BasePlugin
from flask import Flask, Response, current_app, g, json, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from marshmallow import INCLUDE, Schema, fields
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://hie.example/problems/"
PAGINATION_HEADER = {
    "description": "Paging, as a JSON object in a string: total and total_pages always; first_page and last_page "
                   "when there is anything; page when it is within them; previous_page and next_page when they "
                   'exist. E.g. {"total": 120, "total_pages": 3, "first_page": 1, "last_page": 3, "page": 2, '
                   '"previous_page": 1, "next_page": 3}.',
    "schema": {"type": "string"},
}
ERROR_DESCRIPTIONS = {
    http.HTTPStatus.BAD_REQUEST: "Bad Request: what the schema cannot express, e.g. a search given none of its "
                                 "criteria, an unreadable JSON body, a malformed If-Match or X-Break-Glass-Reason",
    http.HTTPStatus.UNAUTHORIZED: "Unauthorized: no access token, or an expired or revoked one",
    http.HTTPStatus.FORBIDDEN: "Forbidden: the caller's roles do not allow this (audited)",
    http.HTTPStatus.NOT_FOUND: "Not Found: no such record, or one outside the caller's scope (audited)",
    http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "Unsupported Media Type: the body is not declared as JSON",
    http.HTTPStatus.UNPROCESSABLE_ENTITY: "Unprocessable Entity: invalid fields, each named in errors",
    http.HTTPStatus.SERVICE_UNAVAILABLE: "Service Unavailable: a database cannot be reached; retry after the "
                                         "Retry-After seconds",
}
OUTAGE_RETRY_AFTER = 5
OUTAGE_DETAIL = "A database cannot be reached just now; try again in a few seconds."
# MySQL/MariaDB client and server codes that mean the server is down, gone, restarting or full, not a bad statement:
# 1040 too many connections, 1053 shutdown in progress, 1927 connection killed, 2002/2003 cannot connect,
# 2005 unknown host, 2006 gone away, 2013/2055 lost connection, 2014/2045 out of sync, 4031 disconnected idle.
_UNREACHABLE_MYSQL_CODES = frozenset({1040, 1053, 1927, 2002, 2003, 2005, 2006, 2013, 2014, 2045, 2055, 4031})
_UNREACHABLE_SQLITE = ("unable to open database file", "disk i/o error")


def database_unreachable(error: BaseException) -> bool:
    """Whether an error means a database (platform or shard) cannot be reached, rather than a fault in the code."""
    if isinstance(error, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True  # the pool's own: a dead pooled connection, or no connection free within the pool timeout
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True  # SQLAlchemy found the connection dead and dropped it (and the rest of its pool)
    if not isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.InternalError):
        return False
    original = error.orig
    if isinstance(original, sqlite3.OperationalError):
        return str(original).lower().startswith(_UNREACHABLE_SQLITE)
    code = original.args[0] if original is not None and original.args else None
    return isinstance(code, int) and code in _UNREACHABLE_MYSQL_CODES


def _outage_summary(error: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's statement and parameters (they may hold patient data)."""
    original = getattr(error, "orig", None) or error
    first_line = str(original).split("\n", 1)[0]
    return f"{type(original).__module__}.{type(original).__name__}: {first_line}"


def log_outage(error: BaseException) -> None:
    """One warning line per request, however many of its steps find a database gone: an outage is an operations
    event, not a bug, so no traceback."""
    if g.get("outage_logged"):
        return
    g.outage_logged = True
    log.warning("database unreachable during %s %s: %s", request.method, request.path, _outage_summary(error))


def outage_response(error: BaseException) -> Response:
    """503 with Retry-After, in the format of the route's blueprint (OperationOutcome under /fhir); logged once."""
    log_outage(error)
    headers = {"Retry-After": str(OUTAGE_RETRY_AFTER)}
    unavailable = ServiceUnavailable(OUTAGE_DETAIL)
    unavailable.data = {"message": OUTAGE_DETAIL, "headers": headers}  # type: ignore[attr-defined]
    response = current_app.make_response(current_app.handle_http_exception(unavailable))
    response.headers.update(headers)
    return response


def _database_error(error: sa_exc.SQLAlchemyError) -> Response:
    """An unreachable database answers 503; any other database error stays a logged 500, as before."""
    if not database_unreachable(error):
        raise error
    return outage_response(error)


class ProblemFieldSchema(Schema):
    """One offending input field of a problem."""

    field = fields.String(required=True, metadata={"description": "Field path, dotted; _schema for the whole input."})
    location = fields.String(required=True, metadata={"description": "json, query, headers, path, ..."})
    message = fields.String(required=True)


class ProblemSchema(Schema):
    """RFC 9457 problem details, as every /api/v1 error is answered (documentation only)."""

    class Meta:
        unknown = INCLUDE  # RFC 9457 allows extension members

    type = fields.String(required=True, metadata={"description": "URI naming the kind of problem."})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    instance = fields.String(required=True, metadata={"description": "The request path."})
    request_id = fields.String(required=True, metadata={"description": "Also in X-Request-Id and the logs."})
    errors = fields.List(fields.Nested(ProblemFieldSchema), metadata={"description": "Field-level messages."})


def _flatten(messages: Any, location: str, prefix: str = "") -> list[dict[str, str]]:
    """Turn marshmallow's nested message dicts into one entry per offending field."""
    out: list[dict[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, location, path))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend({"field": prefix or "_schema", "location": location, "message": m} for m in messages)
    elif isinstance(messages, list):
        for index, value in enumerate(messages):
            out.extend(_flatten(value, location, f"{prefix}[{index}]"))
    else:
        out.append({"field": prefix or "_schema", "location": location, "message": str(messages)})
    return out


def problem_response(
    status: int, title: str, detail: str | None = None, errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build a problem+json response; the request id lets an operator find the log lines."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "instance": request.path,
        "request_id": g.get("request_id"),
    }
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ErrorResponsesPlugin(BasePlugin):
    """Document the refusals every operation can answer, as problem+json, and which operations need no token."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        """401/403 behind login, 404 with a path parameter, 400 with input, 415 with a body; the rest: default."""
        from hie.platform.auth.decorators import login_required  # here: auth imports the audit and db layers,
        # which may import this module for database_unreachable and log_outage
        rule = kwargs.get("rule")
        view_class = getattr(self.app.view_functions.get(rule.endpoint), "view_class", None) if rule else None
        if view_class is None:
            return  # not a flask-smorest view: it documents its own errors
        protected = login_required in getattr(view_class, "decorators", ())
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            if protected:
                responses.setdefault(401, http.HTTPStatus.UNAUTHORIZED.name)
                responses.setdefault(403, http.HTTPStatus.FORBIDDEN.name)
            else:
                operation["security"] = []
            if "{" in (path or ""):
                responses.setdefault(404, http.HTTPStatus.NOT_FOUND.name)
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault(400, http.HTTPStatus.BAD_REQUEST.name)
            if operation.get("requestBody"):
                responses.setdefault(415, http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE.name)


class ProblemApi(Api):
    """flask-smorest Api whose error handler speaks RFC 9457, and whose OpenAPI document says so."""

    ERROR_SCHEMA = ProblemSchema

    def _init_spec(self, *, extra_plugins: list[BasePlugin] | None = None, **options: Any) -> None:
        super()._init_spec(extra_plugins=[*(extra_plugins or ()), ErrorResponsesPlugin(self._app)], **options)

    def _register_error_handlers(self) -> None:
        """flask-smorest's HTTPException handler, and the database outage as a 503 on every route."""
        super()._register_error_handlers()
        for error in (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError):
            self._app.register_error_handler(error, _database_error)

    def _register_responses(self) -> None:
        """Every error response, flask-smorest's named ones and the default, as problem+json."""
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": ERROR_DESCRIPTIONS.get(status, status.phrase)}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON if status >= 400 else self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        default = {"description": "Any other refusal or failure", "schema": self.ERROR_SCHEMA}
        prepare_response(default, self.spec, PROBLEM_JSON)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, default, lazy=True)

    def _register_pagination_header(self) -> None:
        """X-Pagination is sent as a JSON string, so it is documented as one."""
        self.spec.components.header("PAGINATION", PAGINATION_HEADER, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        """Map abort() and webargs validation failures to problem+json."""
        data = getattr(error, "data", None) or {}
        errors: list[dict[str, str]] = []
        for location, messages in (data.get("errors") or data.get("messages") or {}).items():
            errors.extend(_flatten(messages, location))
        detail = data.get("message") or (error.description if errors == [] else "Some fields are invalid.")
        if isinstance(error, InternalServerError):
            detail = "The server failed to handle this request; it has been logged."
        return problem_response(
            error.code or 500, error.name, detail, errors or None, data.get("headers")
        )
