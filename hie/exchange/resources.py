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

from hie.exchange import bindings
from hie.exchange.outcome import FhirError
from hie.platform.limits import DEMOGRAPHIC_MAX_LENGTHS
from hie.platform.standards import StandardError, normalise_phone

FHIR_VERSION = "4.3.0"
DEFAULT_ZONE = "Asia/Shanghai"
RESIDENT_ID_SYSTEM = "urn:hie:id:CN-RIC"
MRN_SYSTEM_PREFIX = "urn:hie:mrn:"
PHONE_SYSTEMS = ("phone", "sms")
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
EARLIEST_YEAR, LATEST_YEAR = 1800, 2199  # clinical and birth dates, stored and searched
MAX_STRING = 4096  # characters of any string element not named in STRING_LIMITS
LONG_TEXT = 65536
# The last names of an element's path -> its limit in characters (None: only the request size bounds it).
STRING_LIMITS: dict[str, int | None] = {
    "data": None, "div": LONG_TEXT, "note.text": LONG_TEXT, "conclusion": LONG_TEXT, "description": LONG_TEXT,
    "comment": LONG_TEXT,
    "coding.system": 200, "coding.code": 200, "identifier.system": 200, "identifier.value": 200,
    "status": 32, "clinicalStatus.coding.code": 32, "Patient.identifier.value": 64,
    **dict.fromkeys(("name.text", "name.family", "name.given", "name.prefix", "name.suffix"),
                    DEMOGRAPHIC_MAX_LENGTHS["name"]),
    **dict.fromkeys((f"address.{part}" for part in ("text", "line", "city", "district", "state", "postalCode",
                                                   "country")), DEMOGRAPHIC_MAX_LENGTHS["address"]),
    "telecom.value": 256,
}


@dataclass(frozen=True)
class IndexEntry:
    """What the search index keeps of one resource."""

    patient_ref: str | None
    date: datetime | None
    status: str | None
    tokens: list[tuple[str, str | None, str]]


def validate(body: Any, expected_type: str | None = None, path: str = "") -> dict[str, Any]:
    """Check with fhir.resources (which builds its own copy) and the required bindings; the sender's resource comes
    back unchanged, numbers and extensions as written, and is what gets stored. An error names the element."""
    if not isinstance(body, dict):
        raise FhirError(400, "structure", "A FHIR resource must be a JSON object.", [path or "Resource"])
    resource_type = body.get("resourceType")
    where = path or str(resource_type or "Resource")
    if resource_type not in WRITABLE:
        raise FhirError(400 if resource_type else 400, "not-supported",
                        f"Resource type {resource_type!r} is not supported here.", [where])
    if expected_type and resource_type != expected_type:
        raise FhirError(400, "invalid", f"Expected a {expected_type}, got {resource_type}.", [where])
    _check_json(body, where)
    try:
        get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        element = fhirpath(where, first["loc"])
        raise FhirError(400, "invalid", f"{element}: {first['msg']}", [element]) from None
    _check_strings(body, where)
    _check_dates(body, where)
    bindings.check(body, where)
    if resource_type == "Patient":
        _check_patient(body, where)
    return body


def _check_json(resource: dict[str, Any], where: str) -> None:
    """What the model would accept but FHIR JSON does not have: null properties (absent elements are left out) and
    the library's own fhir_comments; the resource is stored as sent, so neither may reach a reader."""
    stack: list[tuple[Any, str]] = [(resource, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "fhir_comments" or item is None:
                    what = "is not an element of FHIR R4" if key == "fhir_comments" else \
                        "is null; FHIR JSON leaves an absent element out"
                    raise FhirError(400, "structure", f"{path}.{key} {what}.", [f"{path}.{key}"])
                stack.append((item, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(value))


def _strings(resource: dict[str, Any], where: str) -> Iterator[tuple[str, tuple[str, ...], str]]:
    """Every string of a resource: its FHIRPath, the names of its element path, its value."""
    stack: list[tuple[Any, str, tuple[str, ...]]] = [(resource, where, (resource["resourceType"],))]
    while stack:
        value, path, names = stack.pop()
        if isinstance(value, dict):
            stack.extend((item, f"{path}.{key}", (*names, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", names) for index, item in enumerate(value))
        elif isinstance(value, str):
            yield path, names, value


def string_limit(names: tuple[str, ...]) -> int | None:
    """The most specific limit STRING_LIMITS gives an element path, else MAX_STRING."""
    for size in range(min(len(names), 3), 0, -1):
        suffix = ".".join(names[-size:])
        if suffix in STRING_LIMITS:
            return STRING_LIMITS[suffix]
    return MAX_STRING


def _check_strings(resource: dict[str, Any], where: str) -> None:
    for path, names, value in _strings(resource, where):
        limit = string_limit(names)
        if limit is not None and len(value) > limit:
            raise FhirError(422, "too-long", f"{path} is longer than {limit} characters.", [path])


def _check_dates(resource: dict[str, Any], where: str) -> None:
    """Indexed dates lie in EARLIEST_YEAR..LATEST_YEAR, so every zone converts them and every database holds them."""
    for field in DATE_FIELDS.get(resource["resourceType"], ()):
        value = _get(resource, field)
        if isinstance(value, str) and not EARLIEST_YEAR <= int(value[:4]) <= LATEST_YEAR:
            path = f"{where}.{field}"
            raise FhirError(422, "value", f"{path} must lie in the years {EARLIEST_YEAR} to {LATEST_YEAR}.", [path])


def _check_patient(resource: dict[str, Any], where: str) -> None:
    """A Patient names someone (a name or an identifier), born by now, with a name the EMPI can match."""
    names = resource.get("name", [])
    if not any(n.get("text") or n.get("family") or n.get("given") for n in names) and \
            not any(i.get("value") for i in resource.get("identifier", [])):
        raise FhirError(422, "required", f"{where} needs a name or an identifier.", [f"{where}.name"])
    for index, identifier in enumerate(resource.get("identifier", [])):
        if identifier.get("system") == RESIDENT_ID_SYSTEM and not identifier.get("value", "").isascii():
            path = f"{where}.identifier[{index}].value"
            raise FhirError(422, "value", f"{path}: a resident ID number is written in digits 0-9 and X.", [path])
    limit = DEMOGRAPHIC_MAX_LENGTHS["name"]
    for index, name in enumerate(names):
        if len("".join([name.get("family", ""), *name.get("given", [])])) > limit:
            path = f"{where}.name[{index}]"
            raise FhirError(422, "too-long", f"{path}: family and given names together exceed {limit} characters.",
                            [path])
    for index, telecom in enumerate(resource.get("telecom", [])):
        if telecom.get("value") and not telecom.get("system"):
            path = f"{where}.telecom[{index}].system"
            raise FhirError(422, "required", f"{path}: a contact point with a value names its system (FHIR cpt-2).",
                            [path])
    birth = resource.get("birthDate")
    if birth and parse_date(birth) > datetime.now(local_zone()):
        raise FhirError(422, "value", f"{where}.birthDate is in the future.", [f"{where}.birthDate"])


def matching_phone(resource: dict[str, Any]) -> str | None:
    """The first phone (or SMS) number of a Patient that is a Chinese mobile or landline, normalised for the EMPI;
    numbers of other countries and retired ones (use old) stay in the resource as sent and are not matched on."""
    for telecom in resource.get("telecom", []):
        if telecom.get("system") in PHONE_SYSTEMS and telecom.get("use") != "old" and telecom.get("value"):
            try:
                return normalise_phone(telecom["value"])
            except StandardError:
                continue
    return None


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
