"""Transaction and batch Bundles: a transaction stores all or nothing; urn:uuid references are resolved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from flask import current_app, has_app_context
from werkzeug.exceptions import HTTPException

from hie.exchange import conditional, history, store
from hie.exchange.bundle_refs import Aliases, rewrite
from hie.exchange.outcome import HTTP_ISSUE_CODES, FhirError
from hie.exchange.resources import WRITABLE, validate
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session, shard_session
from hie.platform.limits import ascii_int

MAX_ENTRIES_SETTING = "HIE_FHIR_MAX_BUNDLE_ENTRIES"
DEFAULT_MAX_ENTRIES = 10000  # the largest Synthea patients run to several thousand entries


def max_entries() -> int:
    """The most entries a Bundle may hold: HIE_FHIR_MAX_BUNDLE_ENTRIES (a positive integer), else the default."""
    raw = current_app.config["HIE"].extra.get(MAX_ENTRIES_SETTING) if has_app_context() else None
    value = ascii_int(raw.strip(), 1) if raw else None
    return value or DEFAULT_MAX_ENTRIES


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list.", ["Bundle.entry"])
    limit = max_entries()
    if len(entries) > limit:
        raise FhirError(413, "too-costly", f"Bundle.entry holds {len(entries)} entries; this server takes at most "
                        f"{limit} per Bundle ({MAX_ENTRIES_SETTING}). Send the records in several Bundles.",
                        ["Bundle.entry"])
    return entries


CONDITIONAL_READS = ("ifNoneMatch", "ifModifiedSince")  # conditions of reads: a Bundle here carries no reads
METHODS = ("POST", "PUT", "DELETE")


@dataclass(frozen=True)
class Planned:
    """One validated entry: its request, its resource with the id assigned (None: a DELETE), where it sits in the
    Bundle, the record an ifNoneExist matched (answered, not stored) and the id a PUT or DELETE acts on."""

    method: str
    url: str
    resource: dict[str, Any] | None
    index: int
    if_match: int | None
    resource_type: str = ""
    existing: dict[str, Any] | None = None
    target: str | None = None

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


def _request_of(identity: Identity, entry: Any, index: int) -> tuple[str, str, int | None, str | None]:
    where = f"Bundle.entry[{index}].request"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FhirError(400, "required", "Each entry needs a request with method and url.", [where])
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if method not in METHODS:
        _refuse_method(identity, method, url, where)
    if method not in METHODS or not isinstance(url, str):
        raise FhirError(400, "not-supported", "Entries may only POST (create), PUT (update) or DELETE.",
                        [f"{where}.method"])
    for name in CONDITIONAL_READS:
        if name in request:
            raise FhirError(400, "not-supported", f"{name} conditions reads, and a Bundle here carries no reads.",
                            [f"{where}.{name}"])
    if_none_exist = request.get("ifNoneExist")
    if if_none_exist is not None and (method != "POST" or not isinstance(if_none_exist, str)):
        raise FhirError(400, "invalid", "ifNoneExist is search criteria of a POST (conditional create).",
                        [f"{where}.ifNoneExist"])
    if method == "POST" and "?" in url:
        raise FhirError(400, "not-supported", "A conditional create is a POST to the type with ifNoneExist, not a "
                        "url with a query.", [f"{where}.url"])
    if_match = _if_match(request.get("ifMatch"), where)
    if method != "PUT" and if_match is not None:
        raise FhirError(400, "invalid", "ifMatch applies to PUT only.", [f"{where}.ifMatch"])
    return method, url, if_match, if_none_exist


def _delete_plan(identity: Identity, url: str, index: int) -> Planned:
    """A DELETE of Type/id, or of the one record Type?criteria matches (none: nothing to delete)."""
    where = f"Bundle.entry[{index}].request.url"
    path, query, criteria = url.strip().strip("/").partition("?")
    resource_type, _, resource_id = path.partition("/")
    if resource_type not in WRITABLE or (not query and (not resource_id or "/" in resource_id)) or \
            (query and resource_id):
        raise FhirError(400, "invalid", "DELETE url must be <type>/<id> or <type>?<criteria>.", [where])
    target = conditional.target_of_delete(identity, resource_type, criteria, where) if query else resource_id
    return Planned("DELETE", url, None, index, None, resource_type, target=target)


def _plan(identity: Identity, entries: list[tuple[int, Any]]) -> list[Planned]:
    """Validate every entry and assign ids before storing anything, so references can be rewritten."""
    planned, aliases = [], Aliases()
    for index, entry in entries:
        method, url, if_match, if_none_exist = _request_of(identity, entry, index)
        if method == "DELETE":
            planned.append(_delete_plan(identity, url, index))
            continue
        path = f"Bundle.entry[{index}].resource"
        resource = validate(entry.get("resource"), None, path)
        resource_type = resource["resourceType"]
        url_path = [f"Bundle.entry[{index}].request.url"]
        found = target = None
        if method == "PUT" and url.strip("/").startswith(f"{resource_type}?"):
            target = conditional.target_of_update(identity, resource_type, url.strip("/"), resource, url_path[0])
            method = "PUT" if target is not None else "POST"  # no match and no id: a create
        elif method == "PUT":
            url_type, _, target = url.strip("/").partition("/")
            if url_type != resource_type or not target or "/" in target:
                raise FhirError(400, "invalid", f"PUT url must be {resource_type}/<id> or {resource_type}?<criteria>.",
                                url_path)
            if resource.get("id") not in (None, target):
                raise FhirError(400, "invalid", "The resource id must match the url.", [f"{path}.id"])
        elif url.strip("/") != resource_type:
            raise FhirError(400, "invalid", f"POST url must be {resource_type}.", url_path)
        elif if_none_exist is not None:
            found = conditional.existing(identity, resource_type, if_none_exist,
                                         f"Bundle.entry[{index}].request.ifNoneExist")
        resource["id"] = found["id"] if found else target or store.new_resource_id(resource_type, identity.tenant_code)
        aliases.add(entry.get("fullUrl"), resource_type, resource["id"], index)
        planned.append(Planned(method, url, resource, index, if_match, resource_type, found, target))
    for item in planned:
        if item.resource is not None:
            rewrite(identity, item.resource, item.path, item.index, aliases)
    return planned


def _apply(identity: Identity, item: Planned, bundled: dict[str, dict[str, Any]]) -> tuple[str, dict | None]:
    if item.existing is not None:
        return "200 OK", item.existing  # ifNoneExist matched: nothing is stored
    if item.method == "DELETE":
        if item.target is not None:
            history.delete_resource(identity, item.resource_type, item.target)
        return "204 No Content", None
    if item.method == "POST":
        return "201 Created", store.create(identity, item.resource, item.path, bundled)
    status, stored = conditional.put(identity, item.resource_type, item.target or "", item.resource, item.if_match,
                                     item.path, bundled)
    return ("201 Created" if status == 201 else "200 OK"), stored


def _response_entry(status: str, stored: dict[str, Any] | None, preference: str) -> dict[str, Any]:
    """An entry's response; its resource as Prefer: return= asks (a DELETE has none)."""
    if stored is None:
        return {"response": {"status": status}}
    version = stored["meta"]["versionId"]
    response = {"status": status, "location": f"{stored['resourceType']}/{stored['id']}/_history/{version}",
                "etag": f'W/"{version}"', "lastModified": stored["meta"]["lastUpdated"]}
    if preference == "OperationOutcome":
        response["outcome"] = conditional.informational(f"{status}: {stored['resourceType']}/{stored['id']} "
                                                        f"version {version}.")
    return {"response": response} if preference != "representation" else {"resource": stored, "response": response}


