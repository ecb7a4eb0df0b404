"""The CapabilityStatement: exactly what this server supports, built from the code that supports it."""

from __future__ import annotations

from typing import Any

from hie.exchange.resources import FHIR_VERSION, WRITABLE
from hie.exchange.search_params import INCLUDES, search_param_types

INTERACTIONS = ("read", "vread", "update", "create", "search-type")
OPERATIONS = [
    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
     "documentation": "GET /fhir/Patient/{id}/$everything: the master person's records from every tenant the caller "
                      "may see; X-Break-Glass-Reason breaks the glass (audited)."},
    {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
     "documentation": "POST /fhir/Patient/$match with a Parameters resource: EMPI candidates with match grades."},
    {"name": "prior-results", "definition": "urn:hie:OperationDefinition:Patient-prior-results",
     "documentation": "GET /fhir/Patient/{id}/$prior-results?code=system|code[&days=n]: results for the same test "
                      "from any institution within the window (mutual recognition of results)."},
]


def _resource(resource_type: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{source}:{param}" for source, param in INCLUDES if source == resource_type],
        "searchParam": [{"name": name, "type": kind} for name, kind in search_param_types(resource_type).items()],
    }
    if resource_type == "Patient":
        entry["operation"] = OPERATIONS
    return entry


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """Declared FHIR version is the one fhir.resources validates against (R4B, 4.3.0)."""
    resources = [_resource(resource_type) for resource_type in WRITABLE]
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
