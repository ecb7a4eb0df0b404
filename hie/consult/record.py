"""The signed opinion in the patient's shared record: a FHIR DiagnosticReport (imaging and ECG reads) or a consult
note DocumentReference (consultations, MDT), written through the exchange, one FHIR version per opinion version.

Where it is written: into the REQUESTING institution's shard, as that institution's record about its own patient
record, authored (performer / author) by the consultant and their institution. The consulting institution usually
sits in another tenant and holds no record of the patient: the exchange stores a resource only about a Patient of
the writer's shard whom the writer may see, and registering a shadow patient in the consultant's shard only to hang
the opinion on would make a second local record (and an EMPI link) that no clinician there asked for. The request
was made for the requester's record; the answer belongs beside it, so it shows in the patient's $everything for
every institution that may see the patient (the requester by its own institution, the consultant by its care
relationship, later carers likewise), and it stays there after the consultation closes. The exchange's audit names
the consultant, who made the write; the record's institution is the requester's. A requester may later edit the
resource in FHIR like any of its records; the signed, verifiable text is the consultation's Opinion row, and each
new opinion version writes a new FHIR version over whatever is current, so history keeps every version.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any, NoReturn

from flask_smorest import abort

from hie.consult.models import Consultation, Kind
from hie.exchange import store
from hie.exchange.outcome import FhirError
from hie.exchange.resources import validate
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session
from hie.tenants.models import Institution

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INSTITUTION_IDENTIFIER = "urn:hie:institution"
CONSULTATION_IDENTIFIER = "urn:hie:consultation"
MARKDOWN = "text/markdown"
# kind -> (LOINC code, display, diagnostic service section) of the DiagnosticReport of a read
READ_CODES = {Kind.imaging_read: ("18748-4", "Diagnostic imaging study", "RAD"),
              Kind.ecg_read: ("11524-6", "EKG study", "EC")}
CONSULT_NOTE = ("11488-4", "Consult note")


def acting_for_requester(identity: Identity, consultation: Consultation) -> Identity:
    """The consultant acting for the requesting institution in the exchange: what they write is that institution's
    record about its own patient; the audit still names the consultant."""
    institution = platform_session().get_one(Institution, consultation.requester_institution_id)
    return dataclasses.replace(identity, institution_id=institution.id, institution_code=institution.code,
                               tenant_id=institution.tenant_id, tenant_code=institution.tenant.code, patient_id=None)


def _instant(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(document: dict[str, Any]) -> str:
    """The signed opinion as Markdown, for the record's attachment and the draft referral's summary."""
    opinion, signer = document["opinion"], document["signer"]
    lines = [f"# Consultation opinion (version {document['version']})", "",
             f"Signed by {signer['username']} ({signer['institution_name']}, {signer['institution']}) at "
             f"{document['signed_at']}, {document['algorithm']}.", "", "## Findings", "", opinion["findings"], "",
             "## Impression", "", opinion["impression"], ""]
    if opinion["diagnoses"]:
        lines += ["## Diagnoses", "", *(f"- {d['code']} {d['text']}" for d in opinion["diagnoses"]), ""]
    if opinion["recommendations"]:
        lines += ["## Recommendations", "", opinion["recommendations"], ""]
    if opinion["refer"]:
        where = " ".join(filter(None, (opinion["refer_to"], opinion["department"]))) or "a higher level of care"
        lines += [f"Referral recommended: {where}.", ""]
    return "\n".join(lines)


def _attachment(document: dict[str, Any], when: str) -> dict[str, Any]:
    return {"contentType": MARKDOWN, "data": base64.b64encode(render(document).encode()).decode("ascii"),
            "title": f"Consultation opinion, version {document['version']}", "creation": when}


def _parties(document: dict[str, Any]) -> list[dict[str, Any]]:
    signer = document["signer"]
    return [{"type": "Practitioner", "display": f"{signer['username']} ({signer['institution_name']})"},
            {"type": "Organization", "display": signer["institution_name"],
             "identifier": {"system": INSTITUTION_IDENTIFIER, "value": signer["institution"]}}]


def _studies(acting: Identity, consultation: Consultation) -> list[dict[str, str]]:
    """The consultation's ImagingStudy records the record's institution may see about this patient."""
    found = []
    for reference in consultation.records:
        kind, _, target_id = reference.partition("/")
        located = store.locate_row(kind, target_id) if kind == "ImagingStudy" else None
        if located is None:
            continue
        person = store.person_of(located[0], located[1].patient_id)
        if person == consultation.master_person_id and store.basis_for(acting, located[0], located[1],
                                                                       person_id=person) is not None:
            found.append({"reference": reference})
    return found


def resource(acting: Identity, consultation: Consultation, document: dict[str, Any]) -> dict[str, Any]:
    """The FHIR resource of one opinion version, validated: a DiagnosticReport for a read, else a DocumentReference."""
    opinion, when = document["opinion"], _instant(datetime.fromisoformat(document["signed_at"]))
    first = document["version"] == 1
    common = {"identifier": [{"system": CONSULTATION_IDENTIFIER, "value": consultation.id}],
              "subject": {"reference": f"Patient/{consultation.patient_id}"}}
    if consultation.kind in READ_CODES:
        code, display, section = READ_CODES[consultation.kind]
        body: dict[str, Any] = {
            "resourceType": "DiagnosticReport", **common, "status": "final" if first else "amended",
            "category": [{"coding": [{"system": V2_0074, "code": section}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "issued": when, "performer": _parties(document), "resultsInterpreter": _parties(document)[:1],
            "conclusion": opinion["impression"],
            "conclusionCode": [{"coding": [{"system": ICD10, "code": d["code"], "display": d["text"]}],
                                "text": d["text"]} for d in opinion["diagnoses"]],
            "presentedForm": [_attachment(document, when)]}
        studies = _studies(acting, consultation)
        if studies:
            body["imagingStudy"] = studies
    else:
        code, display = CONSULT_NOTE
        body = {"resourceType": "DocumentReference", **common, "status": "current",
                "docStatus": "final" if first else "amended",
                "type": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
                "date": when, "author": _parties(document), "description": opinion["impression"][:4096],
                "content": [{"attachment": _attachment(document, when)}]}
    return validate({key: value for key, value in body.items() if value != []}, body["resourceType"])


def _refused(consultation: Consultation, exc: FhirError) -> NoReturn:
    """The exchange refused the record: the whole opinion is undone (the request rolls back), audited, 409."""
    audit.record("create", "failure", resource_type="ConsultationOpinion", resource_id=consultation.id,
                 patient=audit.patient_ref(consultation.requester_tenant_code, consultation.patient_id),
                 detail=f"the shared record refused the opinion: {exc.diagnostics}"[:500])
    abort(409, message=f"The patient's shared record cannot take the opinion: {exc.diagnostics}")


def write(identity: Identity, consultation: Consultation, document: dict[str, Any],
          previous: str | None) -> str:
    """Write (version 1) or update (later versions, If-Match the stored version) the opinion's resource in the
    requester's shard; the versioned reference, Type/id/_history/n."""
    acting = acting_for_requester(identity, consultation)
    try:
        body = resource(acting, consultation, document)
        if previous is None:
            stored = store.create(acting, body)
        else:
            kind, _, rest = previous.partition("/")
            resource_id = rest.split("/_history/", 1)[0]
            located = store.locate_row(kind, resource_id)
            stored = store.update(acting, kind, resource_id, body, located[1].version if located else None)
    except FhirError as exc:
        _refused(consultation, exc)
    return f"{stored['resourceType']}/{stored['id']}/_history/{stored['meta']['versionId']}"