def _bundled(planned: list[Planned]) -> dict[str, dict[str, Any]]:
    """The Bundle's own resources by reference, so entries may point at each other before they are stored."""
    return {f"{item.resource_type}/{item.resource['id']}": item.existing or item.resource for item in planned
            if item.resource is not None}


PROCESSING_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def _order(item: Planned) -> tuple[bool, bool, int]:
    """The spec's order (DELETE, POST, PUT/PATCH, GET), except that Patients, whom other entries are about, are
    stored right after the deletes; every condition was evaluated before anything was stored, so only a delete
    and a write of the same record could tell the difference, and deletes still go first."""
    rank = PROCESSING_ORDER[item.method]
    return rank != 0, item.resource_type != "Patient", rank


def transaction(identity: Identity, bundle: dict[str, Any], preference: str = "representation") -> dict[str, Any]:
    """All entries or none: any failure raises, and the request's unit of work rolls everything back. Entries are
    processed in the spec's order and answered in the request's."""
    planned = _plan(identity, list(enumerate(_entries(bundle))))
    bundled = _bundled(planned)
    ordered = sorted(planned, key=_order)
    results = {item.index: _apply(identity, item, bundled) for item in ordered}
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [_response_entry(*results[item.index], preference) for item in planned]}


def _as_fhir_error(exc: HTTPException) -> FhirError:
    data = getattr(exc, "data", None) or {}
    code = exc.code or 500
    return FhirError(code, HTTP_ISSUE_CODES.get(code, "processing"), data.get("message") or exc.description or "")


def _outcome(error: FhirError) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
    if error.expression:
        issue["expression"] = error.expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def batch(identity: Identity, bundle: dict[str, Any], preference: str = "representation") -> dict[str, Any]:
    """Each entry on its own: a failed entry answers its OperationOutcome and the others are kept."""
    out = []
    for index, entry in enumerate(_entries(bundle)):
        shard, platform = shard_session(identity.tenant_code), platform_session()
        shard_savepoint, platform_savepoint = shard.begin_nested(), platform.begin_nested()
        try:
            planned = _plan(identity, [(index, entry)])
            out.append(_response_entry(*_apply(identity, planned[0], _bundled(planned)), preference))
            shard_savepoint.commit()
            platform_savepoint.commit()
        except (FhirError, HTTPException) as exc:
            shard_savepoint.rollback()
            platform_savepoint.rollback()
            error = exc if isinstance(exc, FhirError) else _as_fhir_error(exc)
            out.append({"response": {"status": str(error.status), "outcome": _outcome(error)}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
