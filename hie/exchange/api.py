"""The /fhir endpoints: capability, transaction/batch, create/read/vread/update/delete (conditional too), history,
search, $everything."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter

from hie.exchange import bundles, conditional, everything, history, prior, store, tasks  # noqa: F401  (tasks: outbox)
from hie.exchange.capability import capability_statement
from hie.exchange.literal_json import loads
from hie.exchange.outcome import FhirError, fhir_blueprint, fhir_response, operation_outcome
from hie.exchange.resources import READ_ONLY, WRITABLE, validate
from hie.platform.access import Permission, require, require_any, valid_break_glass_reason
from hie.platform.auth.decorators import authenticate_request
from hie.platform.auth.identity import Identity
from hie.platform.limits import MAX_INT, ascii_int

bp = fhir_blueprint("fhir", __name__)
BREAK_GLASS_HEADER = "X-Break-Glass-Reason"
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
BODY_TYPES = ("application/fhir+json", "application/json")


def _caller() -> Identity:
    authenticate_request()
    return require_any(Permission.patient_read, Permission.own_record_read)


def _body() -> Any:
    if request.mimetype not in BODY_TYPES:
        raise FhirError(415, "not-supported", f"The body must be FHIR JSON, sent as Content-Type {BODY_TYPES[0]} or "
                        f"{BODY_TYPES[1]}, not {request.mimetype or 'undeclared'}.")
    try:  # numbers keep their literals (4.50 stays 4.50): the resource is stored and returned as sent
        return loads(request.get_data(cache=True))
    except ValueError:
        raise FhirError(400, "structure", "The body must be FHIR JSON.") from None


def _type(resource_type: str) -> str:
    if resource_type not in WRITABLE and resource_type not in READ_ONLY:
        raise FhirError(404, "not-supported", f"Resource type {resource_type!r} is not supported here.",
                        [resource_type])
    return resource_type


def _writer() -> Identity:
    _caller()
    return require(Permission.patient_write)  # a refusal is a 403 with an authorize/denied audit event


def _location(resource: dict[str, Any]) -> dict[str, str]:
    return {"Location": f"{request.host_url}fhir/{resource['resourceType']}/{resource['id']}/_history/"
                        f"{resource['meta']['versionId']}"}


def _with_etag(resource: dict[str, Any], status: int = 200) -> Response:
    """A write's answer (Prefer: return= decides the body); ETag and Last-Modified on every version."""
    return conditional.write_response(resource, status, _location(resource))


def _read(resource: dict[str, Any]) -> Response:
    """A read's answer; 304 when If-None-Match or If-Modified-Since says the client's copy is current."""
    return conditional.read_response(resource, _location(resource))


def _if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = ascii_int(raw.strip().removeprefix("W/").strip('"'), 1, MAX_INT)
    if value is None:
        raise FhirError(400, "invalid", 'If-Match must be W/"<versionId>".')
    return value


@bp.get("/metadata")
def metadata() -> Response:
    """What this server supports."""
    from importlib.metadata import version

    return fhir_response(capability_statement(request.host_url, version("hie"),
                                              current_app.config["HIE"].max_request_bytes))


@bp.post("")
def bundle() -> Response:
    """A transaction (all or nothing) or batch (each on its own) Bundle."""
    identity = _writer()
    body = _body()
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FhirError(400, "structure", "POST /fhir takes a Bundle.", ["Bundle"])
    if body.get("type") == "transaction":
        return fhir_response(bundles.transaction(identity, body, conditional.return_preference()))
    if body.get("type") == "batch":
        return fhir_response(bundles.batch(identity, body, conditional.return_preference()))
    raise FhirError(400, "not-supported", "Bundle.type must be transaction or batch.", ["Bundle.type"])


@bp.post("/<resource_type>")
def create(resource_type: str) -> Response:
    """Create a resource; the server assigns the id. If-None-Exist: only if no record the caller sees matches."""
    identity = _writer()
    resource = validate(_body(), _type(resource_type))
    resource.pop("id", None)
    if_none_exist = request.headers.get("If-None-Exist")
    if if_none_exist is None and request.query_string:  # fhirpy's get_or_create sends its criteria as the query
        if_none_exist = request.query_string.decode()
    if if_none_exist is not None:
        status, stored = conditional.conditional_create(identity, resource, if_none_exist)
        return _with_etag(stored, status)
    return _with_etag(store.create(identity, resource), 201)


@bp.put("/<resource_type>")
def conditional_update(resource_type: str) -> Response:
    """Conditional update: the one record the query matches, or a new one when none does (several: 412)."""
    if resource_type not in WRITABLE and resource_type not in READ_ONLY:
        return _not_here(TYPE_WRITES)  # /fhir/metadata and the like answer as before these routes
    identity = _writer()
    if resource_type in READ_ONLY:
        raise FhirError(405, "not-supported", f"{resource_type} is read-only.")
    resource = validate(_body(), resource_type)
    target = conditional.target_of_update(identity, resource_type, request.query_string.decode(), resource,
                                          f"{resource_type}?")
    if target is None:
        return _with_etag(store.create(identity, resource), 201)
    status, stored = conditional.put(identity, resource_type, target, resource, _if_match())
    return _with_etag(stored, status)


