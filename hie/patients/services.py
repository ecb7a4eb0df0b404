"""Use cases of the local patient register; every read and write is checked by the policy and audited."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import abort
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.empi import services as empi
from hie.empi.models import PersonRecord
from hie.exchange import registry
from hie.patients import name_index
from hie.patients.models import SEALED_FIELDS, Patient
from hie.patients.sealing import seal, search_index, unseal
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.cache import Cache
from hie.platform.crypto import keyring
from hie.platform.db import new_id, platform_session, shard_session, utcnow
from hie.platform.jobs.services import emit
from hie.platform.standards import normalise_phone, normalise_resident_id

RESOURCE = "Patient"


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    values = dict(data)
    if values.get("id_number"):
        values["id_number"] = normalise_resident_id(values["id_number"])
    if values.get("phone"):
        values["phone"] = normalise_phone(values["phone"])
    return values


def _cache() -> Cache:
    return current_app.extensions["hie.cache"]


def _register_with_empi(identity: Identity, patient: Patient, values: dict[str, Any]) -> str:
    """Synchronously, in the request: the institution gets its master person id back at once."""
    demographics = {field: values.get(field) for field in ("name", "sex", "id_number", "phone", "address")}
    demographics["birth_date"] = patient.birth_date.isoformat() if patient.birth_date else None
    demographics["id_type"] = "CN-RIC" if demographics["id_number"] else None
    registration = empi.register(
        platform_session(), keyring(), _cache(), institution_id=patient.institution_id,
        tenant_code=identity.tenant_code, local_id=patient.mrn, demographics=demographics,
        region_code=identity.region_code, patient_id=patient.id, user_id=identity.user_id,
    )
    return registration.person_id


def view(identity: Identity, patient: Patient, basis: access.Basis, person_id: str | None = None) -> dict[str, Any]:
    """The record with identifiers unsealed, for a caller the policy has let in (person_id if already known)."""
    ring = keyring()
    if person_id is None:
        person_id = empi.person_of_local(platform_session(), _cache(), patient.institution_id, patient.mrn)
    out: dict[str, Any] = {
        "master_person_id": person_id,
        "id": patient.id, "tenant_code": identity.tenant_code, "institution_id": patient.institution_id,
        "mrn": patient.mrn, "sex": patient.sex, "birth_date": patient.birth_date,
        "version": patient.version, "access_basis": basis.value,
    }
    for field in SEALED_FIELDS:
        out[field] = unseal(ring, identity.tenant_code, patient, field)
    return out


def already_registered(identity: Identity, data: dict[str, Any]) -> Patient | None:
    """The institution's record under this MRN if it holds the same demographics; a 409 (use PATCH) if not."""
    values = _normalised(data)
    patient = shard_session(identity.tenant_code).scalar(select(Patient).where(
        Patient.institution_id == identity.institution_id, Patient.mrn == values["mrn"]))
    if patient is None:
        return None
    stored = {field: unseal(keyring(), identity.tenant_code, patient, field) for field in SEALED_FIELDS}
    stored.update(sex=patient.sex, birth_date=patient.birth_date)
    differing = sorted(field for field, value in stored.items() if values.get(field) != value)
    if differing:
        audit.record("create", "failure", resource_type=RESOURCE, resource_id=patient.id,
                     detail="duplicate medical record number, different demographics")
        abort(409, message=f"Medical record number {values['mrn']!r} is already registered here with different "
                           f"demographics ({', '.join(differing)}); change that record with PATCH "
                           f"/api/v1/patients/{patient.id} instead.")
    audit.record("create", resource_type=RESOURCE, resource_id=patient.id,
                 patient=audit.patient_ref(identity.tenant_code, patient.id), purpose="treatment",
                 detail="already registered with the same demographics")
    return patient


def register(identity: Identity, data: dict[str, Any], patient_id: str | None = None) -> Patient:
    """Add a record for the caller's own institution in the caller's own shard."""
    values = _normalised(data)
    session = shard_session(identity.tenant_code)
    patient = Patient(
        id=patient_id or new_id(), institution_id=identity.institution_id, mrn=values["mrn"], sex=values["sex"],
        birth_date=values.get("birth_date"), created_by=identity.user_id, created_at=utcnow(),
    )
    for field in SEALED_FIELDS:
        seal(keyring(), identity.tenant_code, patient, field, values.get(field))
    session.add(patient)
    name_index.write_register(session, patient.id, values.get("name"))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        audit.record("create", "failure", resource_type=RESOURCE, detail="duplicate medical record number")
        abort(409, message=f"Medical record number {values['mrn']!r} is already registered here.")
    registry.touch(identity.tenant_code, _register_with_empi(identity, patient, values))  # a new local id there
    emit(session, identity.tenant_code, "patient.registered",
         {"tenant_code": identity.tenant_code, "patient_id": patient.id,
          "institution_id": identity.institution_id})
    audit.record("create", resource_type=RESOURCE, resource_id=patient.id,
                 patient=audit.patient_ref(identity.tenant_code, patient.id), purpose="treatment")
    return patient


