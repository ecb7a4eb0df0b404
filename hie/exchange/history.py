"""Versions as FHIR sees them: DELETE as a deletion version, 410 Gone afterwards, and _history of an instance or type.

A deletion removes the current row and its search index rows and stores one more version whose content is a marker
(`{"deleted": {...}}`, never a resource), keeping the deleted record's patient so that who may learn of the deletion
follows the same per-record rules as a read. Patients are the register's and the EMPI's records and are not deleted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from werkzeug.datastructures import MultiDict

from hie.exchange import registry, store
from hie.exchange.models import FhirResource, FhirResourceVersion
from hie.exchange.outcome import FhirError
from hie.exchange.resources import WRITABLE, parse_date
from hie.exchange.search_params import DEFAULT_COUNT, MAX_COUNT
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import TenantBase, platform_session, shard_session, utcnow
from hie.platform.limits import MAX_INT, ascii_int

DELETED = "deleted"
PAGE_PARAM = "_cursor"  # as search pages: the opaque token of a next link
HISTORY_PARAMS = ("_count", "_since", PAGE_PARAM)
Version = tuple[str, FhirResourceVersion]  # a version row and its shard


def _marker(row: FhirResourceVersion) -> dict[str, Any] | None:
    """The deletion a version records, or None for a stored resource."""
    if row.sealed:
        return None  # only Patients are sealed, and they are never deleted
    stored = json.loads(row.content)
    return stored.get(DELETED) if "resourceType" not in stored else None


def latest_deleted(resource_type: str, resource_id: str) -> tuple[str, FhirResource] | None:
    """A deleted record's shard and a stand-in row (its last institution, patient and version), else None."""
    if resource_type == "Patient" or resource_type not in WRITABLE or len(resource_id) > 64:
        return None
    tenant_code = store.tenant_of(platform_session(), resource_type, resource_id)
    if tenant_code is None:
        return None
    session = shard_session(tenant_code)
    if session.get(FhirResource, (resource_type, resource_id)) is not None:
        return None
    last = session.scalars(select(FhirResourceVersion).where(
        FhirResourceVersion.resource_type == resource_type, FhirResourceVersion.id == resource_id)
        .order_by(FhirResourceVersion.version.desc()).limit(1)).first()
    marker = _marker(last) if last is not None else None
    if last is None or marker is None:
        return None
    return tenant_code, FhirResource(resource_type=resource_type, id=resource_id, version=last.version,
                                     institution_id=last.institution_id, patient_id=marker.get("patient"),
                                     last_updated=last.last_updated, content="")


def _writable(identity: Identity, tenant_code: str, row: FhirResource) -> access.Basis | None:
    if tenant_code != identity.tenant_code:
        return None
    return store.basis_for(identity, tenant_code, row, write=True)


def _patient(tenant_code: str, row: FhirResource) -> str | None:
    return audit.patient_ref(tenant_code, row.patient_id) if row.patient_id else None


def refuse_deleted(identity: Identity, resource_type: str, resource_id: str, write: bool, reason: str | None) -> None:
    """A deleted record answers 410 Gone to whoever could read it (write: change it); anyone else gets the usual 404."""
    gone = latest_deleted(resource_type, resource_id)
    if gone is None:
        return
    tenant_code, row = gone
    basis = _writable(identity, tenant_code, row) if write else store.basis_for(identity, tenant_code, row,
                                                                               reason=reason)
    if basis is None:
        return
    audit.record("update" if write else "read", "failure", resource_type=resource_type, resource_id=resource_id,
                 purpose=basis.value, patient=_patient(tenant_code, row), break_glass=basis is access.Basis.break_glass,
                 detail=f"deleted at version {row.version}")
    raise FhirError(410, "deleted", f"{resource_type}/{resource_id} was deleted (version {row.version}).")


def _index_tables() -> list[Any]:
    """Every shard table indexing resources by (resource_type, resource_id): tokens, dates and any added later."""
    return [table for table in TenantBase.metadata.sorted_tables
            if {"resource_type", "resource_id"} <= set(table.columns.keys())]


