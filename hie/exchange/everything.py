"""Patient/$everything: one person's records from every shard the registry names, filtered per record, and paged
with a keyset cursor so that records written between pages are neither repeated nor skipped."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from flask import current_app
from pydantic_core import from_json, to_json
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from hie.exchange import patient_scope, search_cursor, store
from hie.exchange.models import FhirResource
from hie.exchange.outcome import FhirError
from hie.exchange.resources import READ_ONLY, WRITABLE
from hie.exchange.search_cursor import CURSOR_PARAM, Cursor
from hie.exchange.search_index import moment_range
from hie.exchange.search_params import MAX_COUNT
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.crypto import DecryptionError, keyring
from hie.platform.db import shard_session
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE, ascii_int

log = logging.getLogger(__name__)

# The R4 operation's GET parameters this server takes (OpenAPI and the CapabilityStatement declare them from here).
PARAMETERS = {
    "start": ("date", "Records whose clinical date is at or after this date (the Patient is always included)"),
    "end": ("date", "Records whose clinical date is before the end of this date (the Patient is always included)"),
    "_since": ("instant", "Records whose meta.lastUpdated is at or after this instant"),
    "_type": ("string", "A comma list of resource types: only records of these types"),
    "_count": ("integer", f"Entries per page (from 1; capped at {MAX_COUNT}); the Bundle links next and previous"),
}
SUMMARY_FORMAT = "v3"  # the cached stamp's prefix: a summary packed by another release (no dates) is a miss
_COLUMNS = (FhirResource.resource_type, FhirResource.id, FhirResource.version, FhirResource.institution_id,
            FhirResource.patient_id, FhirResource.date, FhirResource.last_updated, FhirResource.sealed,
            FhirResource.content)
_NEXT, _PREVIOUS = "next", "previous"

Key = tuple[int, str, str, str]  # rank (the asked Patient, other Patients, the rest), type, shard, id


@dataclass(frozen=True)
class Query:
    """What a client asked of $everything: filters, page size, the page's cursor, and the query as understood."""

    count: int | None = None
    since: datetime | None = None
    types: frozenset[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    cursor: tuple[str, Key] | None = None
    echo: tuple[tuple[str, str], ...] = ()
    digest: str = ""


def _invalid(name: str, message: str, code: str = "invalid") -> FhirError:
    return FhirError(400, code, f"Parameter {name}: {message}", [name])


def _single(args: MultiDict[str, str], name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise _invalid(name, "may be given once.")
    return values[0] if values else None


def _moment(name: str, raw: str) -> tuple[datetime, datetime]:
    """The half-open range a date, dateTime or instant names at its precision, within the years searched."""
    if ascii_int(raw[:4], EARLIEST_QUERY_DATE.year, LATEST_QUERY_DATE.year - 1) is not None:
        try:
            return moment_range(raw)
        except ValueError:
            pass
    raise _invalid(name, f"{raw[:40]!r} is not a FHIR date or dateTime (2026-11-30, 2026-11-30T08:00:00Z) in the "
                   f"years {EARLIEST_QUERY_DATE.year} to {LATEST_QUERY_DATE.year - 1}.")


def _page_size(raw: str) -> int:
    """_count: a whole number from 1 in ASCII digits; any larger than the maximum, however large, is capped."""
    if not (raw.isascii() and raw.isdigit()) or not raw.strip("0"):
        raise _invalid("_count", f"the page size must be a whole number from 1 (at most {MAX_COUNT} are sent).")
    significant = raw.lstrip("0")
    return MAX_COUNT if len(significant) > len(str(MAX_COUNT)) else min(int(significant), MAX_COUNT)


def _types(raw: list[str]) -> frozenset[str]:
    """_type: a comma list of resource types (repeating the parameter adds to it); an unknown type is refused."""
    names = [name.strip() for value in raw for name in value.split(",")]
    for name in names:
        if name not in WRITABLE and name not in READ_ONLY:
            shown = name[:40] or "(empty)"
            raise _invalid("_type", f"{shown!r} is not a resource type this server holds.", "not-supported")
    return frozenset(names)


def parse(patient_id: str, args: Mapping[str, str] | MultiDict[str, str]) -> Query:
    """The parameters of a $everything request, or a 400 naming the first bad one (a _count above the maximum is
    capped, and the self link says so)."""
    args = args if isinstance(args, MultiDict) else MultiDict(args)
    for name in args:
        if name not in PARAMETERS and name != CURSOR_PARAM:
            raise _invalid(name, f"unknown here; $everything takes {', '.join(PARAMETERS)}.", "not-supported")
    raw_count = _single(args, "_count")
    raw = {name: _single(args, name) for name in ("start", "end", "_since")}
    start = _moment("start", raw["start"])[0] if raw["start"] is not None else None
    end = _moment("end", raw["end"])[1] if raw["end"] is not None else None
    if start is not None and end is not None and end <= start:
        raise _invalid("end", "the period ends before it starts.")
    since = _moment("_since", raw["_since"])[0] if raw["_since"] is not None else None
    types = _types(args.getlist("_type")) if "_type" in args else None
    capped = None if raw_count is None else _page_size(raw_count)
    echo = tuple((name, value) for name, value in (
        *((name, raw[name]) for name in ("start", "end", "_since")),
        ("_type", ",".join(sorted(types)) if types is not None else None),
        ("_count", str(capped) if capped is not None else None)) if value is not None)
    digest = search_cursor.query_digest(f"Patient/{patient_id}/$everything", echo)
    token = _single(args, CURSOR_PARAM)
    if token is not None and capped is None:
        raise _invalid(CURSOR_PARAM, "a page cursor needs the _count of the link that carried it.")
    cursor = _cursor_key(search_cursor.decode(digest, token)) if token is not None else None
    return Query(capped, since, types, start, end, cursor, echo, digest)


def _rank(resource_type: str, tenant: str, resource_id: str, asked: tuple[str, str]) -> int:
    """The asked Patient first, the person's other Patient records next, then everything else."""
    if resource_type != "Patient":
        return 2
    return 0 if (tenant, resource_id) == asked else 1


def _cursor_key(cursor: Cursor) -> tuple[str, Key]:
    """Direction and sort key of a cursor this server issued for this very query."""
    direction, _, rest = str(cursor.value).partition("|")
    rank, _, resource_type = rest.partition("|")
    if direction not in (_NEXT, _PREVIOUS) or rank not in ("0", "1", "2") or not resource_type:
        raise _invalid(CURSOR_PARAM, "not a cursor this server issued; follow the Bundle's links.")
    return direction, (int(rank), resource_type, cursor.tenant, cursor.resource_id)


def _encode(query: Query, direction: str, key: Key) -> str:
    """The cursor of the page before or after the row of this sort key."""
    return search_cursor.encode(query.digest, Cursor(f"{direction}|{key[0]}|{key[1]}", key[2], key[3]))


def _summary(shards: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Every record of the person as stored JSON (UTF-8), with what the access check and the filters need, in a
    cacheable form and in paging order (Patients first, then by type, shard and id: keys no update changes)."""
    rows = []
    for tenant_code, patient_ids in shards:
        session = shard_session(tenant_code)
        found: list[Any] = list(session.execute(select(*_COLUMNS).where(FhirResource.patient_id.in_(patient_ids))))
        seen = {(row.resource_type, row.id) for row in found}
        for patient_id in patient_ids:
            if ("Patient", patient_id) not in seen:
                generated = store.stored_or_registered(tenant_code, "Patient", patient_id)
                if generated is not None:
                    found.append(generated)
        for row in found:
            rows.append({"tenant": tenant_code, "institution_id": row.institution_id, "patient_id": row.patient_id,
                         "type": row.resource_type, "id": row.id,
                         "date": row.date.isoformat() if row.date is not None else None,
                         "updated": row.last_updated.isoformat(),
                         "json": store.resource_json(row, tenant_code).encode()})
    rows.sort(key=lambda row: (row["type"] != "Patient", row["type"], row["tenant"], row["id"]))
    return rows


def _pack(stamp: Any, rows: list[dict[str, Any]]) -> bytes:
    """A small JSON header (stamp, row metadata, text lengths), a NUL, then the resources' JSON back to back."""
    header = [{**{name: value for name, value in row.items() if name != "json"}, "size": len(row["json"])}
              for row in rows]
    return to_json({"stamp": stamp, "rows": header}) + b"\0" + b"".join(row["json"] for row in rows)


def _unpack(blob: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """The stamp and rows of a packed summary; JSON never holds a raw NUL, so the first one ends the header."""
    end = blob.index(b"\0")
    header = from_json(blob[:end])
    offset, view = end + 1, memoryview(blob)
    for row in header["rows"]:
        size = row.pop("size")
        row["json"] = view[offset:offset + size]
        offset += size
    return header["stamp"], header["rows"]


def _cached_rows(scope: patient_scope.PatientScope) -> list[dict[str, Any]]:
    """The person's summary from the cache when its stamp is current, else loaded from the shards and cached."""
    if scope.person_id is None:
        return _summary(scope.shards)
    cache, key, ring = current_app.extensions["hie.cache"], store.everything_cache_key(scope.person_id), keyring()
    stamp = f"{SUMMARY_FORMAT}|{scope.stamp}"
    sealed = cache.get_bytes(key)
    # Packed and sealed as bytes: a hit is one AES-GCM open and a parse of the header, never of the resources.
    if sealed:
        try:
            cached_stamp, rows = _unpack(ring.decrypt_bytes(sealed, key))
        except (DecryptionError, ValueError):
            # The cache is never a source of truth: a blob that does not open is a miss, and is replaced.
            log.warning("cached $everything summary %s did not open; rebuilding it", key)
        else:
            if cached_stamp == stamp:
                return rows
    rows = _summary(scope.shards)
    cache.set_bytes(key, ring.encrypt_bytes(_pack(stamp, rows), key))
    return rows


def _decide(identity: Identity, scope: patient_scope.PatientScope, rows: list[dict[str, Any]],
            reason: str | None) -> dict[tuple[bool, bool], access.Basis | None]:
    """The access decision per kind of row: all rows are about one person, so the policy only asks whether a row
    is the caller's institution's and whether it is the caller's own record (one care check at most)."""
    decisions: dict[tuple[bool, bool], access.Basis | None] = {}
    for row in rows:
        kind = _kind(identity, row)
        if kind not in decisions:
            probe = FhirResource(institution_id=row["institution_id"], patient_id=row["patient_id"])
            decisions[kind] = store.basis_for(identity, row["tenant"], probe, reason=reason, person_id=scope.person_id)
    return decisions


def _kind(identity: Identity, row: dict[str, Any]) -> tuple[bool, bool]:
    """What of a row the access policy looks at besides its person: own institution, own record."""
    own_shard = row["tenant"] == identity.tenant_code
    return (own_shard and row["institution_id"] == identity.institution_id,
            own_shard and row["patient_id"] == identity.patient_id)


def _asked_first(rows: list[dict[str, Any]], asked: tuple[str, str]) -> list[dict[str, Any]]:
    """The summary in paging order for this request: the asked Patient moved before the person's other Patients."""
    for index, row in enumerate(rows):
        if row["type"] != "Patient":
            break
        if (row["tenant"], row["id"]) == asked:
            return [row, *rows[:index], *rows[index + 1:]]
    return rows


def _wanted(query: Query, row: dict[str, Any]) -> bool:
    """Whether a row passes _type, _since (meta.lastUpdated) and start/end (its clinical date; a Patient always
    passes these, and a record without a clinical date is outside any period)."""
    if query.types is not None and row["type"] not in query.types:
        return False
    if query.since is not None and datetime.fromisoformat(row["updated"]) < query.since:
        return False
    if row["type"] == "Patient" or (query.start is None and query.end is None):
        return True
    if row["date"] is None:
        return False
    when = datetime.fromisoformat(row["date"])
    return (query.start is None or when >= query.start) and (query.end is None or when < query.end)


def _key(row: dict[str, Any], asked: tuple[str, str]) -> Key:
    return _rank(row["type"], row["tenant"], row["id"], asked), row["type"], row["tenant"], row["id"]


def _page(query: Query, shown: list[dict[str, Any]], asked: tuple[str, str]) -> tuple[int, int]:
    """The slice [first, last) of the visible rows this request's page holds."""
    if query.count is None:
        return 0, len(shown)
    if query.cursor is None:
        return 0, min(query.count, len(shown))
    direction, key = query.cursor
    keys = [_key(row, asked) for row in shown]
    if direction == _NEXT:
        first = next((index for index, value in enumerate(keys) if value > key), len(keys))
        return first, min(first + query.count, len(keys))
    last = next((index for index, value in enumerate(keys) if value >= key), len(keys))
    return max(last - query.count, 0), last


def _links(base_url: str, patient_id: str, query: Query, shown: list[dict[str, Any]], first: int, last: int,
           asked: tuple[str, str]) -> list[dict[str, str]]:
    """self (as understood: _count capped), and for a paged request first, previous and next with their cursors."""
    path = f"{base_url}fhir/Patient/{quote(patient_id, safe='')}/$everything"

    def url(cursor: str | None) -> str:
        pairs = [*query.echo, *([(CURSOR_PARAM, cursor)] if cursor else [])]
        return f"{path}?{urlencode(pairs)}" if pairs else path

    current = _encode(query, query.cursor[0], query.cursor[1]) if query.cursor else None
    links = [{"relation": "self", "url": url(current)}]
    if query.count is None:
        return links
    links.append({"relation": "first", "url": url(None)})
    if first > 0 and first < last:
        links.append({"relation": "previous", "url": url(_encode(query, _PREVIOUS, _key(shown[first], asked)))})
    if last < len(shown) and first < last:
        links.append({"relation": "next", "url": url(_encode(query, _NEXT, _key(shown[last - 1], asked)))})
    return links


def everything(identity: Identity, patient_id: str, base_url: str, reason: str | None = None,
               args: Mapping[str, str] | MultiDict[str, str] | None = None) -> bytes:
    """A searchset Bundle (JSON) of what the caller may see (break-glass with a reason), filtered and paged as
    asked; the whole record when nothing is asked. The summary is cached per person."""
    scope = patient_scope.locate_patient(identity, patient_id, reason)  # before the parameters: unseen is a 404
    query = parse(patient_id, args or {})
    asked = (scope.tenant_code, patient_id)
    rows = _asked_first(_cached_rows(scope), asked)
    decisions = _decide(identity, scope, rows, reason)
    shown = [row for row in rows if decisions[_kind(identity, row)] is not None and _wanted(query, row)]
    first, last = _page(query, shown, asked)
    # The stored JSON goes out as it is: no parse and re-serialisation of each resource.
    entries = [b'{"fullUrl":' + to_json(f"{base_url}fhir/{row['type']}/{row['id']}") + b',"resource":'
               + row["json"] + b',"search":{"mode":"match"}}' for row in shown[first:last]]
    glass = access.Basis.break_glass in decisions.values() or scope.basis is access.Basis.break_glass
    purpose = access.Basis.break_glass.value if glass else \
        access.Basis.self.value if scope.basis is access.Basis.self else "treatment"  # a resident reads their own
    asked_for = f"; {len(shown)} matching {urlencode(query.echo)}, entries {first + 1}-{last}" if query.echo else ""
    audit.record("read", resource_type="Patient", resource_id=patient_id, purpose=purpose, break_glass=glass,
                 patient=audit.patient_ref(scope.tenant_code, patient_id),
                 detail=(f"break-glass: {reason}; " if glass else "")
                 + f"$everything: {len(entries)} of {len(rows)} resources, {len(scope.shards)} shard(s){asked_for}")
    links = to_json(_links(base_url, patient_id, query, shown, first, last, asked))
    return (b'{"resourceType":"Bundle","type":"searchset","total":%d,"link":' % len(shown) + links
            + b',"entry":[' + b",".join(entries) + b"]}")
