"""Storing and reading FHIR resources in tenant shards, with the access policy and the record registry."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from typing import Any

from flask import g
from sqlalchemy import ColumnElement, delete, false, or_, select
from sqlalchemy.orm import Session

from hie.empi import services as empi
from hie.empi.models import PersonRecord
from hie.exchange import registry, search_index
from hie.exchange.literal_json import dumps, loads
from hie.exchange.models import FhirResource, FhirResourceVersion, FhirToken
from hie.exchange.outcome import FhirError
from hie.exchange.reference_check import check_references
from hie.exchange.resources import (
    MRN_SYSTEM_PREFIX,
    PATIENT_FIELD,
    RESIDENT_ID_SYSTEM,
    WRITABLE,
    index_entry,
    matching_phone,
    validate,
)
from hie.patients import name_index
from hie.patients import services as patients
from hie.patients.models import SEALED_FIELDS, Patient
from hie.patients.sealing import unseal
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.crypto import keyring
from hie.platform.db import platform_session, shard_session, utcnow
from hie.platform.keys import SealedColumn, register_sealed_column
from hie.tenants.models import Institution, Tenant


def everything_cache_key(person_id: str) -> str:
    """Cache key of a master person's $everything summary (v2: the packed byte format)."""
    return f"everything:v2:{person_id}"


def new_resource_id(resource_type: str, tenant_code: str) -> str:
    """Patients take a plain UUID (the EMPI routes them); other ids carry their shard so reads can be routed."""
    if resource_type == "Patient":
        return str(uuid.uuid4())
    return f"{tenant_code.replace('_', '-')}.{uuid.uuid4().hex}"


def tenant_of(session: Session, resource_type: str, resource_id: str) -> str | None:
    """The shard holding a resource, from its id (or the EMPI for Patients)."""
    if resource_type == "Patient":
        return session.scalar(select(PersonRecord.tenant_code).where(PersonRecord.patient_id == resource_id))
    prefix, dot, _ = resource_id.partition(".")
    if not dot:
        return None
    code = prefix.replace("-", "_")
    return code if session.scalar(select(Tenant.id).where(Tenant.code == code)) is not None else None


def _aad(tenant_code: str, resource_type: str, resource_id: str, version: int) -> str:
    return f"fhir.{resource_type}|{tenant_code}|{resource_id}|{version}"


for _model in (FhirResource, FhirResourceVersion):
    register_sealed_column(SealedColumn(
        _model.__table__, "content",  # type: ignore[arg-type]
        lambda tenant, row: _aad(tenant, row["resource_type"], row["id"], row["version"]), sealed_flag="sealed"))


def _content(tenant_code: str, resource: dict[str, Any], version: int) -> tuple[str, bool]:
    text = dumps(resource)  # every number as the sender wrote it
    if resource["resourceType"] != "Patient":
        return text, False
    return keyring().encrypt(text, _aad(tenant_code, "Patient", resource["id"], version)), True


def resource_json(row: FhirResource | FhirResourceVersion, tenant_code: str) -> str:
    """The stored JSON text, unsealed when it is a Patient."""
    if row.sealed:
        return keyring().decrypt(row.content, _aad(tenant_code, row.resource_type, row.id, row.version))
    return row.content


def to_resource(row: FhirResource | FhirResourceVersion, tenant_code: str) -> dict[str, Any]:
    """The stored resource, unsealed when it is a Patient, its numbers keeping their literals."""
    return loads(resource_json(row, tenant_code))


def person_of(tenant_code: str, patient_id: str | None) -> str | None:
    """The master person of a shard-local Patient id, looked up once per request (a Bundle asks per entry)."""
    if patient_id is None:
        return None
    known = g.setdefault("hie_persons", {})
    if (tenant_code, patient_id) not in known:
        known[(tenant_code, patient_id)] = empi.person_of_patient(platform_session(), tenant_code, patient_id)
    return known[(tenant_code, patient_id)]


def _patients_changed() -> None:
    """A Patient was stored or registered: EMPI links and subject checks remembered by this request are dropped."""
    g.pop("hie_persons", None)
    g.pop("hie_subjects", None)


