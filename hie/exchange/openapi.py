"""The /fhir routes in the served OpenAPI document, so that clients and fuzzers can drive them like /api/v1.

A module with /fhir routes of its own describes them in `extras["fhir_openapi"]`: a callable returning
{endpoint: (method, operation, path parameters)}, built with fhir_responses(); a route nobody describes
is still documented, generically (FHIR JSON in and out, OperationOutcome errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apispec import APISpec
from flask import Flask
from werkzeug.routing import Rule

from hie.exchange.everything import PARAMETERS
from hie.exchange.outcome import FHIR_JSON
from hie.exchange.resources import READ_ONLY, WRITABLE
from hie.exchange.search_params import CONTROL_PARAMS, CONTROL_SCHEMAS, search_param_types
from hie.platform.config import PRIOR_RESULTS_MAX_DAYS
from hie.platform.modules import installed

TAG = "FHIR"
BODY_TYPES = (FHIR_JSON, "application/json")
DATE_PATTERN = (r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?\d{4}(-\d{2}(-\d{2})?)?"
                r"(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$")
SCHEMAS: dict[str, dict[str, Any]] = {
    "FhirResource": {
        "type": "object", "required": ["resourceType"], "additionalProperties": True,
        "description": "A FHIR R4B resource in JSON, validated by the server against its type's profile.",
        "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}, "meta": {"type": "object"}},
    },
    "FhirBundle": {
        "type": "object", "required": ["resourceType", "type"], "additionalProperties": True,
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]}, "type": {"type": "string"},
            "total": {"type": "integer"}, "link": {"type": "array", "items": {"type": "object"}},
            "entry": {"type": "array", "items": {"type": "object"}},
        },
    },
    "FhirParameters": {
        "type": "object", "required": ["resourceType"], "additionalProperties": True,
        "properties": {"resourceType": {"type": "string", "enum": ["Parameters"]},
                       "parameter": {"type": "array", "items": {"type": "object"}}},
    },
    "OperationOutcome": {
        "type": "object", "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "issue": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["severity", "code"],
                "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                               "diagnostics": {"type": "string"},
                               "expression": {"type": "array", "items": {"type": "string"},
                                              "description": "FHIRPath of the offending element."}},
            }},
        },
    },
}
ERRORS = {
    "400": "Malformed input (body, parameter or header), named in issue.expression",
    "401": "No access token, or an expired or revoked one",
    "403": "The caller's roles do not allow this",
    "404": "No such resource, or one outside the caller's scope (audited)",
    "405": "Not done to this type (a Patient is never deleted)",
    "410": "The record was deleted (its history remains readable)",
    "412": "If-Match names a version that is no longer current, or conditional criteria match several records",
    "413": "Too large or too costly",
    "415": "The body is not declared as FHIR JSON",
    "422": "References a record the caller may not use (audited)",
    "default": "Any other failure",
}
GENERIC_ERRORS = ("400", "401", "403", "404")
CATCH_ALL = ("fhir.unmatched", "fhir.unmatched_root")  # not interactions: the 404/405 of everything else


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {FHIR_JSON: {"schema": schema}}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {t: {"schema": schema} for t in BODY_TYPES}}


def fhir_responses(status: int, schema: str, description: str, errors: tuple[str, ...],
               headers: bool = False) -> dict[str, Any]:
    """The success response and the OperationOutcome errors of one operation (modules describe theirs with it)."""
    success: dict[str, Any] = {"description": description, "content": _content(_ref(schema))}
    if headers:
        success["headers"] = {"ETag": {"description": 'W/"<versionId>"', "schema": {"type": "string"}},
                              "Last-Modified": {"description": "meta.lastUpdated (RFC 7231 date)",
                                                "schema": {"type": "string"}},
                              "Location": {"description": "The version's URL", "schema": {"type": "string"}}}
    out = {str(status): success}
    for code in (*errors, "default"):
        out[code] = {"description": ERRORS[code], "content": _content(_ref("OperationOutcome"))}
    return out


def _also(responses: dict[str, Any], *extra: tuple[str, str | None, str]) -> dict[str, Any]:
    """More answers of one operation: (status, schema or None for no body, description)."""
    for status, schema, description in extra:
        responses[status] = {"description": description, **({"content": _content(_ref(schema))} if schema else {})}
    return responses


def _header(name: str, description: str) -> dict[str, Any]:
    return {"in": "header", "name": name, "required": False, "description": description,
            "schema": {"type": "string"}}


PREFER = _header("Prefer", "return=minimal (no body), return=representation (the resource, the default) or "
                 "return=OperationOutcome")
NOT_MODIFIED = [_header("If-None-Match", 'W/"<versionId>": 304 when that is still the current version'),
                _header("If-Modified-Since", "An HTTP date: 304 when the record has not changed since")]
HISTORY = [{"in": "query", "name": "_count", "required": False, "schema": {"type": "integer", "minimum": 0},
            "description": "Versions per page (capped at the page size searches are capped at)"},
           {"in": "query", "name": "_since", "required": False, "schema": {"type": "string"},
            "description": "Only versions stored at or after this instant"},
           {"in": "query", "name": "_cursor", "required": False, "schema": {"type": "string"},
            "description": "The opaque token of a next link"}]
EVERYTHING = [{"in": "query", "name": name, "required": False,
               "schema": {"type": "integer", "minimum": 1} if kind == "integer" else {"type": "string"},
               "description": f"{description} (FHIR {kind})"} for name, (kind, description) in PARAMETERS.items()] + [
    {"in": "query", "name": "_cursor", "required": False, "schema": {"type": "string"},
     "description": "The opaque token of a next or previous link"}]
BREAK_GLASS = _header("X-Break-Glass-Reason", "Emergency read of a record outside the caller's scope: why "
                      "(at least 10 characters); audited for review.")


def _path_type(types: tuple[str, ...]) -> dict[str, Any]:
    """At operation level: GET and PUT of one path take different types."""
    return {"in": "path", "name": "resource_type", "required": True, "schema": {"type": "string", "enum": list(types)}}


def search_parameters() -> list[dict[str, Any]]:
    """Every search parameter of any type, each saying which types take it (others answer 400)."""
    takers: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for resource_type in WRITABLE:
        for name, kind in search_param_types(resource_type).items():
            takers.setdefault(name, []).append(resource_type)
            kinds[name] = kind
    schemas = {"date": {"type": "string", "pattern": DATE_PATTERN},
               "token": {"type": "string", "description": "system|code, |code, code or system|; commas mean OR"},
               "reference": {"type": "string", "description": "Type/<id>, or <id> where one type is referenced"},
               "string": {"type": "string", "description": "starts with (case and accents ignored); :exact"}}
    params = [{"in": "query", "name": name, "required": False, "schema": schemas[kinds[name]],
               "description": f"{kinds[name]}; for {', '.join(types)}"} for name, types in takers.items()]
    params += [{"in": "query", "name": name, "required": False, "schema": CONTROL_SCHEMAS[name]}
               for name in CONTROL_PARAMS]
    return params


def _operations() -> dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Endpoint -> (method, operation, path parameters)."""
    resource_id = {"in": "path", "name": "resource_id", "required": True, "schema": {"type": "string"}}
    patient_id = {"in": "path", "name": "patient_id", "required": True, "schema": {"type": "string"}}
    return {
        "fhir.metadata": ("get", {
            "summary": "The CapabilityStatement: what this server supports", "security": [],
            "responses": fhir_responses(200, "FhirResource", "CapabilityStatement", ())}, []),
        "fhir.bundle": ("post", {
            "summary": "A transaction (all or nothing) or batch Bundle of creates and updates",
            "requestBody": _body(_ref("FhirBundle"), "Bundle.type transaction or batch"),
            "responses": fhir_responses(200, "FhirBundle", "transaction-response or batch-response",
                                    ("400", "401", "403", "404", "412", "413", "415", "422"))}, []),
        "fhir.create": ("post", {
            "summary": "Create a resource; the server assigns the id",
            "parameters": [_path_type(WRITABLE), PREFER,
                           _header("If-None-Exist", "Search criteria (identifier=<system>|<value>): if one record "
                                   "the caller may see matches, it is answered (200) and nothing is stored")],
            "requestBody": _body(_ref("FhirResource"), "A resource of the type in the path"),
            "responses": _also(fhir_responses(201, "FhirResource", "Created", ("400", "401", "403", "404", "412",
                                                                               "415", "422"), True),
                               ("200", "FhirResource", "If-None-Exist matched: the existing record, nothing stored"))},
            []),
        "fhir.conditional_update": ("put", {
            "summary": "Conditional update: the one record the query matches, or a new one when none does",
            "parameters": [_path_type(WRITABLE), PREFER],
            "requestBody": _body(_ref("FhirResource"), "The whole resource"),
            "responses": _also(fhir_responses(200, "FhirResource", "The new version",
                                              ("400", "401", "403", "404", "410", "412", "415", "422"), True),
                               ("201", "FhirResource", "Nothing matched: created"))},
            []),
        "fhir.conditional_delete": ("delete", {
            "summary": "Conditional delete: the one record the query matches (204; several match: 412)",
            "parameters": [_path_type(WRITABLE), PREFER],
            "responses": _also(fhir_responses(200, "OperationOutcome", "Prefer: return=OperationOutcome",
                                              ("400", "401", "403", "404", "405", "412")),
                               ("204", None, "Deleted, or nothing matched"))},
            []),
        "fhir.type_history": ("get", {
            "summary": "Every version of the records of one type the caller may see in their shard, newest first",
            "parameters": [_path_type(WRITABLE), *HISTORY],
            "responses": fhir_responses(200, "FhirBundle", "history", ("400", "401", "403", "404"))}, []),
        "fhir.search": ("get", {
            "summary": "Search one type: a searchset Bundle of what the caller may see",
            "parameters": [_path_type(WRITABLE), *search_parameters()],
            "responses": fhir_responses(200, "FhirBundle", "searchset", ("400", "401", "403", "404"))}, []),
        "fhir.read": ("get", {
            "summary": "Read the current version (AuditEvent: auditors of the event's region)",
            "parameters": [_path_type((*WRITABLE, *READ_ONLY)), BREAK_GLASS, *NOT_MODIFIED],
            "responses": _also(fhir_responses(200, "FhirResource", "The resource",
                                              ("400", "401", "403", "404", "410"), True),
                               ("304", None, "If-None-Match or If-Modified-Since: the client's copy is current"))},
            [resource_id]),
        "fhir.vread": ("get", {
            "summary": "Read one version", "parameters": [_path_type(WRITABLE), BREAK_GLASS, *NOT_MODIFIED],
            "responses": _also(fhir_responses(200, "FhirResource", "That version",
                                              ("400", "401", "403", "404", "410"), True),
                               ("304", None, "If-None-Match or If-Modified-Since: the client's copy is current"))},
            [resource_id]),
        "fhir.instance_history": ("get", {
            "summary": "Every version of one record, newest first, deletions included",
            "parameters": [_path_type(WRITABLE), *HISTORY],
            "responses": fhir_responses(200, "FhirBundle", "history", ("400", "401", "403", "404"))},
            [resource_id]),
        "fhir.delete": ("delete", {
            "summary": "Delete a record of the caller's institution (a deletion version; Patients are not deleted)",
            "parameters": [_path_type(WRITABLE), PREFER],
            "responses": _also(fhir_responses(200, "OperationOutcome", "Prefer: return=OperationOutcome",
                                              ("401", "403", "404", "405")),
                               ("204", None, "Deleted (or already deleted)"))},
            [resource_id]),
        "fhir.update": ("put", {
            "summary": "A new version of a resource of the caller's institution, or update as create at a client "
                       "id (<tenant>.<institution code>.<any>)",
            "parameters": [_path_type(WRITABLE), PREFER,
                           _header("If-Match", 'W/"<versionId>": refuse (412) if the resource moved on')],
            "requestBody": _body(_ref("FhirResource"), "The whole resource; its id, if any, must be the path's"),
            "responses": _also(fhir_responses(200, "FhirResource", "The new version",
                                              ("400", "401", "403", "404", "410", "412", "415", "422"), True),
                               ("201", "FhirResource", "Created at a client id, or a deleted record re-created"))},
            [resource_id]),
        "fhir.patient_everything": ("get", {
            "summary": "Everything the caller may see about the patient's master person, from every tenant",
            "parameters": [BREAK_GLASS, *EVERYTHING],
            "responses": fhir_responses(200, "FhirBundle", "searchset", ("400", "401", "403", "404"))}, [patient_id]),
        "fhir.prior_results": ("get", {
            "summary": "Results of the same test already done anywhere within the window (mutual recognition)",
            "parameters": [
                {"in": "query", "name": "code", "required": True, "schema": {"type": "string", "minLength": 1},
                 "description": "system|code of the test about to be ordered"},
                {"in": "query", "name": "days", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": PRIOR_RESULTS_MAX_DAYS}}],
            "responses": fhir_responses(200, "FhirParameters", "One parameter per earlier result",
                                    ("400", "401", "403", "404"))}, [patient_id]),
        "fhir_empi.patient_match": ("post", {
            "summary": "The Patient records the caller may read of the persons best matching a Patient ($match)",
            "requestBody": _body(_ref("FhirParameters"), "Parameters: resource (a Patient), count, "
                                 "onlyCertainMatches"),
            "responses": fhir_responses(200, "FhirBundle", "searchset with scores and match grades",
                                    ("400", "401", "403", "413", "415"))}, []),
    }


def _generic(rule: Rule, view: Callable[..., Any] | None) -> dict[str, Any]:
    """A /fhir route no module described: FHIR JSON in and out, OperationOutcome errors, its docstring."""
    summary = ((view.__doc__ if view is not None else None) or "FHIR interaction").strip().splitlines()[0]
    operations: dict[str, Any] = {}
    for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
        operation: dict[str, Any] = {"summary": summary,
                                     "responses": fhir_responses(200, "FhirResource", "FHIR JSON", GENERIC_ERRORS)}
        if method in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = _body(_ref("FhirResource"), "FHIR JSON")
        operations[method.lower()] = operation
    return operations


def register(app: Flask, spec: APISpec) -> None:
    """Add every /fhir route to the spec: described here or by its module (extras["fhir_openapi"]), else generically."""
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    spec.tag({"name": TAG, "description": f"FHIR R4B ({FHIR_JSON}); errors are OperationOutcome"})
    described = _operations()
    for module in installed():
        if "fhir_openapi" in module.extras:
            described.update(module.extras["fhir_openapi"]())
    for rule in app.url_map.iter_rules():
        if rule.endpoint in described:
            method, operation, parameters = described[rule.endpoint]
            spec.path(rule=rule, operations={method: {**operation, "tags": [TAG]}}, parameters=parameters)
        elif rule.rule.startswith("/fhir") and rule.endpoint not in CATCH_ALL:
            operations = {method: {**operation, "tags": [TAG]}
                          for method, operation in _generic(rule, app.view_functions.get(rule.endpoint)).items()}
            spec.path(rule=rule, operations=operations)
