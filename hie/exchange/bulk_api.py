"""The Bulk Data routes: $export kick-off at system, Patient and Group level, the status URL (poll, DELETE) and the
NDJSON files, with their OpenAPI descriptions and CapabilityStatement entries."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from hie.exchange import bulk
from hie.exchange.literal_json import dumps_bytes
from hie.exchange.outcome import FHIR_JSON, FhirError, fhir_blueprint, fhir_response, operation_outcome
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import authenticate_request
from hie.platform.auth.identity import Identity, current_identity

bp = fhir_blueprint("fhir_bulk", __name__)
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"


def _exporter() -> Identity:
    authenticate_request()
    return bulk.require_exporter(current_identity())


def _kick_off(identity: Identity, level: str, group: bulk.Group | None) -> Response:
    export = bulk.kick_off(identity, level, group, request.args, request.headers.get("Accept"),
                           request.headers.get("Prefer"), request.url)
    status_url = f"{request.host_url}fhir/$export/{export.id}"
    body = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational",
        "diagnostics": f"Export accepted; poll {status_url} for its progress and manifest."}]}
    return fhir_response(body, 202, {"Content-Location": status_url})


@bp.get("/$export")
def system_export() -> Response:
    """Bulk export of every record the caller could read (system level), asynchronously."""
    return _kick_off(_exporter(), "system", None)


@bp.get("/Patient/$export")
def patient_export() -> Response:
    """Bulk export of the patient compartments the caller could read, asynchronously."""
    return _kick_off(_exporter(), "patient", None)


@bp.get("/Group/<group_id>/$export")
def group_export(group_id: str) -> Response:
    """Bulk export of one Group's patients: Group/institution-<code>, the patients registered at that institution."""
    identity = _exporter()
    return _kick_off(identity, "group", bulk.find_group(identity, group_id))


@bp.post("/$export")
@bp.post("/Patient/$export")
def export_by_post() -> Response:
    """A kick-off by POST (a Parameters body), which the IG leaves optional: 405, send a GET."""
    _exporter()
    response = operation_outcome(405, "not-supported", "Start a bulk export with GET (parameters in the query); POST "
                                 "kick-offs are not supported.")
    response.headers["Allow"] = "GET"
    return response


@bp.get("/$export/<export_id>")
def export_status(export_id: str) -> Response:
    """An export's status: 202 with X-Progress while it runs, 200 with the manifest when done, 500 if it failed."""
    export = bulk.owned(_exporter(), export_id, "status")
    if export.status in bulk.ACTIVE:
        response = _empty(202)
        response.headers["X-Progress"] = export.progress or export.status
        response.headers["Retry-After"] = str(bulk.RETRY_AFTER_SECONDS)
        return response
    if export.status == "failed":
        raise FhirError(500, "exception", export.error or "The export failed.")
    return Response(dumps_bytes(bulk.manifest(export, request.host_url)), status=200, mimetype="application/json")


@bp.delete("/$export/<export_id>")
def export_delete(export_id: str) -> Response:
    """Cancel a running export or delete a finished one and its files (202); its URLs then answer 404."""
    bulk.delete(bulk.owned(_exporter(), export_id, "delete"))
    return _empty(202)


def _empty(status: int) -> Response:
    """An answer without a body, so without a Content-Type either."""
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


@bp.get("/$export/<export_id>/<file_name>")
def export_file(export_id: str, file_name: str) -> Response:
    """One NDJSON file of a completed export, to the user who asked for it only."""
    export = bulk.owned(_exporter(), export_id, "download")
    frames = bulk.open_file(export, file_name)
    if frames is None:
        audit.record("export", "not_found", resource_type="Binary", resource_id=export_id,
                     detail=f"download of {file_name[:80]}: no such file in the export")
        raise FhirError(404, "not-found", f"Export {export_id} has no file {file_name[:80]}.")
    audit.record("export", resource_type=file_name.removesuffix(".ndjson"), resource_id=export_id,
                 purpose="deidentified" if export.deidentified else "treatment", detail=f"download {file_name}")
    return Response(frames, status=200, mimetype=bulk.NDJSON)


