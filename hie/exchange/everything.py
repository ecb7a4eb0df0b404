"""Patient/$everything: one person's records from every shard the registry names, filtered per record."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from pydantic_core import from_json, to_json
from sqlalchemy import select

from hie.exchange import store
from hie.exchange.models import FhirResource
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.crypto import DecryptionError, keyring
from hie.platform.db import shard_session

log = logging.getLogger(__name__)

_COLUMNS = (FhirResource.resource_type, FhirResource.id, FhirResource.version, FhirResource.institution_id,
            FhirResource.patient_id, FhirResource.sealed, FhirResource.content)


def _summary(shards: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Every record of the person as stored JSON (UTF-8), with what the access check needs, in a cacheable form."""
    rows = []
    for tenant_code, patient_ids in shards:
        session = shard_session(tenant_code)
        found: list[Any] = list(session.execute(select(*_COLUMNS).where(FhirResource.patient_id.in_(patient_ids))
                                                .order_by(FhirResource.resource_type, FhirResource.date,
                                                          FhirResource.id)))
        seen = {(row.resource_type, row.id) for row in found}
        for patient_id in patient_ids:
            if ("Patient", patient_id) not in seen:
                generated = store.stored_or_registered(tenant_code, "Patient", patient_id)
                if generated is not None:
                    found = [generated, *found]
        for row in found:
            rows.append({"tenant": tenant_code, "institution_id": row.institution_id, "patient_id": row.patient_id,
                         "type": row.resource_type, "id": row.id,
                         "json": store.resource_json(row, tenant_code).encode()})
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


def _cached_rows(scope: store.PatientScope) -> list[dict[str, Any]]:
    """The person's summary from the cache when its stamp is current, else loaded from the shards and cached."""
    if scope.person_id is None:
        return _summary(scope.shards)
    cache, key, ring = current_app.extensions["hie.cache"], store.everything_cache_key(scope.person_id), keyring()
    sealed = cache.get_bytes(key)
    # Packed and sealed as bytes: a hit is one AES-GCM open and a parse of the header, never of the resources.
    if sealed:
        try:
            stamp, rows = _unpack(ring.decrypt_bytes(sealed, key))
        except (DecryptionError, ValueError):
            # The cache is never a source of truth: a blob that does not open is a miss, and is replaced.
            log.warning("cached $everything summary %s did not open; rebuilding it", key)
        else:
            if stamp == scope.stamp:
                return rows
    rows = _summary(scope.shards)
    cache.set_bytes(key, ring.encrypt_bytes(_pack(scope.stamp, rows), key))
    return rows


def _decide(identity: Identity, scope: store.PatientScope, rows: list[dict[str, Any]],
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


def everything(identity: Identity, patient_id: str, base_url: str, reason: str | None = None) -> bytes:
    """A searchset Bundle (JSON) of what the caller may see (break-glass with a reason); cached per person."""
    scope = store.locate_patient(identity, patient_id, reason)
    rows = _cached_rows(scope)
    decisions = _decide(identity, scope, rows, reason)
    entries = []
    for row in rows:
        if decisions[_kind(identity, row)] is None:
            continue
        # The stored JSON goes out as it is: no parse and re-serialisation of each resource.
        entries.append(b'{"fullUrl":' + to_json(f"{base_url}fhir/{row['type']}/{row['id']}") + b',"resource":'
                       + row["json"] + b',"search":{"mode":"match"}}')
    glass = access.Basis.break_glass in decisions.values() or scope.basis is access.Basis.break_glass
    purpose = access.Basis.break_glass.value if glass else \
        access.Basis.self.value if scope.basis is access.Basis.self else "treatment"  # a resident reads their own
    audit.record("read", resource_type="Patient", resource_id=patient_id, purpose=purpose, break_glass=glass,
                 patient=audit.patient_ref(scope.tenant_code, patient_id),
                 detail=(f"break-glass: {reason}; " if glass else "")
                 + f"$everything: {len(entries)} of {len(rows)} resources, {len(scope.shards)} shard(s)")
    return (b'{"resourceType":"Bundle","type":"searchset","total":%d,"entry":[' % len(entries)
            + b",".join(entries) + b"]}")