@bp.delete("/<resource_type>")
def conditional_delete(resource_type: str) -> Response:
    """Conditional delete: the one record the query matches (none: nothing to do; several: 412)."""
    if resource_type not in WRITABLE and resource_type not in READ_ONLY:
        return _not_here(TYPE_WRITES)
    identity = _writer()
    if resource_type in READ_ONLY:
        raise FhirError(405, "not-supported", f"{resource_type} is read-only.")
    target = conditional.target_of_delete(identity, resource_type, request.query_string.decode(),
                                          f"{resource_type}?")
    return _deleted(None if target is None else history.delete_resource(identity, resource_type, target))


def _deleted(version: int | None) -> Response:
    """204, or 200 with an OperationOutcome when Prefer: return=OperationOutcome asks for one."""
    if conditional.return_preference() == "OperationOutcome":
        done = f"Deleted as version {version}." if version is not None else "Nothing was deleted."
        return fhir_response(conditional.informational(done), 200)
    response = Response(status=204)
    if version is not None:
        response.headers["ETag"] = f'W/"{version}"'
    return response


@bp.get("/<resource_type>")
def search(resource_type: str) -> Response:
    """Search one resource type."""
    from hie.exchange.search import search as run_search

    identity = _caller()
    return fhir_response(run_search(identity, _type(resource_type), request.args, request.host_url))


@bp.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    """Read the current version."""
    if resource_type == "AuditEvent":
        from hie.exchange.audit_events import read_audit_event

        authenticate_request()
        return fhir_response(read_audit_event(resource_id))
    identity = _caller()
    reason = valid_break_glass_reason(request.headers.get(BREAK_GLASS_HEADER))
    return _read(store.read(identity, _type(resource_type), resource_id, reason))


@bp.get("/<resource_type>/<resource_id>/_history/<int:version>")
def vread(resource_type: str, resource_id: str, version: int) -> Response:
    """Read one version."""
    identity = _caller()
    reason = valid_break_glass_reason(request.headers.get(BREAK_GLASS_HEADER))
    return _read(history.vread(identity, _type(resource_type), resource_id, version, reason))


@bp.get("/<resource_type>/<resource_id>/_history")
def instance_history(resource_type: str, resource_id: str) -> Response:
    """Every version of one record, newest first (_since, _count)."""
    identity = _caller()
    return fhir_response(history.instance_history(identity, _type(resource_type), resource_id, request.args,
                                                  request.host_url))


@bp.get("/<resource_type>/_history")
def type_history(resource_type: str) -> Response:
    """Every version of the records of one type the caller may see in their shard, newest first."""
    identity = _caller()
    if _type(resource_type) in READ_ONLY:
        raise FhirError(405, "not-supported", f"{resource_type} has no history here.")
    return fhir_response(history.type_history(identity, resource_type, request.args, request.host_url))


@bp.put("/<resource_type>/<resource_id>")
def update(resource_type: str, resource_id: str) -> Response:
    """New version of a resource of the caller's institution (If-Match guards lost updates), or a new resource at a
    client id in the caller's namespace (update as create)."""
    identity = _writer()
    if resource_type in READ_ONLY:
        raise FhirError(405, "not-supported", f"{resource_type} is read-only.")
    status, stored = conditional.put(identity, _type(resource_type), resource_id, _body(), _if_match())
    return _with_etag(stored, status)


@bp.delete("/<resource_type>/<resource_id>")
def delete(resource_type: str, resource_id: str) -> Response:
    """Delete a record of the caller's institution: a new version marks it deleted; reads then answer 410."""
    identity = _writer()
    if _type(resource_type) in READ_ONLY:
        raise FhirError(405, "not-supported", f"{resource_type} is read-only.")
    return _deleted(history.delete_resource(identity, resource_type, resource_id))


@bp.get("/Patient/<patient_id>/$everything")
def patient_everything(patient_id: str) -> Response:
    """Everything about the patient's master person that the caller may see, from every tenant."""
    identity = _caller()
    reason = valid_break_glass_reason(request.headers.get(BREAK_GLASS_HEADER))
    return fhir_response(everything.everything(identity, patient_id, request.host_url, reason, request.args))


@bp.get("/Patient/<patient_id>/$prior-results")
def prior_results(patient_id: str) -> Response:
    """Mutual recognition: results for the same test already done anywhere within the window."""
    return fhir_response(prior.prior_results(_caller(), patient_id, request.args))


def _routes_to(adapter: MapAdapter, method: str) -> str | None:
    """The endpoint a method would reach at this path, or None."""
    try:
        endpoint, _ = adapter.match(request.path, method)
    except HTTPException:
        return None
    return str(endpoint)


@bp.route("", methods=[m for m in METHODS if m != "POST"], defaults={"rest": ""}, endpoint="unmatched_root")
@bp.route("/<path:rest>", methods=list(METHODS))
def unmatched(rest: str) -> Response:
    """Anything else under /fhir, as OperationOutcome: 405 when the path takes other methods, else 404."""
    return _not_here(())


TYPE_WRITES = ("fhir.conditional_update", "fhir.conditional_delete")  # /fhir/<type>: only where <type> is a type


def _not_here(skipped: tuple[str, ...]) -> Response:
    """405 naming the methods the path takes (routes in skipped do not count), else 404."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = [m for m in METHODS
               if _routes_to(adapter, m) not in (None, "fhir.unmatched", "fhir.unmatched_root", *skipped)]
    if allowed:
        response = operation_outcome(405, "not-supported", f"{request.method} is not supported on {request.path}; "
                                     f"allowed: {', '.join(allowed)}.")
        response.headers["Allow"] = ", ".join(allowed)
        return response
    raise FhirError(404, "not-found", f"No FHIR interaction at {request.path}.")