def basis_for(identity: Identity, tenant_code: str, row: FhirResource, write: bool = False,
              reason: str | None = None, person_id: str | None = None) -> access.Basis | None:
    """The access policy applied to one stored resource; person_id spares the EMPI lookup when the caller knows it."""
    record = access.PatientRecordRef(tenant_code, row.patient_id or "", row.institution_id,
                                     person_id or person_of(tenant_code, row.patient_id))
    if row.patient_id is None:
        same = row.institution_id == identity.institution_id and tenant_code == identity.tenant_code
        return access.Basis.own_institution if same else None
    return access.patient_basis(platform_session(), identity, record, write, reason)


def visible_condition(identity: Identity, tenant_code: str, institution: Any = FhirResource.institution_id,
                      patient: Any = FhirResource.patient_id) -> ColumnElement[bool]:
    """SQL for the rows of one shard the caller may see in a search (never break-glass); columns of either table."""
    granted = access.permissions_of(identity)
    platform = platform_session()
    conditions = []
    if access.Permission.patient_read in granted:
        if tenant_code == identity.tenant_code:
            conditions.append(institution == identity.institution_id)
        cared = [pid for pid in platform.scalars(select(PersonRecord.patient_id).where(
            PersonRecord.tenant_code == tenant_code,
            PersonRecord.person_id.in_(care.active_persons(identity.institution_id)))) if pid]
        if cared:
            conditions.append(patient.in_(cared))
    if access.Permission.own_record_read in granted:
        own = access.resident_person(platform, identity)
        if own is not None:
            mine = [pid for pid in platform.scalars(select(PersonRecord.patient_id).where(
                PersonRecord.tenant_code == tenant_code, PersonRecord.person_id == own)) if pid]
            if mine:
                conditions.append(patient.in_(mine))
    return or_(*conditions) if conditions else false()


def generated_patient(tenant_code: str, patient: Patient) -> FhirResource:
    """A Patient registered through the local register, shown as FHIR (never stored twice)."""
    ring = keyring()
    values = {field: unseal(ring, tenant_code, patient, field) for field in SEALED_FIELDS}
    institution_code = platform_session().scalar(select(Institution.code).where(
        Institution.id == patient.institution_id))
    resource: dict[str, Any] = {
        "resourceType": "Patient", "id": patient.id,
        "meta": {"versionId": str(patient.version), "lastUpdated": patient.updated_at.isoformat()},
        "identifier": [{"system": MRN_SYSTEM_PREFIX + str(institution_code), "value": patient.mrn}],
        "name": [{"text": values["name"]}],
        "gender": {"M": "male", "F": "female"}.get(patient.sex, "unknown"),
    }
    if values["id_number"]:
        resource["identifier"].append({"system": RESIDENT_ID_SYSTEM, "value": values["id_number"]})
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    if values["phone"]:
        resource["telecom"] = [{"system": "phone", "value": values["phone"]}]
    if values["address"]:
        resource["address"] = [{"text": values["address"]}]
    return FhirResource(resource_type="Patient", id=patient.id, version=patient.version,
                        institution_id=patient.institution_id, patient_id=patient.id,
                        last_updated=patient.updated_at, sealed=False, content=json.dumps(resource, ensure_ascii=False))


def stored_or_registered(tenant_code: str, resource_type: str, resource_id: str) -> FhirResource | None:
    """The stored resource, or for a Patient of the local register its FHIR view."""
    session = shard_session(tenant_code)
    row = session.get(FhirResource, (resource_type, resource_id))
    if row is None and resource_type == "Patient":
        patient = session.get(Patient, resource_id)
        return generated_patient(tenant_code, patient) if patient is not None else None
    return row


def patient_identifier_index(value: str) -> str:
    """Patient identifiers (resident ID, MRN) are indexed only as blind indexes; systems stay readable."""
    return keyring().blind_index("fhir.patient.identifier", value)


