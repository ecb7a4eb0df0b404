"""FHIR search: per shard one keyset page query (and a COUNT unless _total=none), over the rows the caller may
see only; the next link carries a cursor, so records written meanwhile never repeat or skip an entry."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

from flask import has_request_context, request
from sqlalchemy import ColumnElement, func, select
from werkzeug.datastructures import MultiDict

from hie.exchange import patient_scope, search_cursor, store
from hie.exchange.conditions import Found, date_condition, ids_condition, indexed_date_condition, token_condition
from hie.exchange.models import FhirResource, FhirToken
from hie.exchange.outcome import FhirError
from hie.exchange.patient_search import register_matches
from hie.exchange.resources import WRITABLE
from hie.exchange.search_cursor import CURSOR_PARAM, Cursor
from hie.exchange.search_order import Key, after, comparable, is_after, ordering, sort_expression
from hie.exchange.search_params import DEFAULT_HANDLING, SearchParams, parse, patient_params
from hie.exchange.search_subset import subset
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import shard_session

Scope = tuple[str, list[str] | None]  # a shard, and the patient ids to restrict to (None: the whole shard)
SMALL_MATCHES = 1000  # a patient's matches up to this many are counted and sorted here, from one query per shard
MAX_REVINCLUDED = 1000  # resources one _revinclude adds to a page at most


def conditions(resource_type: str, params: SearchParams, patient_ids: list[str] | None,
               visible: ColumnElement[bool]) -> list[ColumnElement[bool]]:
    """The WHERE clause of one shard's query; visible is the caller's scope there."""
    where = [FhirResource.resource_type == resource_type, visible]
    if patient_ids is not None:
        where.append(FhirResource.patient_id.in_(patient_ids))
    ids = ids_condition(params.ids)
    if ids is not None:
        where.append(ids)
    where += [token_condition(resource_type, token) for token in params.tokens]
    where += [date_condition(date) if date.column == "last_updated" else indexed_date_condition(resource_type, date)
              for date in params.dates]
    return where


def dialect_of(tenant: str) -> str:
    """The SQL dialect of a shard (sort expressions differ slightly between SQLite and MariaDB)."""
    return shard_session(tenant).get_bind().dialect.name


def _scopes(identity: Identity, resource_type: str, params: SearchParams) -> list[Scope]:
    """The caller's own shard, or with a patient every shard holding that person's records (404 if not visible)."""
    if params.patient is None:
        return [(identity.tenant_code, None)]
    return list(patient_scope.shards_for_patient(identity, params.patient, "search", resource_type))


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


def _page(keys: list[Key], params: SearchParams) -> tuple[list[Key], Cursor | None]:
    """The page of merged keys after the cursor, and the cursor of the next page (None on the last)."""
    keys.sort(reverse=params.sort.descending)
    following = [key for key in keys if is_after(key, params.cursor, params.sort.descending)]
    shown = following[:params.count]
    more = len(following) > params.count and params.count > 0
    return shown, Cursor(shown[-1][0], shown[-1][1], shown[-1][2]) if more and shown else None


def _patient_keys(identity: Identity, resource_type: str, params: SearchParams,
                  scopes: list[Scope]) -> list[Key] | None:
    """Every visible match's sort key, when the search is by patient and each shard has at most SMALL_MATCHES:
    one query per shard (no COUNT), sorted here; None when a shard has more."""
    if any(patient_ids is None for _, patient_ids in scopes):
        return None
    if not scopes:
        return []
    expression = sort_expression(resource_type, params.sort, dialect_of(scopes[0][0]))
    keyed: list[Key] = []
    for tenant, patient_ids in scopes:
        where = conditions(resource_type, params, patient_ids, store.visible_condition(identity, tenant))
        found = shard_session(tenant).execute(select(expression, FhirResource.id).where(*where)
                                              .limit(SMALL_MATCHES + 1))
        keys = [(comparable(value), tenant, resource_id) for value, resource_id in found]
        if len(keys) > SMALL_MATCHES:
            return None
        keyed += keys
    return keyed


def _matches(identity: Identity, resource_type: str, params: SearchParams,
             scopes: list[Scope]) -> tuple[list[Found], int | None, Cursor | None]:
    """One page of visible matches over the scopes, the total (None when _total=none), the next page's cursor."""
    counted = params.total != "none" or params.summary == "count"
    keyed = _patient_keys(identity, resource_type, params, scopes)
    if keyed is not None:
        total = len(keyed) if counted else None
        if params.summary == "count":
            return [], total, None
        shown, following = _page(keyed, params)
        return load(resource_type, [(tenant, rid) for _, tenant, rid in shown]), total, following
    expression = sort_expression(resource_type, params.sort, dialect_of(scopes[0][0]) if scopes else "sqlite")
    keyed, total = [], 0
    for tenant, patient_ids in scopes:
        where = conditions(resource_type, params, patient_ids, store.visible_condition(identity, tenant))
        session = shard_session(tenant)
        if counted:
            total += session.scalar(select(func.count()).select_from(FhirResource).where(*where)) or 0
        if params.count and params.summary != "count":
            resume = after(expression, FhirResource.id, tenant, params.cursor, params.sort.descending)
            query = select(expression, FhirResource.id).where(*where, *([resume] if resume is not None else []))
            query = query.order_by(*ordering(expression, FhirResource.id, params.sort.descending))
            keyed += [(comparable(v), tenant, rid) for v, rid in session.execute(query.limit(params.count + 1))]
    shown, following = _page(keyed, params)
    return load(resource_type, [(tenant, rid) for _, tenant, rid in shown]), total if counted else None, following


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


