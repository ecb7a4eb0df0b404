"""FHIR Patient/$match over the EMPI: the Patient records the caller may read of the best-matching persons, with
scores and match grades."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient
from flask import Response, current_app, g, request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.empi import queries
from hie.empi.models import PersonRecord
from hie.empi.services import thresholds_for
from hie.exchange import store
from hie.exchange.models import FhirResource
from hie.exchange.outcome import FhirError, fhir_blueprint, fhir_response
from hie.exchange.resources import RESIDENT_ID_SYSTEM
from hie.platform import access, limits
from hie.platform.access import Permission, permissions_of
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import authenticate_request
from hie.platform.auth.identity import Identity, current_identity
from hie.platform.db import platform_session

bp = fhir_blueprint("fhir_empi", __name__)
MATCH_GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
MAX_MATCHES = 50  # count's maximum, and how many persons are scored before the caller's access is applied
OTHER_RECORDS_URL = "urn:hie:extension:other-records"  # how many of the person's records the caller may not read


def _parameters() -> tuple[Patient, int, bool]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise FhirError(400, "structure", "The body must be a FHIR Parameters resource in JSON.")
    if body.get("resourceType") != "Parameters":
        raise FhirError(400, "structure", "Expected resourceType Parameters.", ["Parameters"])
    try:
        parameters = Parameters.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "Parameters." + ".".join(str(p) for p in first["loc"])
        raise FhirError(400, "invalid", f"{path}: {first['msg']}", [path]) from None
    patient, count, only_certain = None, 10, False
    for parameter in parameters.parameter or []:
        if parameter.name == "resource" and parameter.resource is not None:
            patient = parameter.resource
        elif parameter.name == "count" and parameter.valueInteger is not None:
            count = parameter.valueInteger
        elif parameter.name == "onlyCertainMatches" and parameter.valueBoolean is not None:
            only_certain = parameter.valueBoolean
    if not isinstance(patient, Patient):
        raise FhirError(400, "required", "Parameter 'resource' must hold a Patient.", ["Parameters.parameter"])
    if not 1 <= count <= MAX_MATCHES:
        raise FhirError(400, "value", f"count must be between 1 and {MAX_MATCHES}.", ["Parameters.parameter"])
    return patient, count, only_certain


def _demographics(patient: Patient) -> dict[str, Any]:
    """The fields the matcher uses, from a FHIR Patient."""
    name = patient.name[0] if patient.name else None
    text = None
    if name is not None:
        text = name.text or " ".join(part for part in [name.family, *(name.given or [])] if part) or None
    id_number = next((i.value for i in patient.identifier or [] if i.system == RESIDENT_ID_SYSTEM), None)
    phone = next((t.value for t in patient.telecom or [] if t.system == "phone"), None)
    address = patient.address[0].text if patient.address else None
    sex = {"male": "M", "female": "F"}.get(patient.gender or "")
    return {"name": text, "sex": sex, "birth_date": patient.birthDate.isoformat() if patient.birthDate else None,
            "id_type": "CN-RIC" if id_number else None, "id_number": id_number, "phone": phone, "address": address}


Shown = list[tuple[str, FhirResource, access.Basis]]  # a Patient record the caller may read: shard, row, basis


@dataclass(frozen=True)
class _Found:
    """A master person's Patient records the caller may read (shard, record, basis), and how many others it has."""

    readable: Shown
    other_records: int


def _readable_patients(session: Session, identity: Identity, person_id: str) -> _Found:
    """The person's Patient records in the shards the caller may read them from, by the rule a read by id applies;
    every other registration of the person only counted (where a person is registered is itself sensitive)."""
    registrations = session.execute(
        select(PersonRecord.tenant_code, PersonRecord.patient_id, PersonRecord.institution_id)
        .where(PersonRecord.person_id == person_id).order_by(PersonRecord.tenant_code, PersonRecord.patient_id)
    ).all()
    readable = []
    for tenant_code, patient_id, institution_id in registrations:
        if patient_id is None:
            continue
        basis = access.patient_basis(session, identity, access.PatientRecordRef(
            tenant_code, patient_id, institution_id, person_id), False)
        row = store.stored_or_registered(tenant_code, "Patient", patient_id) if basis is not None else None
        if basis is not None and row is not None:
            readable.append((tenant_code, row, basis))
    return _Found(readable, len(registrations) - len(readable))


