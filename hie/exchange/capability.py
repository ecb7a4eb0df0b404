"""The CapabilityStatement: exactly what this server supports, built from the code that supports it."""

from __future__ import annotations

from typing import Any

from hie.exchange.resources import EARLIEST_YEAR, FHIR_VERSION, LATEST_YEAR, MAX_STRING, STRING_LIMITS, WRITABLE
from hie.exchange.search_params import (
    INCLUDES,
    MAX_COUNT,
    MAX_OR_VALUES,
    MAX_PARAMETERS,
    MAX_TOKEN_LENGTH,
    SEARCH_YEARS,
    search_param_types,
)
from hie.platform.limits import MAX_INT, MAX_JSON_DEPTH
from hie.platform.modules import installed

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


def limits_documentation(max_request_bytes: int) -> str:
    """The bounds every request is held to, as the CapabilityStatement and docs/architecture.md state them."""
    named = "; ".join(f"{element} {limit if limit is not None else 'only the body size'}"
                      for element, limit in STRING_LIMITS.items())
    return (f"Limits. A body is JSON (Content-Type application/fhir+json or application/json; else 415) of at most "
            f"{max_request_bytes} bytes, nested at most {MAX_JSON_DEPTH} levels deep (else 400). A string element "
            f"holds at most {MAX_STRING} characters, except (by the last names of its path): {named}; a longer one "
            f"is 422 too-long naming the element. A Patient's family and given names together are at most "
            f"{STRING_LIMITS['name.text']} characters; a Patient needs a name or an identifier and a birthDate not in "
            f"the future. Indexed dates (birthDate, effective, onset, authoredOn...) lie in the years "
            f"{EARLIEST_YEAR} to {LATEST_YEAR}, date search values in {SEARCH_YEARS[0]} to {SEARCH_YEARS[1]}. A search "
            f"takes at most {MAX_PARAMETERS} parameters, each with at most {MAX_OR_VALUES} comma-separated values, "
            f"systems and codes of at most {MAX_TOKEN_LENGTH} characters, _count 0 to {MAX_COUNT} and _offset 0 to "
            f"{MAX_INT}; numbers are ASCII digits 0-9 only.")


def capability_statement(base_url: str, software_version: str, max_request_bytes: int) -> dict[str, Any]:
    """Declared FHIR version is the one fhir.resources validates against (R4B, 4.3.0)."""
    resources = [_resource(resource_type) for resource_type in WRITABLE]
    resources.append({"type": "AuditEvent", "interaction": [{"code": "read"}]})
    for module in installed():  # a module serving /fhir types of its own declares them (extras["fhir_capability"])
        if "fhir_capability" in module.extras:
            resources.extend(module.extras["fhir_capability"]())
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
            "documentation": limits_documentation(max_request_bytes),
            "security": {"service": [{"text": "OAuth2-style Bearer token from /api/v1/auth/token"}]},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }
