"""RFC 9457 problem+json for every error the REST API returns, with field-level validation messages."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, json, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://hie.example/problems/"


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


class ProblemApi(Api):
    """flask-smorest Api whose error handler speaks RFC 9457."""

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
