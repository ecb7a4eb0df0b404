"""The CapabilityStatement: exactly what this server supports, no more."""

from __future__ import annotations

from typing import Any

from hie.exchange.resources import FHIR_VERSION, WRITABLE

SEARCH_PARAMS = [
    ("patient", "reference"), ("subject", "reference"), ("identifier", "token"), ("code", "token"),
    ("category", "token"), ("status", "token"), ("date", "date"), ("_lastUpdated", "date"),
]
INCLUDES = {
    "Observation": ["Observation:subject", "Observation:encounter"],
    "DiagnosticReport": ["DiagnosticReport:subject", "DiagnosticReport:result"],
    "Encounter": ["Encounter:subject"], "Condition": ["Condition:subject"],
    "MedicationRequest": ["MedicationRequest:subject"], "Procedure": ["Procedure:subject"],
    "Immunization": ["Immunization:patient"], "AllergyIntolerance": ["AllergyIntolerance:patient"],
    "DocumentReference": ["DocumentReference:subject"], "ImagingStudy": ["ImagingStudy:subject"],
}


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """Declared FHIR version is the one fhir.resources validates against (R4B, 4.3.0)."""
    resources: list[dict[str, Any]] = []
    for resource_type in WRITABLE:
        entry: dict[str, Any] = {
            "type": resource_type,
            "versioning": "versioned-update",
            "readHistory": False,
            "updateCreate": False,
            "conditionalCreate": False,
            "conditionalUpdate": False,
            "interaction": [{"code": code} for code in ("read", "vread", "update", "create", "search-type")],
            "searchParam": [{"name": n, "type": t} for n, t in SEARCH_PARAMS],
            "searchInclude": INCLUDES.get(resource_type, []),
        }
        if resource_type == "Patient":
            entry["operation"] = [
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
            ]
        resources.append(entry)
    resources.append({"type": "AuditEvent", "interaction": [{"code": "read"}]})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "software": {"name": "hie", "version": software_version},
        "implementation": {"description": "Regional health information exchange", "url": f"{base_url}fhir"},
        "rest": [{
            "mode": "server",
            "security": {"service": [{"text": "OAuth2-style Bearer token from /api/v1/auth/token"}]},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }
