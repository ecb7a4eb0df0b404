"""Patient/$everything: one person's records from every shard the registry names, filtered per record."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app
from sqlalchemy import select

from hie.exchange import store
from hie.exchange.models import FhirResource
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.crypto import keyring
from hie.platform.db import shard_session


def _summary(shards: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Every record of the person, with what the access check needs, in a cacheable form."""
    rows = []
    for tenant_code, patient_ids in shards:
        session = shard_session(tenant_code)
        found = session.scalars(select(FhirResource).where(FhirResource.patient_id.in_(patient_ids))
                                .order_by(FhirResource.resource_type, FhirResource.date, FhirResource.id)).all()
        seen = {(row.resource_type, row.id) for row in found}
        for patient_id in patient_ids:
            if ("Patient", patient_id) not in seen:
                generated = store.stored_or_registered(tenant_code, "Patient", patient_id)
                if generated is not None:
                    found = [generated, *found]
        for row in found:
            rows.append({"tenant": tenant_code, "institution_id": row.institution_id, "patient_id": row.patient_id,
                         "resource": store.to_resource(row, tenant_code)})
    return rows


def everything(identity: Identity, patient_id: str, base_url: str) -> dict[str, Any]:
    """A searchset Bundle of what the caller may see; the summary behind it is cached, sealed, per person."""
    shards = store.shards_for_patient(identity, patient_id)
    tenant_code = store.tenant_of(store.platform_session(), "Patient", patient_id)
    person_id = store.person_of(tenant_code, patient_id) if tenant_code else None
    cache = current_app.extensions["hie.cache"]
    key = store.everything_cache_key(person_id) if person_id else None
    ring = keyring()
    sealed = cache.get(key) if key else None
    rows = json.loads(ring.decrypt(sealed, key)) if sealed else None
    if rows is None:
        rows = _summary(shards)
        if key:
            cache.set(key, ring.encrypt(json.dumps(rows, ensure_ascii=False), key))
    entries, decisions = [], {}
    for row in rows:
        decision_key = (row["tenant"], row["institution_id"], row["patient_id"])
        if decision_key not in decisions:
            probe = FhirResource(institution_id=row["institution_id"], patient_id=row["patient_id"])
            decisions[decision_key] = store.basis_for(identity, row["tenant"], probe)
        if decisions[decision_key] is None:
            continue
        resource = row["resource"]
        entries.append({"fullUrl": f"{base_url}fhir/{resource['resourceType']}/{resource['id']}",
                        "resource": resource, "search": {"mode": "match"}})
    audit.record("read", resource_type="Patient", resource_id=patient_id, purpose="treatment",
                 patient=audit.patient_ref(tenant_code or "?", patient_id),
                 detail=f"$everything: {len(entries)} of {len(rows)} resources, {len(shards)} shard(s)")
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