def capability(statement: dict[str, Any]) -> dict[str, Any]:
    """The Bulk Data IG's declarations: the server instantiates its CapabilityStatement, $export at system level,
    Patient/$export on Patient and Group/[id]/$export on Group (operation only: Groups are not stored here)."""
    statement["instantiates"] = [f"{BULK_DATA}/CapabilityStatement/bulk-data"]
    rest = statement["rest"][0]
    rest["operation"] = [*rest.get("operation", []), {
        "name": "export", "definition": f"{BULK_DATA}/OperationDefinition/export",
        "documentation": "GET /fhir/$export with Accept: application/fhir+json and Prefer: respond-async (_type, "
                         "_since, _outputFormat=application/fhir+ndjson): every record the caller could read one by "
                         "one, as NDJSON per type; health administrators get de-identified files only."}]
    patient = {"name": "export", "definition": f"{BULK_DATA}/OperationDefinition/patient-export",
               "documentation": "GET /fhir/Patient/$export: the patient compartments the caller could read."}
    group = {"name": "export", "definition": f"{BULK_DATA}/OperationDefinition/group-export",
             "documentation": f"GET /fhir/Group/{bulk.GROUP_PREFIX}<institution code>/$export: the patients registered "
                              "at an institution (the caller's own; a health administrator's: one in their region)."}
    resources = rest["resource"]
    for entry in resources:
        if entry["type"] == "Patient":
            entry["operation"] = [*entry.get("operation", []), patient]
    existing = next((entry for entry in resources if entry["type"] == "Group"), None)
    if existing is None:
        resources.append({"type": "Group", "operation": [group]})
    else:
        existing["operation"] = [*existing.get("operation", []), group]
    return statement


def openapi_operations() -> dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """The bulk routes in /openapi.json (the kick-off's 202, the status URL's 200/202 and the NDJSON files)."""
    from hie.exchange.openapi import fhir_responses

    headers = [{"in": "header", "name": name, "required": False, "schema": {"type": "string"}, "description": text}
               for name, text in (("Accept", "application/fhir+json (required by the IG; else 400)"),
                                  ("Prefer", "respond-async (required; else 400), optionally handling=lenient"))]
    query = [{"in": "query", "name": name, "required": False, "schema": {"type": "string"}, "description": text}
             for name, text in (("_type", "comma-separated resource types"), ("_since", "a FHIR instant"),
                                ("_outputFormat", "application/fhir+ndjson, application/ndjson or ndjson"))]
    accepted = {"description": "Accepted; Content-Location is the status URL",
                "headers": {"Content-Location": {"schema": {"type": "string"}}},
                "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
    errors = ("400", "401", "403", "404")

    def kick_off(summary: str) -> dict[str, Any]:
        responses = fhir_responses(202, "OperationOutcome", "", errors)
        responses["202"] = accepted
        responses["429"] = {"description": "Too many exports in progress for this user",
                            "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
        return {"summary": summary, "parameters": [*headers, *query], "responses": responses}

    export_id = {"in": "path", "name": "export_id", "required": True, "schema": {"type": "string"}}
    status = fhir_responses(200, "FhirResource", "", errors)
    status["200"] = {"description": "The manifest (transactionTime, request, requiresAccessToken, output, error)",
                     "content": {"application/json": {"schema": {"type": "object"}}}}
    status["202"] = {"description": "Still running: X-Progress says how far, Retry-After when to ask again",
                     "headers": {"X-Progress": {"schema": {"type": "string"}},
                                 "Retry-After": {"schema": {"type": "string"}}}}
    status["500"] = {"description": "The export failed",
                     "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
    deleted = fhir_responses(202, "OperationOutcome", "", errors)
    deleted["202"] = {"description": "Cancelled or deleted, files removed"}
    files = fhir_responses(200, "FhirResource", "", errors)
    files["200"] = {"description": "NDJSON, one resource per line",
                    "content": {bulk.NDJSON: {"schema": {"type": "string"}}}}
    return {
        "fhir_bulk.system_export": ("get", kick_off("Bulk export (system level)"), []),
        "fhir_bulk.patient_export": ("get", kick_off("Bulk export (Patient level)"), []),
        "fhir_bulk.group_export": ("get", kick_off("Bulk export of Group/institution-<code>"), [
            {"in": "path", "name": "group_id", "required": True, "schema": {"type": "string"}}]),
        "fhir_bulk.export_by_post": ("post", {"summary": "POST kick-offs are not supported (405, use GET)",
                                              "responses": fhir_responses(405, "OperationOutcome", "Not supported",
                                                                            errors)},
                                     []),
        "fhir_bulk.export_status": ("get", {"summary": "Bulk export status or manifest", "responses": status},
                                    [export_id]),
        "fhir_bulk.export_delete": ("delete", {"summary": "Cancel or delete a bulk export", "responses": deleted},
                                    [export_id]),
        "fhir_bulk.export_file": ("get", {"summary": "One NDJSON file of a bulk export", "responses": files},
                                  [export_id, {"in": "path", "name": "file_name", "required": True,
                                               "schema": {"type": "string"}}]),
    }