def delete_resource(identity: Identity, resource_type: str, resource_id: str) -> int | None:
    """Delete a record of the caller's institution as a new version; None when it was already deleted (nothing
    changes). Unknown ids and records the caller may not change are 404, audited naming the patient."""
    if resource_type == "Patient":
        store.refuse_record(identity, "delete", "Patient", resource_id, "a Patient is not deleted", "denied")
        raise FhirError(405, "not-supported", "A Patient is the patient register's and the EMPI's record and cannot "
                        "be deleted here.")
    found = store.locate_row(resource_type, resource_id)
    gone = latest_deleted(resource_type, resource_id) if found is None else None
    tenant_code, row = found or gone or ("", None)
    basis = _writable(identity, tenant_code, row) if row is not None else None
    if row is None or basis is None:
        audit.record("delete", "not_found" if row is None else "denied", resource_type=resource_type,
                     resource_id=resource_id[:80], patient=_patient(tenant_code, row) if row is not None else None)
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known or not visible to you.")
    if gone is not None:
        audit.record("delete", resource_type=resource_type, resource_id=resource_id, purpose=basis.value,
                     patient=_patient(tenant_code, row), detail=f"already deleted at version {row.version}")
        return None
    session, now, version = shard_session(tenant_code), utcnow(), row.version + 1
    marker = {DELETED: {"resourceType": resource_type, "id": resource_id, "versionId": str(version),
                        "lastUpdated": now.isoformat(timespec="milliseconds"), "patient": row.patient_id}}
    session.add(FhirResourceVersion(resource_type=resource_type, id=resource_id, version=version,
                                    institution_id=row.institution_id, last_updated=now, sealed=False,
                                    content=json.dumps(marker, separators=(",", ":"))))
    for table in _index_tables():
        session.execute(delete(table).where(table.c.resource_type == resource_type,
                                            table.c.resource_id == resource_id))
    session.delete(row)
    session.flush()
    person_id = store.person_of(tenant_code, row.patient_id)
    if person_id is not None:
        registry.locate(tenant_code, person_id)  # moves the person's stamp: cached summaries drop the record
    audit.record("delete", resource_type=resource_type, resource_id=resource_id, purpose=basis.value,
                 patient=_patient(tenant_code, row))
    return version


def vread(identity: Identity, resource_type: str, resource_id: str, version: int,
          reason: str | None) -> dict[str, Any]:
    """One version, also of a deleted record; the deletion's own version is 410 Gone."""
    gone = latest_deleted(resource_type, resource_id)
    basis = store.basis_for(identity, gone[0], gone[1], reason=reason) if gone else None
    if gone is None or basis is None:
        resource = store.read(identity, resource_type, resource_id, reason, version)
        if "resourceType" not in resource:
            raise FhirError(410, "deleted", f"Version {version} of {resource_type}/{resource_id} is its deletion.")
        return resource
    tenant_code, row = gone
    audit.record("read", resource_type=resource_type, resource_id=resource_id, purpose=basis.value,
                 patient=_patient(tenant_code, row), break_glass=basis is access.Basis.break_glass,
                 detail=reason if basis is access.Basis.break_glass else None)
    old = shard_session(tenant_code).get(FhirResourceVersion, (resource_type, resource_id, version))
    if old is None:
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} has no version {version}.")
    if _marker(old) is not None:
        raise FhirError(410, "deleted", f"Version {version} of {resource_type}/{resource_id} is its deletion.")
    return store.to_resource(old, tenant_code)


def _paging(args: MultiDict[str, str]) -> tuple[int, datetime | None, str | None]:
    """_count (capped at the server's maximum), _since and the page token; anything else is refused."""
    for name in args:
        if name not in HISTORY_PARAMS:
            raise FhirError(400, "not-supported", f"Unknown history parameter {name!r}; history takes "
                            f"{', '.join(HISTORY_PARAMS)}.", [name])
    raw_count = args.get("_count")
    count = ascii_int(raw_count, 0, MAX_INT) if raw_count is not None else DEFAULT_COUNT
    if count is None:
        raise FhirError(400, "invalid", "_count must be a whole number of entries.", ["_count"])
    since = None
    if (raw_since := args.get("_since")) is not None:
        try:
            since = parse_date(raw_since).astimezone(UTC)
        except ValueError:
            raise FhirError(400, "invalid", "_since must be a FHIR instant (2026-11-30T08:00:00Z).",
                            ["_since"]) from None
    return min(count, MAX_COUNT), since, args.get(PAGE_PARAM)


