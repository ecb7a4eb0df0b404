"""FHIR errors: every failure of the /fhir endpoints is an OperationOutcome naming the offending element."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException

from hie.exchange.literal_json import dumps_bytes

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    """An error answered as an OperationOutcome; expression is the FHIRPath of the offending element."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: list[str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics, self.expression = status, code, diagnostics, expression


def fhir_response(body: dict[str, Any] | bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON response (bytes: already JSON); numbers are written as their senders wrote them (literal_json)."""
    response = Response(body if isinstance(body, bytes) else dumps_bytes(body), status=status, mimetype=FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def operation_outcome(status: int, code: str, diagnostics: str, expression: list[str] | None = None) -> Response:
    """FHIR's error body."""
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return fhir_response({"resourceType": "OperationOutcome", "issue": [issue]}, status)


HTTP_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                    409: "conflict", 412: "conflict", 413: "too-costly", 415: "not-supported", 422: "invalid"}


def fhir_blueprint(name: str, import_name: str) -> Blueprint:
    """A Blueprint under /fhir whose every error, raised or aborted, answers as an OperationOutcome."""
    blueprint = Blueprint(name, import_name, url_prefix="/fhir")

    @blueprint.errorhandler(FhirError)
    def _fhir_error(exc: FhirError) -> Response:
        return operation_outcome(exc.status, exc.code, exc.diagnostics, exc.expression)

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        data = getattr(exc, "data", None) or {}
        code = exc.code or 500
        return operation_outcome(code, HTTP_ISSUE_CODES.get(code, "processing"),
                                 data.get("message") or exc.description or exc.name)

    return blueprint