def _write_index(session: Session, tenant_code: str, resource: dict[str, Any], row: FhirResource,
                 new: bool = False) -> None:
    """Index columns and token rows; a new resource has no old tokens to delete (one statement less per create)."""
    entry = index_entry(resource)
    row.patient_id, row.date, row.status = entry.patient_ref, entry.date, entry.status
    if not new:
        session.execute(delete(FhirToken).where(FhirToken.resource_type == row.resource_type,
                                                FhirToken.resource_id == row.id))
    sealed = row.resource_type == "Patient"
    session.add_all(FhirToken(
        resource_type=row.resource_type, resource_id=row.id, param=p, system=s,
        code=patient_identifier_index(c) if sealed and p == "identifier" else c,
    ) for p, s, c in search_index.tokens(resource) if not (sealed and p.startswith("identifier:")))
    search_index.write_dates(session, resource, row, new)
    if sealed:
        phones = [t["value"] for t in resource.get("telecom", []) if t.get("system") == "phone" and t.get("value")]
        name_index.write(session, row.id, name_index.FHIR, resource.get("name", []), phones)


def _check_subject(identity: Identity, resource: dict[str, Any], path: str, action: str) -> str | None:
    """A resource may only be about a Patient in the writer's shard whom the writer may see; returns its person."""
    if resource["resourceType"] == "Patient":
        return None
    patient_ref = index_entry(resource).patient_ref
    where = [f"{path or resource['resourceType']}.{PATIENT_FIELD.get(resource['resourceType'], 'subject')}"]
    if patient_ref is None:
        raise FhirError(400, "required", f"{resource['resourceType']} must reference a Patient.", where)
    checked = g.setdefault("hie_subjects", {})  # a Bundle's entries mostly share one subject: checked once
    if patient_ref not in checked:
        row = stored_or_registered(identity.tenant_code, "Patient", patient_ref)
        person_id = person_of(identity.tenant_code, patient_ref) if row is not None else None
        if row is None or basis_for(identity, identity.tenant_code, row, person_id=person_id) is None:
            refuse_record(identity, action, "Patient", patient_ref, f"referenced at {where[0]}")
            raise FhirError(422, "processing", f"Patient/{patient_ref} is not a patient of your tenant you may see.",
                            where)
        checked[patient_ref] = person_id
    return checked[patient_ref]


def asked_patient(identity: Identity, tenant_code: str | None, patient_id: str | None) -> str | None:
    """How a refusal names the patient asked for: in its shard when located, else in the caller's (as the register
    does), so that the audit's bare-id filter finds every attempt."""
    if patient_id is None:
        return None
    return audit.patient_ref(tenant_code or identity.tenant_code, patient_id)[:80]


def _patient_asked(identity: Identity, kind: str, target_id: str, found: tuple[str, FhirResource] | None) -> str | None:
    """The patient a refused request asked about: the located record's patient, or an unknown Patient id itself."""
    if found is not None:
        return asked_patient(identity, found[0], found[1].patient_id)
    return asked_patient(identity, None, target_id) if kind == "Patient" else None


def refuse_record(identity: Identity, action: str, kind: str, target_id: str, detail: str,
                  outcome: str | None = None) -> None:
    """Audit a request refused for a record it asks for, naming the record and its patient: denied when the record
    exists anywhere, not_found when it does not (the caller's answer is the same either way)."""
    found = locate_row(kind, target_id)
    patient = _patient_asked(identity, kind, target_id, found)
    audit.record(action, outcome or ("denied" if found else "not_found"), resource_type=kind[:64] or None,
                 resource_id=target_id[:80] or None, patient=patient, detail=detail[:500])


def _check_mrn_namespace(identity: Identity, resource: dict[str, Any], path: str, action: str) -> None:
    """A Patient may carry medical record numbers of the writer's own institution only: another's is refused."""
    own = MRN_SYSTEM_PREFIX + identity.institution_code
    for index, identifier in enumerate(resource.get("identifier") or []):
        system = identifier.get("system") if isinstance(identifier, dict) else None
        if isinstance(system, str) and system.casefold().startswith(MRN_SYSTEM_PREFIX.casefold()) and system != own:
            where = f"{path or 'Patient'}.identifier[{index}]"
            named = audit.patient_ref(identity.tenant_code, resource["id"]) if action == "update" else None
            audit.record(action, "denied", resource_type="Patient", resource_id=resource["id"][:80], patient=named,
                         detail=f"{where}: medical record number of another institution ({system[:100]})")
            raise FhirError(422, "processing", f"{where} is a medical record number of another institution; only "
                            f"{own} may be assigned here.", [where])


