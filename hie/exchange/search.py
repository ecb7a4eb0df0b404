"""FHIR search: per shard one indexed COUNT and one page query, over the rows the caller may see only."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, func, select
from werkzeug.datastructures import MultiDict

from hie.exchange import store
from hie.exchange.conditions import Found, date_condition, token_condition
from hie.exchange.models import FhirResource
from hie.exchange.outcome import FhirError
from hie.exchange.patient_search import register_matches
from hie.exchange.resources import WRITABLE
from hie.exchange.search_params import OFFSET_PARAM, SearchParams, parse
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import shard_session

Scope = tuple[str, list[str] | None]  # a shard, and the patient ids to restrict to (None: the whole shard)
_NULL_DATE = datetime.min.replace(tzinfo=UTC)
SMALL_MATCHES = 1000  # a patient's matches up to this many are counted and sorted here, from one query per shard


def conditions(resource_type: str, params: SearchParams, patient_ids: list[str] | None,
               visible: ColumnElement[bool]) -> list[ColumnElement[bool]]:
    """The WHERE clause of one shard's query; visible is the caller's scope there."""
    where = [FhirResource.resource_type == resource_type, visible]
    if patient_ids is not None:
        where.append(FhirResource.patient_id.in_(patient_ids))
    where += [token_condition(resource_type, token) for token in params.tokens]
    where += [date_condition(date) for date in params.dates]
    return where


def _scopes(identity: Identity, resource_type: str, params: SearchParams) -> list[Scope]:
    """The caller's own shard, or with a patient every shard holding that person's records (404 if not visible)."""
    if params.patient is None:
        return [(identity.tenant_code, None)]
    return list(store.shards_for_patient(identity, params.patient, "search", resource_type))


def _sort_key(value: datetime | None, tenant: str, resource_id: str) -> tuple[bool, datetime, str, str]:
    """SQL's order in Python (NULL first ascending), so pages merged across shards keep one order."""
    return value is not None, value or _NULL_DATE, tenant, resource_id


def _order(params: SearchParams) -> tuple[Any, list[Any]]:
    """The sort column and ORDER BY; the id breaks ties so pages never overlap."""
    column = FhirResource.date if params.sort_column == "date" else FhirResource.last_updated
    return column, [column.desc(), FhirResource.id.desc()] if params.descending else [column, FhirResource.id]


def page(resource_type: str, params: SearchParams, shards: list[tuple[str, list[ColumnElement[bool]]]]) -> list[Found]:
    """The page's keys from the covering index (OFFSET/LIMIT, or a merge of each shard's top keys), then rows by PK."""
    column, order = _order(params)
    if len(shards) == 1:
        tenant, where = shards[0]
        query = select(FhirResource.id).where(*where).order_by(*order).offset(params.offset).limit(params.count)
        return load(resource_type, [(tenant, resource_id) for resource_id in shard_session(tenant).scalars(query)])
    window = params.offset + params.count
    keyed: list[tuple[datetime | None, str, str]] = []
    for tenant, where in shards:
        query = select(column, FhirResource.id).where(*where).order_by(*order).limit(window)
        keyed += [(value, tenant, resource_id) for value, resource_id in shard_session(tenant).execute(query)]
    keyed.sort(key=lambda key: _sort_key(*key), reverse=params.descending)
    return load(resource_type, [(tenant, resource_id) for _, tenant, resource_id in keyed[params.offset:window]])


