"""Idempotent writes: conditional create, update and delete by search criteria, PUT at a client-assigned id, unchanged
re-sends that store nothing, and the HTTP side (Prefer: return=, ETag, Last-Modified, If-None-Match, If-Modified-Since).

Criteria are matched by the exchange's own search, so they see exactly what a search by the caller sees: records the
caller may not read never count. A conditional create whose criteria match only another tenant's or another
institution's invisible records therefore creates (it neither fails nor says that something matched), and the caller
learns nothing it could not have searched for.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from flask import Response, has_request_context, request
from werkzeug.datastructures import MultiDict

from hie.exchange import store
from hie.exchange.history import latest_deleted
from hie.exchange.literal_json import dumps
from hie.exchange.outcome import FhirError, fhir_response
from hie.exchange.resources import validate
from hie.exchange.search import search
from hie.exchange.search_params import search_param_types
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
CODE_RE = re.compile(r"[A-Za-z0-9\-]+", re.ASCII)
RETURN_PREFERENCES = ("minimal", "representation", "OperationOutcome")
Written = tuple[int, dict[str, Any]]  # HTTP status (200 or 201) and the stored resource


def criteria(resource_type: str, raw: str, where: str) -> MultiDict[str, str]:
    """Search criteria of a conditional request (`identifier=s|v`, `?identifier=...` or `Type?identifier=...`),
    always strict: an unknown parameter or a paging/result parameter would widen the match, so it is refused."""
    text = raw.strip()
    text = text[len(resource_type):] if text.startswith(f"{resource_type}?") else text
    pairs = parse_qsl(text.removeprefix("?"), keep_blank_values=True)
    if not pairs:
        raise FhirError(400, "required", "A conditional request needs search criteria, e.g. "
                        "identifier=<system>|<value>.", [where])
    known = search_param_types(resource_type)
    for name, value in pairs:
        if name.split(":", 1)[0] not in known:
            raise FhirError(400, "not-supported", f"{name!r} cannot select {resource_type} records in a conditional "
                            f"request; use its search parameters ({', '.join(sorted(known))}).", [where])
        if known[name.split(":", 1)[0]] == "reference" and "urn:uuid:" in value:
            raise FhirError(400, "not-supported", "Conditional criteria cannot reference Bundle entries (urn:uuid).",
                            [where])
    return MultiDict(pairs)


def matches(identity: Identity, resource_type: str, query: MultiDict[str, str], where: str) -> list[dict[str, Any]]:
    """The records the criteria match that the caller may see, at most two (two means several); the search is
    audited like any other, and a malformed value is refused naming the conditional element."""
    asked = MultiDict(query)
    asked.setlist("_count", ["2"])
    base_url = request.host_url if has_request_context() else "/"
    try:
        found = search(identity, resource_type, asked, base_url, handling_mode="strict")
    except FhirError as error:
        if error.status == 400:
            raise FhirError(400, error.code, error.diagnostics, [where]) from None
        raise
    return [entry["resource"] for entry in found.get("entry", []) if entry.get("search", {}).get("mode") == "match"]


def _several(identity: Identity, action: str, resource_type: str, where: str) -> FhirError:
    audit.record(action, "failure", resource_type=resource_type, detail=f"{where}: the criteria match several records")
    return FhirError(412, "multiple-matches", f"The criteria match more than one {resource_type}; make them "
                     "selective enough to name one record.", [where])


def conditional_create(identity: Identity, resource: dict[str, Any], if_none_exist: str) -> Written:
    """Create unless the criteria match: one visible match is answered (200) and nothing is stored, several are 412."""
    found = existing(identity, resource["resourceType"], if_none_exist, "If-None-Exist")
    return (200, found) if found is not None else (201, store.create(identity, resource))


def existing(identity: Identity, resource_type: str, if_none_exist: str, where: str) -> dict[str, Any] | None:
    """The one visible record a Bundle entry's ifNoneExist matches, None when none does, 412 when several do."""
    found = matches(identity, resource_type, criteria(resource_type, if_none_exist, where), where)
    if len(found) > 1:
        raise _several(identity, "create", resource_type, where)
    return found[0] if found else None