def _visible(
    identity: Identity, patient_id: str, write: bool, reason: str | None,
) -> tuple[Patient, access.Basis, str | None]:
    """The record, the basis to see it and its master person, or 404 for missing and forbidden alike."""
    action = "update" if write else "read"
    ref = audit.patient_ref(identity.tenant_code, patient_id)
    patient = shard_session(identity.tenant_code).get(Patient, patient_id) if len(patient_id) <= 36 else None
    basis = person_id = None
    if patient is not None:
        person_id = empi.person_of_local(platform_session(), _cache(), patient.institution_id, patient.mrn)
        record = access.PatientRecordRef(identity.tenant_code, patient.id, patient.institution_id, person_id)
        basis = access.patient_basis(platform_session(), identity, record, write, reason)
    if patient is None or basis is None:
        audit.record(action, "denied" if patient is not None else "not_found", resource_type=RESOURCE,
                     resource_id=patient_id[:80], patient=ref[:80], break_glass=bool(reason))
        abort(404, message="No such patient record.")
    audit.record(action, resource_type=RESOURCE, resource_id=patient.id, patient=ref, purpose=basis.value,
                 break_glass=basis is access.Basis.break_glass,
                 detail=reason if basis is access.Basis.break_glass else None)
    return patient, basis, person_id


def read(identity: Identity, patient_id: str, break_glass_reason: str | None) -> dict[str, Any]:
    """One record, if the caller may see it."""
    patient, basis, person_id = _visible(identity, patient_id, write=False, reason=break_glass_reason)
    return view(identity, patient, basis, person_id)


def update(identity: Identity, patient_id: str, changes: dict[str, Any], if_match: int | None) -> dict[str, Any]:
    """Change a record of the caller's own institution; a stale If-Match version is a 412."""
    patient, basis, person_before = _visible(identity, patient_id, write=True, reason=None)
    if if_match is not None and if_match != patient.version:
        abort(412, message=f"The record is at version {patient.version}, not {if_match}; reload it first.")
    values = _normalised(changes)
    for field in ("sex", "birth_date"):
        if field in values:
            setattr(patient, field, values[field])
    for field in SEALED_FIELDS:
        if field in values:
            seal(keyring(), identity.tenant_code, patient, field, values[field])
    shard_session(identity.tenant_code).flush()
    current = {field: unseal(keyring(), identity.tenant_code, patient, field) for field in SEALED_FIELDS}
    if "name" in values:
        name_index.write_register(shard_session(identity.tenant_code), patient.id, current["name"])
    current["sex"] = patient.sex
    person_after = _register_with_empi(identity, patient, current)
    registry.touch(identity.tenant_code, person_before, person_after)  # cached $everything summaries are stale now
    return view(identity, patient, basis)


def _care_patient_ids(platform: Session, identity: Identity) -> list[str]:
    """Patient records in the caller's shard whose person the caller's institution is caring for."""
    return [pid for pid in platform.scalars(select(PersonRecord.patient_id).where(
        PersonRecord.tenant_code == identity.tenant_code,
        PersonRecord.person_id.in_(care.active_persons(identity.institution_id)),
    )) if pid]


def search(identity: Identity, filters: dict[str, str], offset: int, limit: int) -> tuple[list[dict], int]:
    """Records the caller may see that match every filter; total counts only those."""
    ring = keyring()
    platform = platform_session()
    care_ids = _care_patient_ids(platform, identity)
    query = select(Patient).where(
        or_(Patient.institution_id == identity.institution_id, Patient.id.in_(care_ids))
    )
    if "mrn" in filters:
        query = query.where(Patient.mrn == filters["mrn"])
    for field in ("name", "id_number", "phone"):
        if field in filters:
            value = filters[field]
            try:
                value = {"id_number": normalise_resident_id, "phone": normalise_phone}.get(field, str)(value)
            except ValueError:
                return [], 0
            query = query.where(getattr(Patient, f"{field}_bidx") == search_index(ring, field, value))
    session = shard_session(identity.tenant_code)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Patient.created_at, Patient.id).offset(offset).limit(limit)).all()
    items = []
    for patient in rows:
        basis = access.Basis.own_institution if patient.institution_id == identity.institution_id \
            else access.Basis.care_relationship
        items.append(view(identity, patient, basis))
    audit.record("search", resource_type=RESOURCE, purpose="treatment",
                 detail=f"fields={','.join(sorted(filters))} results={len(items)}")
    for item in items:
        audit.record("read", resource_type=RESOURCE, resource_id=item["id"],
                     patient=audit.patient_ref(identity.tenant_code, item["id"]), purpose=item["access_basis"])
    return items, total
