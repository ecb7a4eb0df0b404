"""References inside a submitted resource: every one the exchange can resolve must point where the writer may."""

from __future__ import annotations

from typing import Any

from hie.exchange import store
from hie.exchange.outcome import FhirError
from hie.exchange.resources import PATIENT_FIELD, WRITABLE, index_entry, references
from hie.platform.auth.identity import Identity


def _target(reference: str) -> tuple[str, str] | None:
    """(type, id) of a relative reference to a type held here (a version suffix dropped); None for anything else."""
    kind, slash, rest = reference.partition("/")
    target_id = rest.split("/_history/", 1)[0]
    if not slash or kind not in WRITABLE or not target_id or "/" in target_id:
        return None
    return kind, target_id


def _same_person(tenant_code: str, patient_ref: str | None, other_tenant: str, other_ref: str | None,
                 person_id: str | None, other_person: str | None) -> bool:
    """Whether a referenced record is about the submitted resource's patient (or the same master person)."""
    if other_ref is None:
        return False
    if (other_tenant, other_ref) == (tenant_code, patient_ref):
        return True
    return person_id is not None and other_person == person_id


def check_references(identity: Identity, resource: dict[str, Any], path: str, person_id: str | None,
                     bundled: dict[str, dict[str, Any]] | None = None, action: str = "create") -> None:
    """Patient references to patients the writer may see; records existing, visible, about the same patient.
    A refusal of a stored record is audited as action, naming the record and its patient."""
    root = path or resource["resourceType"]
    subject = None if resource["resourceType"] == "Patient" else \
        f"{root}.{PATIENT_FIELD.get(resource['resourceType'], 'subject')}"
    patient_ref = index_entry(resource).patient_ref
    for where, reference in references(resource, root):
        target = _target(reference["reference"])
        if target is None or where == subject:
            continue
        kind, target_id = target
        key = f"{kind}/{target_id}"
        if bundled and key in bundled:
            if kind != "Patient" and patient_ref is not None and index_entry(bundled[key]).patient_ref != patient_ref:
                raise FhirError(422, "processing", f"{key} in this Bundle is about another patient.", [where])
            continue
        found = store.locate_row(kind, target_id)
        target_person = store.person_of(found[0], found[1].patient_id) if found else None
        if found is None or store.basis_for(identity, found[0], found[1], person_id=target_person) is None:
            store.refuse_record(identity, action, kind, target_id, f"referenced at {where}")
            what = "is not a patient you may see" if kind == "Patient" else "does not exist or is not visible to you"
            raise FhirError(422, "processing", f"{key} {what}.", [where])
        if kind != "Patient" and resource["resourceType"] != "Patient" and not _same_person(
                identity.tenant_code, patient_ref, found[0], found[1].patient_id, person_id, target_person):
            store.refuse_record(identity, action, kind, target_id, f"referenced at {where}", "failure")
            raise FhirError(422, "processing", f"{key} is about another patient.", [where])