def _entry(base: str, tenant_code: str, row: FhirResourceVersion) -> dict[str, Any]:
    """One history entry: the version's resource, or for a deletion its request and no resource."""
    url = f"{row.resource_type}/{row.id}"
    response = {"etag": f'W/"{row.version}"', "lastModified": row.last_updated.isoformat(timespec="milliseconds")}
    if _marker(row) is not None:
        return {"fullUrl": f"{base}/{url}", "request": {"method": "DELETE", "url": url},
                "response": {"status": "410 Gone", **response}}
    request = {"method": "POST", "url": row.resource_type} if row.version == 1 else {"method": "PUT", "url": url}
    return {"fullUrl": f"{base}/{url}", "resource": store.to_resource(row, tenant_code), "request": request,
            "response": {"status": "201 Created" if row.version == 1 else "200 OK", **response}}


def _bundle(base: str, path: str, args: MultiDict[str, str], total: int, entries: list[dict[str, Any]],
            next_page: str | None) -> dict[str, Any]:
    echo = [(name, value) for name, value in args.items(multi=True) if name != PAGE_PARAM]
    self_query = urlencode(list(args.items(multi=True)))
    links = [{"relation": "self", "url": f"{base}/{path}" + (f"?{self_query}" if self_query else "")}]
    if next_page is not None:
        links.append({"relation": "next", "url": f"{base}/{path}?{urlencode([*echo, (PAGE_PARAM, next_page)])}"})
    return {"resourceType": "Bundle", "type": "history", "total": total, "link": links, "entry": entries}


def _visible(identity: Identity, resource_type: str, resource_id: str) -> tuple[str, FhirResource, access.Basis]:
    """The record (current or deleted) and why the caller may read it; 404 otherwise, audited naming the patient."""
    found = store.locate_row(resource_type, resource_id) or latest_deleted(resource_type, resource_id)
    basis = store.basis_for(identity, found[0], found[1]) if found else None
    if found is None or basis is None:
        store.refuse_record(identity, "read", resource_type, resource_id, "history")
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known or not visible to you.")
    return found[0], found[1], basis


def instance_history(identity: Identity, resource_type: str, resource_id: str, args: MultiDict[str, str],
                     base_url: str) -> dict[str, Any]:
    """Every version of one record the caller may read, newest first, deletions included."""
    tenant_code, row, basis = _visible(identity, resource_type, resource_id)  # before the parameters: 404 first
    count, since, page = _paging(args)
    before = ascii_int(page, 1, MAX_INT) if page is not None else None
    if page is not None and before is None:
        raise FhirError(400, "invalid", f"{PAGE_PARAM} must be the token of a next link.", [PAGE_PARAM])
    where = [FhirResourceVersion.resource_type == resource_type, FhirResourceVersion.id == resource_id]
    if since is not None:
        where.append(FhirResourceVersion.last_updated >= since)
    session = shard_session(tenant_code)
    total = session.scalar(select(func.count()).select_from(FhirResourceVersion).where(*where)) or 0
    if before is not None:
        where.append(FhirResourceVersion.version < before)
    rows = session.scalars(select(FhirResourceVersion).where(*where)
                           .order_by(FhirResourceVersion.version.desc()).limit(count + 1)).all() if count else []
    base = f"{base_url.rstrip('/')}/fhir"
    entries = [_entry(base, tenant_code, version) for version in rows[:count]]
    if not total and row.content and since is None and resource_type == "Patient":
        entries, total = [_register_entry(base, tenant_code, row)], 1  # registered without FHIR: its one version
    audit.record("read", resource_type=resource_type, resource_id=resource_id, purpose=basis.value,
                 patient=_patient(tenant_code, row), detail=f"history versions={len(entries)} total={total}")
    more = len(rows) > count
    return _bundle(base, f"{resource_type}/{resource_id}/_history", args, total, entries,
                   str(rows[count - 1].version) if more else None)