def target_of_update(identity: Identity, resource_type: str, query: str, resource: dict[str, Any],
                     where: str) -> str | None:
    """The id a conditional update writes to: the one visible match, the body's id when nothing matches (update as
    create), or None to create with a new id; several matches are 412, a body id naming another record 400."""
    found = matches(identity, resource_type, criteria(resource_type, query, where), where)
    if len(found) > 1:
        raise _several(identity, "update", resource_type, where)
    if found and resource.get("id") not in (None, found[0]["id"]):
        raise FhirError(400, "invalid", f"The resource id is not the id of the {resource_type} the criteria match.",
                        [f"{resource_type}.id"])
    return found[0]["id"] if found else resource.get("id")


def target_of_delete(identity: Identity, resource_type: str, query: str, where: str) -> str | None:
    """The id a conditional delete removes (None: nothing visible matches); several matches are 412."""
    found = matches(identity, resource_type, criteria(resource_type, query, where), where)
    if len(found) > 1:
        raise _several(identity, "delete", resource_type, where)
    return found[0]["id"] if found else None


def client_id_prefix(identity: Identity) -> str | None:
    """Where the caller may choose ids (update as create): `<shard>.<institution code>.`, so a client id can only
    collide with its own institution's records and PUT at a new id reveals nothing about anyone else's."""
    if not CODE_RE.fullmatch(identity.institution_code):
        return None
    return f"{identity.tenant_code.replace('_', '-')}.{identity.institution_code}."


def _client_id(identity: Identity, resource_type: str, resource_id: str) -> bool:
    prefix = client_id_prefix(identity)
    return resource_type != "Patient" and prefix is not None and resource_id.startswith(prefix) \
        and len(resource_id) > len(prefix) and ID_RE.fullmatch(resource_id) is not None


def _canonical(value: Any) -> Any:
    """Objects with their keys sorted (JSON's member order carries no meaning), arrays in their order."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _comparable(resource: dict[str, Any]) -> str:
    """A resource's content without what the server sets (versionId, lastUpdated), numbers as written."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in resource.items() if k != "meta"}
    return dumps(_canonical({**body, "meta": meta} if meta else body))


def _unchanged(identity: Identity, found: tuple[str, Any], resource: dict[str, Any],
               if_match: int | None) -> dict[str, Any] | None:
    """The current version when a PUT the caller may make would store exactly what is stored (HAPI's no-op update):
    the re-send is audited and stores nothing. None when it changes something, or is not the caller's to write."""
    tenant_code, row = found
    if tenant_code != identity.tenant_code or (if_match is not None and if_match != row.version):
        return None
    basis = store.basis_for(identity, tenant_code, row, write=True)
    if basis is None:
        return None
    current = store.to_resource(row, tenant_code)
    if _comparable(current) != _comparable({**resource, "id": row.id}):
        return None
    audit.record("update", resource_type=row.resource_type, resource_id=row.id, purpose=basis.value,
                 patient=audit.patient_ref(tenant_code, row.patient_id) if row.patient_id else None,
                 detail=f"unchanged: still version {row.version}")
    return current


