"""FHIR Patient/$match over the EMPI: a searchset Bundle with scores and match grades."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient
from flask import Response, current_app, g, json, request
from pydantic import ValidationError

from hie.empi import queries
from hie.empi.services import thresholds_for
from hie.exchange.outcome import FHIR_JSON, FhirError, fhir_blueprint
from hie.exchange.resources import RESIDENT_ID_SYSTEM
from hie.platform import limits
from hie.platform.access import Permission, permissions_of
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import authenticate_request
from hie.platform.auth.identity import current_identity
from hie.platform.db import platform_session

bp = fhir_blueprint("fhir_empi", __name__)
MATCH_GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
IDENTIFIER_SYSTEM = "urn:hie:institution:"
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
    if not 1 <= count <= 50:
        raise FhirError(400, "value", "count must be between 1 and 50.", ["Parameters.parameter"])
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


@bp.post("/Patient/$match")
def patient_match() -> Response:
    """Score the EMPI's master persons against a Patient (FHIR R4 $match)."""
    authenticate_request()
    identity = current_identity()
    if not permissions_of(identity) & {Permission.patient_read, Permission.empi_steward}:
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
    matches = queries.demographic_query(session, ring, demographics, count,
                                        thresholds_for(session, identity.region_code), only_certain)
    entries, unseen = [], []
    for match in matches:
        held = queries.holdings(session, identity, match.person_id)
        if not held.visible:
            unseen.append(held.other_records)
            continue
        resource: dict[str, Any] = {"resourceType": "Patient", "id": match.person_id, "identifier": [
            {"system": IDENTIFIER_SYSTEM + ref["institution_code"], "value": ref["local_id"]}
            for ref in held.identifiers]}
        if held.other_records:
            resource["extension"] = [{"url": OTHER_RECORDS_URL, "valueInteger": held.other_records}]
        entries.append({
            "fullUrl": f"{request.host_url}fhir/Patient/{match.person_id}", "resource": resource,
            "search": {"mode": "match", "score": match.score,
                       "extension": [{"url": MATCH_GRADE_URL, "valueCode": match.grade}]},
        })
    shown = {entry["resource"]["id"] for entry in entries}
    audit.record("match", resource_type="Patient", purpose=queries.purpose(identity),
                 detail=queries.audit_detail(ring, g.request_id, "match", demographics, matches, shown))
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
              "entry": entries + ([_unseen_outcome(unseen)] if unseen else [])}
    return Response(json.dumps(bundle, ensure_ascii=False), status=200, mimetype=FHIR_JSON)


def _unseen_outcome(unseen: list[int]) -> dict[str, Any]:
    """Persons matched whose records the caller may not read: only how many, never who or where."""
    diagnostics = (f"{len(unseen)} further matching person(s) hold {sum(unseen)} record(s) at institutions whose "
                   "records you may not read; they are not shown.")
    return {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "suppressed", "diagnostics": diagnostics}]},
            "search": {"mode": "outcome"}}