def _register_entry(base: str, tenant_code: str, row: FhirResource) -> dict[str, Any]:
    resource = store.to_resource(row, tenant_code)
    return {"fullUrl": f"{base}/Patient/{row.id}", "resource": resource,
            "request": {"method": "POST", "url": "Patient"},
            "response": {"status": "201 Created", "etag": f'W/"{row.version}"',
                         "lastModified": resource["meta"]["lastUpdated"]}}


def _after(token: str) -> ColumnElement[bool]:
    """Versions after a type history page's last one, in its order (newest first, then id and version down)."""
    parts = token.split("~")
    try:
        when = datetime.fromisoformat(parts[0]).astimezone(UTC)
    except (ValueError, IndexError):
        when = None
    version = ascii_int(parts[2], 1, MAX_INT) if len(parts) == 3 else None
    if when is None or version is None:
        raise FhirError(400, "invalid", f"{PAGE_PARAM} must be the token of a next link.", [PAGE_PARAM])
    v = FhirResourceVersion
    return or_(v.last_updated < when, and_(v.last_updated == when, or_(
        v.id < parts[1], and_(v.id == parts[1], v.version < version))))


def _shown_basis(identity: Identity, version: FhirResourceVersion) -> access.Basis:
    """Why a version in a type history was shown, for the audit (as a search says it)."""
    if version.institution_id == identity.institution_id and access.Permission.patient_read in \
            access.permissions_of(identity):
        return access.Basis.own_institution
    return access.Basis.self if identity.patient_id is not None else access.Basis.care_relationship


def type_history(identity: Identity, resource_type: str, args: MultiDict[str, str], base_url: str) -> dict[str, Any]:
    """Every version of the records of one type in the caller's shard that the caller may see, newest first.
    Visibility is the search's: the caller's institution's records, and others by their current patient (so another
    institution's deleted records drop out; their instance history stays readable by the record's rules)."""
    count, since, page = _paging(args)
    tenant_code, v = identity.tenant_code, FhirResourceVersion
    visible = store.visible_condition(identity, tenant_code, institution=v.institution_id,
                                      patient=FhirResource.patient_id)
    where = [v.resource_type == resource_type, visible]
    if since is not None:
        where.append(v.last_updated >= since)
    joined = and_(FhirResource.resource_type == v.resource_type, FhirResource.id == v.id)
    session = shard_session(tenant_code)
    total = session.scalar(select(func.count()).select_from(v).outerjoin(FhirResource, joined).where(*where)) or 0
    if page is not None:
        where.append(_after(page))
    rows = session.execute(select(v, FhirResource.patient_id).outerjoin(FhirResource, joined).where(*where)
                           .order_by(v.last_updated.desc(), v.id.desc(), v.version.desc())
                           .limit(count + 1)).all() if count else []
    base = f"{base_url.rstrip('/')}/fhir"
    shown = rows[:count]
    entries = [_entry(base, tenant_code, version) for version, _ in shown]
    audit.record("search", resource_type=resource_type, purpose="treatment",
                 detail=f"history params={','.join(sorted(set(args)))} total={total} shown={len(shown)}")
    for version, patient_id in shown:
        patient_id = patient_id or (_marker(version) or {}).get("patient")
        if patient_id:
            audit.record("read", resource_type=resource_type, resource_id=version.id,
                         purpose=_shown_basis(identity, version).value,
                         patient=audit.patient_ref(tenant_code, patient_id),
                         detail=f"history version={version.version}")
    last = shown[-1][0] if len(rows) > count else None
    token = f"{last.last_updated.isoformat()}~{last.id}~{last.version}" if last is not None else None
    return _bundle(base, f"{resource_type}/_history", args, total, entries, token)