def _patient_demographics(resource: dict[str, Any], identity: Identity) -> dict[str, Any]:
    name = (resource.get("name") or [{}])[0]
    text = name.get("text") or "".join([name.get("family", ""), *name.get("given", [])]) or None
    identifiers = resource.get("identifier", [])
    mrn = next((i["value"] for i in identifiers if i.get("system") == MRN_SYSTEM_PREFIX + identity.institution_code),
               None)
    return {
        "mrn": mrn or resource["id"], "name": text or "(unnamed)",
        "sex": {"male": "M", "female": "F"}.get(resource.get("gender", ""), "U"),
        "birth_date": date.fromisoformat(birth) if (birth := resource.get("birthDate")) and len(birth) == 10
        else None,
        "id_number": next((i["value"] for i in identifiers if i.get("system") == RESIDENT_ID_SYSTEM), None),
        "phone": matching_phone(resource),
        "address": (resource.get("address") or [{}])[0].get("text"),
    }


def _record_location(tenant_code: str, patient_id: str | None, person_id: str | None = None) -> None:
    """The registry names this shard for the record's person, and the person's stamp moves."""
    person_id = person_id or person_of(tenant_code, patient_id)
    if person_id is not None:
        registry.locate(tenant_code, person_id)


def _meta(resource: dict[str, Any], version: int) -> datetime:
    """Version and time of a write; the time is returned for the row's last_updated, so _lastUpdated searches
    the very instant meta.lastUpdated states (both at the millisecond meta is written with)."""
    now = utcnow()
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    resource["meta"] = {**resource.get("meta", {}), "versionId": str(version),
                        "lastUpdated": now.isoformat(timespec="milliseconds")}
    return now


def create(identity: Identity, resource: dict[str, Any], path: str = "",
           bundled: dict[str, dict[str, Any]] | None = None, version: int = 1) -> dict[str, Any]:
    """Store a validated resource in the caller's shard as version 1 (a deleted one's re-creation: its next version);
    bundled: the Bundle's resources by reference."""
    tenant_code, session = identity.tenant_code, shard_session(identity.tenant_code)
    resource_id = resource.get("id") or new_resource_id(resource["resourceType"], tenant_code)
    resource["id"] = resource_id
    person_id = _check_subject(identity, resource, path, "create")
    check_references(identity, resource, path, person_id, bundled, "create")
    if resource["resourceType"] == "Patient":
        _check_mrn_namespace(identity, resource, path, "create")
        _patients_changed()
        try:
            patients.register(identity, _patient_demographics(resource, identity), patient_id=resource_id)
        except ValueError as exc:
            raise FhirError(400, "invalid", str(exc), [f"{path or 'Patient'}.identifier"]) from None
    stamp = _meta(resource, version)
    content, sealed = _content(tenant_code, resource, version)
    row = FhirResource(resource_type=resource["resourceType"], id=resource_id, version=version,
                       institution_id=identity.institution_id, last_updated=stamp, sealed=sealed, content=content)
    _write_index(session, tenant_code, resource, row, new=True)
    session.add(row)
    session.add(FhirResourceVersion(resource_type=row.resource_type, id=row.id, version=version,
                                    institution_id=row.institution_id, last_updated=row.last_updated,
                                    sealed=sealed, content=content))
    _record_location(tenant_code, row.patient_id, person_id)  # the rows are flushed together, at the next query
    audit.record("create", resource_type=row.resource_type, resource_id=row.id, purpose="treatment",
                 patient=audit.patient_ref(tenant_code, row.patient_id) if row.patient_id else None)
    return resource


def first_refused_record(identity: Identity, references: list[str], person_id: str, detail: str) -> int | None:
    """Records a workflow sends along (a referral's, a consultation's) must each be one of this person's records the
    caller may see: the index of the first that is not, its refusal audited naming it and its patient, or None."""
    for index, reference in enumerate(references):
        resource_type, _, resource_id = reference.partition("/")
        found = locate_row(resource_type, resource_id)
        basis = basis_for(identity, found[0], found[1]) if found else None
        about = person_of(found[0], found[1].patient_id) if found else None
        if basis is not None and about == person_id:
            continue
        outcome = "not_found" if found is None else "denied" if basis is None else "failure"
        patient = audit.patient_ref(found[0], found[1].patient_id) if found and found[1].patient_id else None
        audit.record("create", outcome, resource_type=resource_type[:40], resource_id=resource_id[:80],
                     patient=patient, detail=f"{detail}[{index}]")
        return index
    return None


