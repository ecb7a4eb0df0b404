"""The resource types the exchange holds: validation with fhir.resources and what each is indexed by."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B import get_fhir_model_class
from flask import current_app, has_app_context
from pydantic import ValidationError

from hie.exchange.outcome import FhirError

FHIR_VERSION = "4.3.0"
DEFAULT_ZONE = "Asia/Shanghai"
RESIDENT_ID_SYSTEM = "urn:hie:id:CN-RIC"
MRN_SYSTEM_PREFIX = "urn:hie:mrn:"
WRITABLE = (
    "Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "MedicationRequest", "Procedure",
    "AllergyIntolerance", "Immunization", "DocumentReference", "ImagingStudy",
)
READ_ONLY = ("AuditEvent",)
PATIENT_FIELD = {"AllergyIntolerance": "patient", "Immunization": "patient"}
DATE_FIELDS: dict[str, tuple[str, ...]] = {
    "Patient": ("birthDate",),
    "Encounter": ("period.start",),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "MedicationRequest": ("authoredOn",),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "Immunization": ("occurrenceDateTime",),
    "DocumentReference": ("date",),
    "ImagingStudy": ("started",),
}
CODE_FIELDS = {"Encounter": "type", "Immunization": "vaccineCode", "MedicationRequest": "medicationCodeableConcept",
               "DocumentReference": "type", "ImagingStudy": "procedureCode"}
MAX_REFERENCE_DEPTH = 30


@dataclass(frozen=True)
class IndexEntry:
    """What the search index keeps of one resource."""

    patient_ref: str | None
    date: datetime | None
    status: str | None
    tokens: list[tuple[str, str | None, str]]


def validate(body: Any, expected_type: str | None = None, path: str = "") -> dict[str, Any]:
    """Parse with fhir.resources; an error names the offending element's FHIRPath."""
    if not isinstance(body, dict):
        raise FhirError(400, "structure", "A FHIR resource must be a JSON object.", [path or "Resource"])
    resource_type = body.get("resourceType")
    where = path or str(resource_type or "Resource")
    if resource_type not in WRITABLE:
        raise FhirError(400 if resource_type else 400, "not-supported",
                        f"Resource type {resource_type!r} is not supported here.", [where])
    if expected_type and resource_type != expected_type:
        raise FhirError(400, "invalid", f"Expected a {expected_type}, got {resource_type}.", [where])
    try:
        model = get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        element = fhirpath(where, first["loc"])
        raise FhirError(400, "invalid", f"{element}: {first['msg']}", [element]) from None
    return model.model_dump(mode="json", exclude_none=True)


def fhirpath(root: str, location: tuple[int | str, ...]) -> str:
    """A pydantic error location as FHIRPath: list positions in brackets (component[1].valueQuantity.value)."""
    path = root
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
            path += f".{part}"
    return path


def _get(resource: dict[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def local_zone() -> ZoneInfo:
    """The zone of dates given without one: the platform's (Asia/Shanghai unless HIE_TIMEZONE says otherwise)."""
    return ZoneInfo(current_app.config["HIE"].timezone if has_app_context() else DEFAULT_ZONE)


def parse_date(value: str) -> datetime:
    """A FHIR date, dateTime or instant as the start of the moment it names; zoneless values are local time."""
    zone = local_zone()
    if len(value) == 4:
        return datetime(int(value), 1, 1, tzinfo=zone)
    if len(value) == 7:
        return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=zone)
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=zone)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def _concepts(value: Any) -> Iterator[dict[str, Any]]:
    for concept in value if isinstance(value, list) else [value]:
        if isinstance(concept, dict):
            yield concept


def _codings(value: Any) -> Iterator[tuple[str | None, str]]:
    for concept in _concepts(value):
        for coding in concept.get("coding", []):
            if coding.get("code"):
                yield coding.get("system"), coding["code"]


def index_entry(resource: dict[str, Any]) -> IndexEntry:
    """Patient reference, clinical date, status and token codes of a validated resource."""
    resource_type = resource["resourceType"]
    if resource_type == "Patient":
        patient_ref = resource.get("id")
    else:
        reference = _get(resource, f"{PATIENT_FIELD.get(resource_type, 'subject')}.reference") or ""
        patient_ref = reference.split("/", 1)[1] if reference.startswith("Patient/") else None
    when = next((v for v in (_get(resource, f) for f in DATE_FIELDS.get(resource_type, ())) if v), None)
    status = resource.get("status")
    if resource_type == "Condition":
        status = next((code for _, code in _codings(resource.get("clinicalStatus"))), None)
    tokens: list[tuple[str, str | None, str]] = []
    tokens += [("code", s, c) for s, c in _codings(resource.get(CODE_FIELDS.get(resource_type, "code")))]
    tokens += [("category", s, c) for s, c in _codings(resource.get("category"))]
    tokens += [("identifier", i.get("system"), i["value"]) for i in resource.get("identifier", []) if i.get("value")]
    if status:
        tokens.append(("status", None, status))
    if resource_type == "ImagingStudy":
        tokens += [("modality", m.get("system"), m["code"])
                   for series in resource.get("series", []) for m in [series.get("modality", {})] if m.get("code")]
    return IndexEntry(patient_ref, parse_date(when) if when else None, status, tokens)


def references(resource: Any, path: str, depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference object inside a resource with its FHIRPath (for urn:uuid rewriting and reference checks)."""
    if depth > MAX_REFERENCE_DEPTH:
        return
    if isinstance(resource, dict):
        if isinstance(resource.get("reference"), str):
            yield path, resource
        for key, value in resource.items():
            if key != "contained":
                yield from references(value, f"{path}.{key}", depth + 1)
    elif isinstance(resource, list):
        for index, item in enumerate(resource):
            yield from references(item, f"{path}[{index}]", depth + 1)
