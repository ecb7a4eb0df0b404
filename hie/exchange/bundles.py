"""Transaction and batch Bundles: a transaction stores all or nothing; urn:uuid references are resolved."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import HTTPException

from hie.exchange import store
from hie.exchange.outcome import HTTP_ISSUE_CODES, FhirError
from hie.exchange.resources import WRITABLE, references, validate
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session, shard_session

MAX_ENTRIES = 1000


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list.", ["Bundle.entry"])
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, "too-costly", f"At most {MAX_ENTRIES} entries per Bundle.", ["Bundle.entry"])
    return entries


def _request_of(entry: Any, index: int) -> tuple[str, str]:
    where = f"Bundle.entry[{index}].request"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FhirError(400, "required", "Each entry needs a request with method and url.", [where])
    method, url = entry["request"].get("method"), entry["request"].get("url")
    if method not in ("POST", "PUT") or not isinstance(url, str):
        raise FhirError(400, "not-supported", "Entries may only POST (create) or PUT (update).", [f"{where}.method"])
    return method, url


def _plan(identity: Identity, entries: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], str]]:
    """Validate every entry and assign ids before storing anything, so references can be rewritten."""
    planned, aliases = [], {}
    for index, entry in enumerate(entries):
        method, url = _request_of(entry, index)
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
            if url_type not in WRITABLE or not url_id:
                raise FhirError(400, "invalid", "PUT url must be Type/id.", url_path)
            resource["id"] = url_id
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            aliases[full_url] = f"{resource_type}/{resource['id']}"
        planned.append((method, url, resource, path))
    for _, _, resource, path in planned:
        for reference in references(resource):
            target = reference["reference"]
            if target.startswith("urn:uuid:"):
                if target not in aliases:
                    raise FhirError(400, "invalid", f"{target} is not the fullUrl of any entry.", [path])
                reference["reference"] = aliases[target]
    return planned


def _apply(identity: Identity, method: str, url: str, resource: dict[str, Any], path: str) -> tuple[str, dict]:
    if method == "POST":
        stored = store.create(identity, resource, path)
        return "201 Created", stored
    resource_type, _, resource_id = url.strip("/").partition("/")
    if_match = None
    stored = store.update(identity, resource_type, resource_id, resource, if_match, path)
    return "200 OK", stored


def _response_entry(status: str, stored: dict[str, Any]) -> dict[str, Any]:
    location = f"{stored['resourceType']}/{stored['id']}/_history/{stored['meta']['versionId']}"
    return {"resource": stored, "response": {"status": status, "location": location,
                                             "etag": f'W/"{stored["meta"]["versionId"]}"'}}


def transaction(identity: Identity, bundle: dict[str, Any]) -> dict[str, Any]:
    """All entries or none: any failure raises, and the request's unit of work rolls everything back."""
    planned = _plan(identity, _entries(bundle))
    patients_first = sorted(planned, key=lambda item: item[2]["resourceType"] != "Patient")
    results = {id(item[2]): _apply(identity, *item) for item in patients_first}
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [_response_entry(*results[id(item[2])]) for item in planned]}


def _as_fhir_error(exc: HTTPException) -> FhirError:
    data = getattr(exc, "data", None) or {}
    code = exc.code or 500
    return FhirError(code, HTTP_ISSUE_CODES.get(code, "processing"), data.get("message") or exc.description or "")


def batch(identity: Identity, bundle: dict[str, Any]) -> dict[str, Any]:
    """Each entry on its own: a failed entry answers its OperationOutcome and the others are kept."""
    out = []
    for index, entry in enumerate(_entries(bundle)):
        shard, platform = shard_session(identity.tenant_code), platform_session()
        shard_savepoint, platform_savepoint = shard.begin_nested(), platform.begin_nested()
        try:
            method, url, resource, path = _plan(identity, [entry])[0]
            out.append(_response_entry(*_apply(identity, method, url, resource, path.replace(
                "entry[0]", f"entry[{index}]"))))
            shard_savepoint.commit()
            platform_savepoint.commit()
        except (FhirError, HTTPException) as exc:
            shard_savepoint.rollback()
            platform_savepoint.rollback()
            error = exc if isinstance(exc, FhirError) else _as_fhir_error(exc)
            issue = {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
            out.append({"response": {"status": str(error.status), "outcome": {
                "resourceType": "OperationOutcome", "issue": [issue]}}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
