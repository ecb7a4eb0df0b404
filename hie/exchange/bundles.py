"""Transaction and batch Bundles: a transaction stores all or nothing; urn:uuid references are resolved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.exceptions import HTTPException

from hie.exchange import store
from hie.exchange.outcome import HTTP_ISSUE_CODES, FhirError
from hie.exchange.resources import references, validate
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session, shard_session
from hie.platform.limits import ascii_int

MAX_ENTRIES = 1000


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list.", ["Bundle.entry"])
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, "too-costly", f"At most {MAX_ENTRIES} entries per Bundle.", ["Bundle.entry"])
    return entries


CONDITIONAL = ("ifNoneExist", "ifNoneMatch", "ifModifiedSince")


@dataclass(frozen=True)
class Planned:
    """One validated entry: its request, its resource with the id assigned, and where it sits in the Bundle."""

    method: str
    url: str
    resource: dict[str, Any]
    index: int
    if_match: int | None

    @property
    def path(self) -> str:
        """FHIRPath of the entry's resource."""
        return f"Bundle.entry[{self.index}].resource"


def _if_match(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    value = ascii_int(raw.strip().removeprefix("W/").strip('"'), 1) if isinstance(raw, str) else None
    if value is None:
        raise FhirError(400, "invalid", 'request.ifMatch must be W/"<versionId>".', [f"{where}.ifMatch"])
    return value


_ACTIONS = {"GET": "read", "HEAD": "read", "DELETE": "delete", "PATCH": "update"}


def _asked(url: str) -> tuple[str, str]:
    """(type, id) a refused entry's url asks for: Type/id[/...], or the patient of a Type?patient=... search."""
    path, _, query = url.strip().strip("/").partition("?")
    kind, _, rest = path.partition("/")
    if rest:
        return kind, rest.split("/", 1)[0]
    for name, value in parse_qsl(query):
        if name in ("patient", "subject"):
            return "Patient", value.removeprefix("Patient/")
    return kind, ""


def _refuse_method(identity: Identity, method: Any, url: Any, where: str) -> None:
    """Audit an entry refused for its method, naming the record (and patient) it asked for."""
    action = _ACTIONS.get(method, "write") if isinstance(method, str) else "write"
    kind, target_id = _asked(url) if isinstance(url, str) else ("", "")
    store.refuse_record(identity, action, kind, target_id,
                        f"{where}.method {str(method)[:10]!r} is not allowed in a Bundle", "denied")


def _request_of(identity: Identity, entry: Any, index: int) -> tuple[str, str, int | None]:
    where = f"Bundle.entry[{index}].request"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FhirError(400, "required", "Each entry needs a request with method and url.", [where])
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if method not in ("POST", "PUT"):
        _refuse_method(identity, method, url, where)
    if method not in ("POST", "PUT") or not isinstance(url, str):
        raise FhirError(400, "not-supported", "Entries may only POST (create) or PUT (update).", [f"{where}.method"])
    for name in CONDITIONAL:
        if name in request:
            raise FhirError(400, "not-supported", f"Conditional requests ({name}) are not supported here.",
                            [f"{where}.{name}"])
    if "?" in url:
        raise FhirError(400, "not-supported", "Conditional URLs (with a query) are not supported here.",
                        [f"{where}.url"])
    if_match = _if_match(request.get("ifMatch"), where)
    if method == "POST" and if_match is not None:
        raise FhirError(400, "invalid", "ifMatch applies to PUT only.", [f"{where}.ifMatch"])
    return method, url, if_match


def _plan(identity: Identity, entries: list[tuple[int, Any]]) -> list[Planned]:
    """Validate every entry and assign ids before storing anything, so references can be rewritten."""
    planned, aliases = [], {}
    for index, entry in entries:
        method, url, if_match = _request_of(identity, entry, index)
        path = f"Bundle.entry[{index}].resource"
        resource = validate(entry.get("resource"), None, path)
        resource_type = resource["resourceType"]
        url_path = [f"Bundle.entry[{index}].request.url"]
        if method == "POST":
            if url.strip("/") != resource_type:
                raise FhirError(400, "invalid", f"POST url must be {resource_type}.", url_path)
            resource["id"] = store.new_resource_id(resource_type, identity.tenant_code)
        else:
            url_type, _, url_id = url.strip("/").partition("/")
            if url_type != resource_type or not url_id or "/" in url_id:
                raise FhirError(400, "invalid", f"PUT url must be {resource_type}/<id>.", url_path)
            if resource.get("id") not in (None, url_id):
                raise FhirError(400, "invalid", "The resource id must match the url.", [f"{path}.id"])
            resource["id"] = url_id
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            aliases[full_url] = f"{resource_type}/{resource['id']}"
        planned.append(Planned(method, url, resource, index, if_match))
    for item in planned:
        for where, reference in references(item.resource, item.path):
            target = reference["reference"]
            if target.startswith("urn:uuid:"):
                if target not in aliases:
                    raise FhirError(400, "invalid", f"{target} is not the fullUrl of any entry.", [where])
                reference["reference"] = aliases[target]
    return planned


def _apply(identity: Identity, item: Planned, bundled: dict[str, dict[str, Any]]) -> tuple[str, dict]:
    if item.method == "POST":
        return "201 Created", store.create(identity, item.resource, item.path, bundled)
    resource_type, _, resource_id = item.url.strip("/").partition("/")
    return "200 OK", store.update(identity, resource_type, resource_id, item.resource, item.if_match, item.path,
                                  bundled)


def _response_entry(status: str, stored: dict[str, Any]) -> dict[str, Any]:
    location = f"{stored['resourceType']}/{stored['id']}/_history/{stored['meta']['versionId']}"
    return {"resource": stored, "response": {"status": status, "location": location,
                                             "etag": f'W/"{stored["meta"]["versionId"]}"'}}


def _bundled(planned: list[Planned]) -> dict[str, dict[str, Any]]:
    """The Bundle's own resources by reference, so entries may point at each other before they are stored."""
    return {f"{item.resource['resourceType']}/{item.resource['id']}": item.resource for item in planned}


def transaction(identity: Identity, bundle: dict[str, Any]) -> dict[str, Any]:
    """All entries or none: any failure raises, and the request's unit of work rolls everything back."""
    planned = _plan(identity, list(enumerate(_entries(bundle))))
    bundled = _bundled(planned)
    patients_first = sorted(planned, key=lambda item: item.resource["resourceType"] != "Patient")
    results = {item.index: _apply(identity, item, bundled) for item in patients_first}
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [_response_entry(*results[item.index]) for item in planned]}


def _as_fhir_error(exc: HTTPException) -> FhirError:
    data = getattr(exc, "data", None) or {}
    code = exc.code or 500
    return FhirError(code, HTTP_ISSUE_CODES.get(code, "processing"), data.get("message") or exc.description or "")


def _outcome(error: FhirError) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
    if error.expression:
        issue["expression"] = error.expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def batch(identity: Identity, bundle: dict[str, Any]) -> dict[str, Any]:
    """Each entry on its own: a failed entry answers its OperationOutcome and the others are kept."""
    out = []
    for index, entry in enumerate(_entries(bundle)):
        shard, platform = shard_session(identity.tenant_code), platform_session()
        shard_savepoint, platform_savepoint = shard.begin_nested(), platform.begin_nested()
        try:
            planned = _plan(identity, [(index, entry)])
            out.append(_response_entry(*_apply(identity, planned[0], _bundled(planned))))
            shard_savepoint.commit()
            platform_savepoint.commit()
        except (FhirError, HTTPException) as exc:
            shard_savepoint.rollback()
            platform_savepoint.rollback()
            error = exc if isinstance(exc, FhirError) else _as_fhir_error(exc)
            out.append({"response": {"status": str(error.status), "outcome": _outcome(error)}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