def _entry(tenant_code: str, row: FhirResource, match: queries.PersonMatch, other_records: int) -> dict[str, Any]:
    """A matched Patient as a read by id returns it, with the person's score, grade and unreadable registrations."""
    extensions: list[dict[str, Any]] = [{"url": MATCH_GRADE_URL, "valueCode": match.grade}]
    if other_records:
        extensions.append({"url": OTHER_RECORDS_URL, "valueInteger": other_records})
    return {"fullUrl": f"{request.host_url}fhir/Patient/{row.id}", "resource": store.to_resource(row, tenant_code),
            "search": {"mode": "match", "score": match.score, "extension": extensions}}


def _collect(session: Session, identity: Identity, matches: list[queries.PersonMatch], count: int) -> tuple[
        list[dict[str, Any]], list[queries.PersonMatch], Shown, list[tuple[queries.PersonMatch, int]]]:
    """Entries of the best persons' readable Patients up to count; the persons looked at, the Patients shown, and
    the persons of whom nothing is readable with how many records they hold."""
    entries: list[dict[str, Any]] = []
    considered: list[queries.PersonMatch] = []
    shown: Shown = []
    unseen: list[tuple[queries.PersonMatch, int]] = []
    for match in matches:
        if len(entries) >= count:
            break
        considered.append(match)
        found = _readable_patients(session, identity, match.person_id)
        if not found.readable:
            unseen.append((match, found.other_records))
        for tenant_code, row, basis in found.readable[:count - len(entries)]:
            entries.append(_entry(tenant_code, row, match, found.other_records))
            shown.append((tenant_code, row, basis))
    return entries, considered, shown, unseen


@bp.post("/Patient/$match")
def patient_match() -> Response:
    """Score the EMPI's master persons against a Patient (FHIR R4 $match): the Patient records of the best matches
    that the caller may read, each with its person's score and grade."""
    authenticate_request()
    identity = current_identity()
    if Permission.patient_read not in permissions_of(identity):
        audit.record("authorize", outcome="denied", detail=f"missing {Permission.patient_read.value}")
        raise FhirError(403, "forbidden", "Patient matching needs the patient:read permission.")
    patient, count, only_certain = _parameters()
    session = platform_session()
    demographics = _demographics(patient)
    if not any(demographics.values()):
        raise FhirError(400, "required", "The Patient carries nothing to match on.", ["Patient"])
    overlong = limits.overlong_demographic(demographics)
    if overlong is not None:
        raise FhirError(400, "too-long", f"The Patient's {overlong} is longer than the "
                        f"{limits.DEMOGRAPHIC_MAX_LENGTHS[overlong]} characters matching takes.", ["Patient"])
    ring = current_app.extensions["hie.keyring"]
    # Persons past the count are asked for too: those whose records the caller may not read leave room for more.
    matches = queries.demographic_query(session, ring, demographics, MAX_MATCHES,
                                        thresholds_for(session, identity.region_code), only_certain)
    entries, considered, shown, unseen = _collect(session, identity, matches, count)
    persons = {match.person_id for match in considered} - {match.person_id for match, _ in unseen}
    audit.record("match", resource_type="Patient", purpose=queries.purpose(identity),
                 detail=queries.audit_detail(ring, g.request_id, "match", demographics, considered, persons))
    for tenant_code, row, basis in shown:
        audit.record("read", resource_type="Patient", resource_id=row.id, purpose=basis.value,
                     patient=audit.patient_ref(tenant_code, row.id), detail="$match")
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
              "entry": entries + ([_unseen_outcome([hidden for _, hidden in unseen])] if unseen else [])}
    return fhir_response(bundle)


def _unseen_outcome(unseen: list[int]) -> dict[str, Any]:
    """Persons matched whose records the caller may not read: only how many, never who or where."""
    diagnostics = (f"{len(unseen)} further matching person(s) hold {sum(unseen)} record(s) at institutions whose "
                   "records you may not read; they are not shown.")
    return {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "suppressed", "diagnostics": diagnostics}]},
            "search": {"mode": "outcome"}}