def locate_row(resource_type: str, resource_id: str) -> tuple[str, FhirResource] | None:
    """The shard and row of a resource by id, without any access check (callers check)."""
    if resource_type not in WRITABLE or len(resource_id) > 64:
        return None
    tenant_code = tenant_of(platform_session(), resource_type, resource_id)
    if tenant_code is None:
        return None
    row = stored_or_registered(tenant_code, resource_type, resource_id)
    return (tenant_code, row) if row is not None else None


def _visible_row(identity: Identity, resource_type: str, resource_id: str, write: bool,
                 reason: str | None) -> tuple[str, FhirResource, access.Basis]:
    found = locate_row(resource_type, resource_id)
    if found is None:
        from hie.exchange.history import refuse_deleted  # history builds on this module

        refuse_deleted(identity, resource_type, resource_id, write, reason)  # 410 to whoever may see it
    basis = basis_for(identity, found[0], found[1], write, reason) if found else None
    if write and found and found[0] != identity.tenant_code:
        basis = None
    if found is None or basis is None:
        audit.record("update" if write else "read", "not_found" if found is None else "denied",
                     resource_type=resource_type, resource_id=resource_id[:80],
                     patient=_patient_asked(identity, resource_type, resource_id, found),
                     break_glass=bool(reason), detail=reason if reason else None)
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known or not visible to you.")
    tenant_code, row = found
    audit.record("update" if write else "read", resource_type=resource_type, resource_id=resource_id,
                 purpose=basis.value, break_glass=basis is access.Basis.break_glass,
                 detail=reason if basis is access.Basis.break_glass else None,
                 patient=audit.patient_ref(tenant_code, row.patient_id) if row.patient_id else None)
    return tenant_code, row, basis


def read(identity: Identity, resource_type: str, resource_id: str, reason: str | None = None,
         version: int | None = None) -> dict[str, Any]:
    """One resource (optionally one version) from whichever shard holds it, if the caller may see it."""
    tenant_code, row, _ = _visible_row(identity, resource_type, resource_id, False, reason)
    if version is None or version == row.version:
        return to_resource(row, tenant_code)
    old = shard_session(tenant_code).get(FhirResourceVersion, (resource_type, resource_id, version))
    if old is None:
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} has no version {version}.")
    return to_resource(old, tenant_code)


def update(identity: Identity, resource_type: str, resource_id: str, body: Any, if_match: int | None,
           path: str = "", bundled: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A new version of a resource of the caller's institution; a stale If-Match is a 412."""
    resource = validate(body, resource_type, path)
    if resource.get("id") not in (None, resource_id):
        raise FhirError(400, "invalid", "The resource id must match the URL.", [f"{resource_type}.id"])
    tenant_code, row, _ = _visible_row(identity, resource_type, resource_id, True, None)
    if if_match is not None and if_match != row.version:
        raise FhirError(412, "conflict", f"{resource_type}/{resource_id} is at version {row.version}, not {if_match}.")
    resource["id"] = resource_id
    check_references(identity, resource, path, _check_subject(identity, resource, path, "update"), bundled, "update")
    if resource_type == "Patient":
        _check_mrn_namespace(identity, resource, path, "update")
        demographics = _patient_demographics(resource, identity)
        demographics.pop("mrn")
        _patients_changed()
        try:
            patients.update(identity, resource_id, demographics, None)
        except ValueError as exc:
            raise FhirError(400, "invalid", str(exc), [f"{path or 'Patient'}.identifier"]) from None
    session = shard_session(tenant_code)
    version = row.version + 1
    stamp = _meta(resource, version)
    content, sealed = _content(tenant_code, resource, version)
    row.version, row.content, row.sealed, row.last_updated = version, content, sealed, stamp
    _write_index(session, tenant_code, resource, row)
    session.add(row)
    session.add(FhirResourceVersion(resource_type=resource_type, id=resource_id, version=version,
                                    institution_id=row.institution_id, last_updated=row.last_updated,
                                    sealed=sealed, content=content))
    session.flush()
    _record_location(tenant_code, row.patient_id)
    return resource
