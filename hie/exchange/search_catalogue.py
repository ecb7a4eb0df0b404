"""The standard R4 search parameters this exchange indexes, per type, by their SearchParameter names and paths."""

from __future__ import annotations

from dataclasses import dataclass

# Implicit code systems of elements typed `code` (FHIR's own value sets), so system|code matches them.
HL7 = "http://hl7.org/fhir/"
EVENT_STATUS = HL7 + "event-status"


@dataclass(frozen=True)
class TokenParam:
    """A token parameter: element paths (CodeableConcept, Coding, Identifier or code) and a code's implicit system."""

    paths: tuple[str, ...]
    system: str | None = None


@dataclass(frozen=True)
class ReferenceParam:
    """A reference parameter other than patient/subject: element paths and the types they may reference."""

    paths: tuple[str, ...]
    targets: tuple[str, ...]


def _t(*paths: str, system: str | None = None) -> TokenParam:
    return TokenParam(paths, system)


def _r(*paths: str, to: tuple[str, ...]) -> ReferenceParam:
    return ReferenceParam(paths, to)


# Names and paths from the R4 SearchParameter definitions (search-parameters.json) of each type.
TOKENS: dict[str, dict[str, TokenParam]] = {
    "Patient": {"identifier": _t("identifier"), "gender": _t("gender", system=HL7 + "administrative-gender"),
                "active": _t("active")},
    "Observation": {
        "code": _t("code"), "category": _t("category"), "identifier": _t("identifier"),
        "status": _t("status", system=HL7 + "observation-status"), "value-concept": _t("valueCodeableConcept"),
        "method": _t("method"), "data-absent-reason": _t("dataAbsentReason"), "component-code": _t("component.code"),
        "combo-code": _t("code", "component.code"),
    },
    "Condition": {
        "code": _t("code"), "category": _t("category"), "identifier": _t("identifier"),
        "clinical-status": _t("clinicalStatus"), "verification-status": _t("verificationStatus"),
        "severity": _t("severity"), "body-site": _t("bodySite"), "stage": _t("stage.summary"),
        "evidence": _t("evidence.code"),
    },
    "Encounter": {
        "class": _t("class"), "type": _t("type"), "identifier": _t("identifier"),
        "status": _t("status", system=HL7 + "encounter-status"), "reason-code": _t("reasonCode"),
        "service-type": _t("serviceType"), "participant-type": _t("participant.type"),
        "special-arrangement": _t("hospitalization.specialArrangement"),
    },
    "DiagnosticReport": {
        "code": _t("code"), "category": _t("category"), "identifier": _t("identifier"),
        "status": _t("status", system=HL7 + "diagnostic-report-status"), "conclusion": _t("conclusionCode"),
    },
    "MedicationRequest": {
        "code": _t("medicationCodeableConcept"), "category": _t("category"), "identifier": _t("identifier"),
        "status": _t("status", system=HL7 + "CodeSystem/medicationrequest-status"),
        "intent": _t("intent", system=HL7 + "CodeSystem/medicationrequest-intent"),
        "priority": _t("priority", system=HL7 + "request-priority"),
    },
    "Procedure": {
        "code": _t("code"), "category": _t("category"), "identifier": _t("identifier"),
        "status": _t("status", system=EVENT_STATUS), "reason-code": _t("reasonCode"),
    },
    "AllergyIntolerance": {
        "code": _t("code", "reaction.substance"), "identifier": _t("identifier"),
        "category": _t("category", system=HL7 + "allergy-intolerance-category"),
        "clinical-status": _t("clinicalStatus"), "verification-status": _t("verificationStatus"),
        "criticality": _t("criticality", system=HL7 + "allergy-intolerance-criticality"),
        "type": _t("type", system=HL7 + "allergy-intolerance-type"),
        "manifestation": _t("reaction.manifestation"), "route": _t("reaction.exposureRoute"),
        "severity": _t("reaction.severity", system=HL7 + "reaction-event-severity"),
    },
    "Immunization": {
        "vaccine-code": _t("vaccineCode"), "identifier": _t("identifier"),
        "status": _t("status", system=EVENT_STATUS), "status-reason": _t("statusReason"),
        "reason-code": _t("reasonCode"), "target-disease": _t("protocolApplied.targetDisease"),
    },
    "DocumentReference": {
        "type": _t("type"), "category": _t("category"), "identifier": _t("masterIdentifier", "identifier"),
        "status": _t("status", system=HL7 + "document-reference-status"),
        "contenttype": _t("content.attachment.contentType", system="urn:ietf:bcp:13"),
        "language": _t("content.attachment.language", system="urn:ietf:bcp:47"), "format": _t("content.format"),
        "security-label": _t("securityLabel"), "facility": _t("context.facilityType"), "event": _t("context.event"),
        "setting": _t("context.practiceSetting"),
    },
    "ImagingStudy": {
        "modality": _t("series.modality"), "identifier": _t("identifier"),
        "status": _t("status", system=HL7 + "imagingstudy-status"), "bodysite": _t("series.bodySite"),
        "reason": _t("reasonCode"), "dicom-class": _t("series.instance.sopClass"), "series": _t("series.uid"),
        "instance": _t("series.instance.uid"),
        "code": _t("procedureCode"),  # not an R4 name: kept from before, $prior-results finds studies by it
    },
}

DATES: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {},  # birthdate is the register's column
    "Observation": {"date": ("effectiveDateTime", "effectivePeriod", "effectiveInstant")},
    "Condition": {"onset-date": ("onsetDateTime", "onsetPeriod"), "recorded-date": ("recordedDate",),
                  "abatement-date": ("abatementDateTime", "abatementPeriod")},
    "Encounter": {"date": ("period",)},
    "DiagnosticReport": {"date": ("effectiveDateTime", "effectivePeriod"), "issued": ("issued",)},
    "MedicationRequest": {"authoredon": ("authoredOn",), "date": ("dosageInstruction.timing.event",)},
    "Procedure": {"date": ("performedDateTime", "performedPeriod")},
    "AllergyIntolerance": {"date": ("recordedDate",), "last-date": ("lastOccurrence",),
                           "onset": ("reaction.onset",)},
    "Immunization": {"date": ("occurrenceDateTime",), "expiration-date": ("expirationDate",)},
    "DocumentReference": {"date": ("date",), "period": ("context.period",)},
    "ImagingStudy": {"started": ("started",)},
}

REFERENCES: dict[str, dict[str, ReferenceParam]] = {
    "Patient": {},
    "Observation": {"encounter": _r("encounter", to=("Encounter",)),
                    "has-member": _r("hasMember", to=("Observation",)),
                    "derived-from": _r("derivedFrom", to=("Observation", "DocumentReference", "ImagingStudy"))},
    "Condition": {"encounter": _r("encounter", to=("Encounter",))},
    "Encounter": {"part-of": _r("partOf", to=("Encounter",))},
    "DiagnosticReport": {"encounter": _r("encounter", to=("Encounter",)), "result": _r("result", to=("Observation",)),
                         "imaging-study": _r("imagingStudy", to=("ImagingStudy",))},
    "MedicationRequest": {"encounter": _r("encounter", to=("Encounter",))},
    "Procedure": {"encounter": _r("encounter", to=("Encounter",))},
    "AllergyIntolerance": {},
    "Immunization": {},
    "DocumentReference": {"encounter": _r("context.encounter", to=("Encounter",))},
    "ImagingStudy": {"encounter": _r("encounter", to=("Encounter",))},
}

# Patient's string parameters over the sealed register (blind indexes of normalised name parts, phone).
PATIENT_STRINGS = ("name", "family", "given", "phone")