def load(resource_type: str, keys: list[tuple[str, str]]) -> list[Found]:
    """The rows of a merged page, in the page's order, one primary-key query per shard."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    for tenant, resource_id in keys:
        by_shard[tenant].append(resource_id)
    rows: dict[tuple[str, str], FhirResource] = {}
    for tenant, ids in by_shard.items():
        for row in shard_session(tenant).scalars(select(FhirResource).where(
                FhirResource.resource_type == resource_type, FhirResource.id.in_(ids))):
            rows[(tenant, row.id)] = row
    return [(tenant, rows[(tenant, resource_id)]) for tenant, resource_id in keys if (tenant, resource_id) in rows]


def _referenced(params: SearchParams, matches: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], set[str]]:
    """(shard, type) -> ids the _include elements of the matches point at (relative references only)."""
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for include in params.includes:
        for tenant, resource in matches:
            value = resource.get(include.element)
            for reference in value if isinstance(value, list) else [value]:
                target = reference.get("reference") if isinstance(reference, dict) else None
                kind, _, target_id = target.partition("/") if isinstance(target, str) else ("", "", "")
                if kind == include.target_type and target_id and "/" not in target_id:
                    wanted[(tenant, kind)].add(target_id)
    for tenant, resource in matches:
        wanted[(tenant, resource["resourceType"])].discard(resource["id"])
    return wanted


def included(identity: Identity, params: SearchParams, matches: list[tuple[str, dict[str, Any]]]) -> list[Found]:
    """Referenced resources the caller may also see; Patients of the local register are shown as FHIR."""
    out: list[Found] = []
    for (tenant, resource_type), ids in sorted(_referenced(params, matches).items()):
        if not ids:
            continue
        rows = shard_session(tenant).scalars(select(FhirResource).where(
            FhirResource.resource_type == resource_type, FhirResource.id.in_(sorted(ids)),
            store.visible_condition(identity, tenant)).order_by(FhirResource.id)).all()
        out += [(tenant, row) for row in rows]
        if resource_type == "Patient":
            for missing in sorted(ids - {row.id for row in rows}):
                row = store.stored_or_registered(tenant, "Patient", missing)
                if row is not None and store.basis_for(identity, tenant, row) is not None:
                    out.append((tenant, row))
    return out


def _basis(identity: Identity, tenant: str, row: FhirResource) -> access.Basis:
    """Why a visible row was shown, for the audit (search never breaks the glass)."""
    if row.institution_id == identity.institution_id and tenant == identity.tenant_code \
            and access.Permission.patient_read in access.permissions_of(identity):
        return access.Basis.own_institution
    return access.Basis.self if identity.patient_id is not None else access.Basis.care_relationship


def _audit(identity: Identity, resource_type: str, params: SearchParams, scopes: list[Scope], total: int,
           shown: list[Found], matched: int) -> None:
    """One search event (parameter names only: values may be identifiers) and a read per patient record shown."""
    patient_shard = next((tenant for tenant, ids in scopes if ids and params.patient in ids), None)
    names = sorted({name for name, _ in params.echo})
    audit.record("search", resource_type=resource_type, purpose="treatment",
                 patient=audit.patient_ref(patient_shard, params.patient) if patient_shard else None,
                 detail=f"params={','.join(names)} total={total} matched={matched} included={len(shown) - matched} "
                        f"shards={','.join(tenant for tenant, _ in scopes)}")
    for tenant, row in shown:
        if row.patient_id is not None:
            audit.record("read", resource_type=row.resource_type, resource_id=row.id,
                         patient=audit.patient_ref(tenant, row.patient_id), purpose=_basis(identity, tenant, row).value)


def _links(base: str, resource_type: str, params: SearchParams, total: int) -> list[dict[str, str]]:
    """self, and previous/next while there are more; the offset is the only thing that changes."""
    def url(offset: int) -> str:
        query = urlencode([*params.echo, (OFFSET_PARAM, str(offset))])
        return f"{base}/{resource_type}?{query}"

    links = [{"relation": "self", "url": url(params.offset)}]
    if params.count == 0:
        return links
    if params.offset > 0:
        links.append({"relation": "previous", "url": url(max(params.offset - params.count, 0))})
    if params.offset + params.count < total:
        links.append({"relation": "next", "url": url(params.offset + params.count)})
    return links


def _patient_keys(identity: Identity, resource_type: str, params: SearchParams,
                  scopes: list[Scope]) -> list[tuple[datetime | None, str, str]] | None:
    """Every visible match's sort key, when the search is by patient and each shard has at most SMALL_MATCHES:
    one index-only query per shard (no COUNT, no filesort), sorted here; None when a shard has more."""
    if any(patient_ids is None for _, patient_ids in scopes):
        return None
    column, _ = _order(params)
    keyed: list[tuple[datetime | None, str, str]] = []
    for tenant, patient_ids in scopes:
        where = conditions(resource_type, params, patient_ids, store.visible_condition(identity, tenant))
        found = shard_session(tenant).execute(select(column, FhirResource.id).where(*where).limit(SMALL_MATCHES + 1))
        keys = [(value, tenant, resource_id) for value, resource_id in found]
        if len(keys) > SMALL_MATCHES:
            return None
        keyed += keys
    keyed.sort(key=lambda key: _sort_key(*key), reverse=params.descending)
    return keyed


def _matches(identity: Identity, resource_type: str, params: SearchParams,
             scopes: list[Scope]) -> tuple[list[Found], int]:
    """One page of visible matches over the scopes (one COUNT per shard, a page query where it found any), total."""
    keyed = _patient_keys(identity, resource_type, params, scopes)
    if keyed is not None:
        window = keyed[params.offset:params.offset + params.count]
        return load(resource_type, [(tenant, resource_id) for _, tenant, resource_id in window]), len(keyed)
    shards, total = [], 0
    for tenant, patient_ids in scopes:
        where = conditions(resource_type, params, patient_ids, store.visible_condition(identity, tenant))
        count = shard_session(tenant).scalar(select(func.count()).select_from(FhirResource).where(*where)) or 0
        if count:
            shards.append((tenant, where))
            total += count
    return (page(resource_type, params, shards) if shards and params.count else []), total  # _count=0: total only


def search(identity: Identity, resource_type: str, query: MultiDict[str, str], base_url: str) -> dict[str, Any]:
    """A searchset Bundle of the matching resources the caller may see; total never counts the others."""
    if resource_type not in WRITABLE:
        raise FhirError(405, "not-supported", f"{resource_type} cannot be searched here.", [resource_type])
    params = parse(resource_type, query)
    scopes = _scopes(identity, resource_type, params)
    if resource_type == "Patient":
        rows, total = register_matches(identity, params)
    else:
        rows, total = _matches(identity, resource_type, params, scopes)
    matches = [(tenant, store.to_resource(row, tenant)) for tenant, row in rows]
    extra = included(identity, params, matches) if params.includes else []
    base = f"{base_url.rstrip('/')}/fhir"
    entries = [{"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                "search": {"mode": "match"}} for _, resource in matches]
    entries += [{"fullUrl": f"{base}/{row.resource_type}/{row.id}", "resource": store.to_resource(row, tenant),
                 "search": {"mode": "include"}} for tenant, row in extra]
    _audit(identity, resource_type, params, scopes, total, rows + extra, len(rows))
    return {"resourceType": "Bundle", "type": "searchset", "total": total,
            "link": _links(base, resource_type, params, total), "entry": entries}