def revincluded(identity: Identity, resource_type: str, params: SearchParams,
                matches: list[tuple[str, dict[str, Any]]]) -> list[Found]:
    """Resources of each _revinclude source whose reference names a match, in the match's own shard (references
    are shard-local), that the caller may see: the same visibility as their own search."""
    by_shard: dict[str, set[str]] = defaultdict(set)
    for tenant, resource in matches:
        by_shard[tenant].add(resource["id"])
    out: list[Found] = []
    seen = {(tenant, resource["resourceType"], resource["id"]) for tenant, resource in matches}
    for rev in params.revincludes:
        for tenant, ids in sorted(by_shard.items()):
            if rev.param in patient_params(rev.source_type):
                pointing = FhirResource.patient_id.in_(sorted(ids))
            else:
                pointing = FhirResource.id.in_(select(FhirToken.resource_id).where(
                    FhirToken.resource_type == rev.source_type, FhirToken.param == rev.param,
                    FhirToken.code.in_([f"{resource_type}/{i}" for i in sorted(ids)])))
            rows = shard_session(tenant).scalars(select(FhirResource).where(
                FhirResource.resource_type == rev.source_type, pointing, store.visible_condition(identity, tenant))
                .order_by(FhirResource.id).limit(MAX_REVINCLUDED)).all()
            for row in rows:
                if (tenant, row.resource_type, row.id) not in seen:
                    seen.add((tenant, row.resource_type, row.id))
                    out.append((tenant, row))
    return out


def _basis(identity: Identity, tenant: str, row: FhirResource) -> access.Basis:
    """Why a visible row was shown, for the audit (search never breaks the glass)."""
    if row.institution_id == identity.institution_id and tenant == identity.tenant_code \
            and access.Permission.patient_read in access.permissions_of(identity):
        return access.Basis.own_institution
    return access.Basis.self if identity.patient_id is not None else access.Basis.care_relationship


def _audit(identity: Identity, resource_type: str, params: SearchParams, scopes: list[Scope], total: int | None,
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


def _links(base: str, resource_type: str, params: SearchParams, following: Cursor | None) -> list[dict[str, str]]:
    """self (as understood: capped _count, without ignored parameters), first on a later page, next with its
    cursor."""
    def url(cursor: str | None) -> str:
        query = urlencode([*params.echo, *([(CURSOR_PARAM, cursor)] if cursor else [])])
        return f"{base}/{resource_type}?{query}"

    current = search_cursor.encode(params.digest, params.cursor) if params.cursor else None
    links = [{"relation": "self", "url": url(current)}]
    if current is not None:
        links.append({"relation": "first", "url": url(None)})
    if following is not None:
        links.append({"relation": "next", "url": url(search_cursor.encode(params.digest, following))})
    return links


def handling() -> str:
    """Prefer: handling=strict|lenient of the request, else the server's default."""
    prefer = request.headers.get("Prefer", "") if has_request_context() else ""
    for part in prefer.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"').lower() in ("strict", "lenient"):
            return value.strip().strip('"').lower()
    return DEFAULT_HANDLING


def _ignored_outcome(params: SearchParams) -> dict[str, Any]:
    """The OperationOutcome entry a lenient search adds, naming what it ignored."""
    issues = [{"severity": "warning", "code": "not-supported", "expression": [name],
               "diagnostics": f"Parameter {name!r} is unknown or not supported here and was ignored "
                              f"(Prefer: handling=lenient)."} for name in params.ignored]
    return {"fullUrl": "urn:uuid:ignored-parameters", "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"}}


def search(identity: Identity, resource_type: str, query: MultiDict[str, str], base_url: str,
           handling_mode: str | None = None) -> dict[str, Any]:
    """A searchset Bundle of the matching resources the caller may see; total never counts the others.
    handling_mode overrides the request's Prefer: handling (conditional writes search strictly)."""
    if resource_type not in WRITABLE:
        raise FhirError(405, "not-supported", f"{resource_type} cannot be searched here.", [resource_type])
    params = parse(resource_type, query, handling_mode or handling())
    scopes = _scopes(identity, resource_type, params)
    if resource_type == "Patient":
        rows, total, following = register_matches(identity, params)
    else:
        rows, total, following = _matches(identity, resource_type, params, scopes)
    matches = [(tenant, store.to_resource(row, tenant)) for tenant, row in rows]
    extra = included(identity, params, matches) if params.includes else []
    extra += revincluded(identity, resource_type, params, matches) if params.revincludes else []
    base = f"{base_url.rstrip('/')}/fhir"
    entries = [{"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                "resource": subset(resource, params.summary, params.elements),
                "search": {"mode": "match"}} for _, resource in matches]
    entries += [{"fullUrl": f"{base}/{row.resource_type}/{row.id}", "resource": store.to_resource(row, tenant),
                 "search": {"mode": "include"}} for tenant, row in extra]
    if params.ignored:
        entries.append(_ignored_outcome(params))
    _audit(identity, resource_type, params, scopes, total, rows + extra, len(rows))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(base, resource_type, params, following)
    bundle["entry"] = entries
    return bundle