def put(identity: Identity, resource_type: str, resource_id: str, body: Any, if_match: int | None, path: str = "",
        bundled: dict[str, dict[str, Any]] | None = None) -> Written:
    """PUT at an id: update (an identical re-send stores nothing), re-create a deleted record of the caller's
    institution as its next version, or create at a client id in the caller's namespace; else the update's 404."""
    resource = validate(body, resource_type, path)
    if resource.get("id") not in (None, resource_id):
        raise FhirError(400, "invalid", "The resource id must match the URL.", [f"{path or resource_type}.id"])
    found = store.locate_row(resource_type, resource_id)
    if found is not None:
        current = _unchanged(identity, found, resource, if_match)
        if current is not None:
            return 200, current
        return 200, store.update(identity, resource_type, resource_id, resource, if_match, path, bundled)
    gone = latest_deleted(resource_type, resource_id)
    if gone is not None and gone[0] == identity.tenant_code and if_match is None and \
            store.basis_for(identity, gone[0], gone[1], write=True) is not None:
        return 201, store.create(identity, {**resource, "id": resource_id}, path, bundled, gone[1].version + 1)
    if gone is None and if_match is None and _client_id(identity, resource_type, resource_id):
        return 201, store.create(identity, {**resource, "id": resource_id}, path, bundled)
    try:
        return 200, store.update(identity, resource_type, resource_id, resource, if_match, path, bundled)
    except FhirError as error:
        prefix = client_id_prefix(identity)
        if error.status != 404 or prefix is None or resource_type == "Patient":
            raise
        raise FhirError(404, error.code, f"{error.diagnostics} A new {resource_type} is created by PUT only at an "
                        f"id starting with {prefix}") from None


def return_preference() -> str:
    """Prefer: return=minimal|representation|OperationOutcome (representation when absent or unknown)."""
    for part in re.split(r"[,;]", request.headers.get("Prefer", "")):
        name, _, value = part.strip().partition("=")
        if name.strip() == "return" and value.strip().strip('"') in RETURN_PREFERENCES:
            return value.strip().strip('"')
    return "representation"


def last_modified(resource: dict[str, Any]) -> datetime:
    """meta.lastUpdated as an aware UTC time."""
    when = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def version_headers(resource: dict[str, Any]) -> dict[str, str]:
    """ETag W/"<versionId>" and Last-Modified (RFC 7231 date) of a version."""
    return {"ETag": f'W/"{resource["meta"]["versionId"]}"',
            "Last-Modified": format_datetime(last_modified(resource), usegmt=True)}


def not_modified(resource: dict[str, Any]) -> bool:
    """If-None-Match (weak comparison, `*` for any) or, without it, If-Modified-Since (to the second) says the
    client's copy is current; an unreadable If-Modified-Since is ignored, as RFC 7232 says."""
    tags = request.headers.get("If-None-Match")
    if tags is not None:
        version = resource["meta"]["versionId"]
        given = {tag.strip().removeprefix("W/") for tag in tags.split(",")}
        return "*" in given or f'"{version}"' in given
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        asked = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    asked = asked if asked.tzinfo else asked.replace(tzinfo=UTC)
    return last_modified(resource).replace(microsecond=0) <= asked


def read_response(resource: dict[str, Any], headers: dict[str, str]) -> Response:
    """A read's answer: 304 without a body when the client's copy is current, else the resource."""
    headers = {**headers, **version_headers(resource)}
    if not_modified(resource):
        response = Response(status=304)
        for name, value in headers.items():
            response.headers[name] = value
        return response
    return fhir_response(resource, 200, headers)


def informational(diagnostics: str) -> dict[str, Any]:
    """The OperationOutcome of a successful write (Prefer: return=OperationOutcome)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}]}


def write_response(resource: dict[str, Any], status: int, headers: dict[str, str]) -> Response:
    """A create's or update's answer as Prefer: return= asks: the resource, nothing, or an OperationOutcome."""
    headers = {**headers, **version_headers(resource)}
    preference = return_preference()
    if preference == "minimal":
        response = Response(status=status)
        for name, value in headers.items():
            response.headers[name] = value
        return response
    if preference == "OperationOutcome":
        done = {201: "Created", 200: "Stored"}[status]
        return fhir_response(informational(f"{done} {resource['resourceType']}/{resource['id']} version "
                                           f"{resource['meta']['versionId']}."), status, headers)
    return fhir_response(resource, status, headers)
