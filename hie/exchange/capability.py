"""The CapabilityStatement: exactly what this server supports, built from the code that supports it."""

from __future__ import annotations

from typing import Any

from hie.exchange.bulk_api import capability as bulk_capability
from hie.exchange.bundles import max_entries
from hie.exchange.everything import PARAMETERS as EVERYTHING_PARAMETERS
from hie.exchange.resources import EARLIEST_YEAR, FHIR_VERSION, LATEST_YEAR, MAX_STRING, STRING_LIMITS, WRITABLE
from hie.exchange.search_params import (
    INCLUDES,
    MAX_COUNT,
    MAX_OR_VALUES,
    MAX_PARAMETERS,
    MAX_TOKEN_LENGTH,
    SEARCH_YEARS,
    revinclude_targets,
    search_param_types,
)
from hie.platform.limits import MAX_INT, MAX_JSON_DEPTH
from hie.platform.modules import installed

INTERACTIONS = ("read", "vread", "update", "create", "search-type", "delete", "history-instance", "history-type")
UNDELETABLE = ("Patient",)  # the register's and the EMPI's records (hie/exchange/history.py)
OPERATIONS = [
    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
     "documentation": "GET /fhir/Patient/{id}/$everything: the master person's records from every tenant the caller "
                      f"may see, narrowed by {', '.join(EVERYTHING_PARAMETERS)} and paged by _count (next and "
                      "previous links carry a keyset cursor); X-Break-Glass-Reason breaks the glass (audited)."},
    {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
     "documentation": "POST /fhir/Patient/$match with a Parameters resource: the Patient records of the EMPI's "
                      "best-matching persons that the caller may read, each with its score and match grade."},
    {"name": "prior-results", "definition": "urn:hie:OperationDefinition:Patient-prior-results",
     "documentation": "GET /fhir/Patient/{id}/$prior-results?code=system|code[&days=n]: results for the same test "
                      "from any institution within the window (mutual recognition of results)."},
]


def _resource(resource_type: str) -> dict[str, Any]:
    deletable = resource_type not in UNDELETABLE
    entry: dict[str, Any] = {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS if deletable or code != "delete"],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": deletable,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "single" if deletable else "not-supported",
        "searchInclude": [f"{source}:{param}" for source, param in INCLUDES if source == resource_type],
        "searchRevInclude": [f"{source}:{param}" for source in WRITABLE for param in search_param_types(source)
                             if resource_type in revinclude_targets(source, param)],
        "searchParam": [{"name": name, "type": kind} for name, kind in search_param_types(resource_type).items()],
    }
    if resource_type == "Patient":
        entry["operation"] = OPERATIONS
        entry["documentation"] = ("A Patient's id is assigned by the patient register (PUT at an unknown id is 404) "
                                  "and a Patient is never deleted; re-send one with If-None-Exist or a conditional "
                                  "update by identifier.")
    else:
        entry["documentation"] = CLIENT_IDS
    return entry


CLIENT_IDS = ("Update as create: PUT at an id starting with <tenant>.<institution code>. (yaodu.YAODU-CH.anything, "
              "at most 64 characters of A-Z a-z 0-9 - .) creates the record there; any other unknown id is 404. An "
              "unchanged re-send stores no new version. Conditional create (criteria in If-None-Exist, or in the "
              "POST's query as fhirpy sends them), update and delete match by the caller's own search (records the "
              "caller may not read never match); several matches are 412. DELETE stores a "
              "deletion version; reads then answer 410 and _history shows it.")


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
            f"systems and codes of at most {MAX_TOKEN_LENGTH} characters; _count from 0 up to {MAX_INT}, a page "
            f"holds at most {MAX_COUNT} (a larger _count is capped, as the self link shows); numbers are ASCII digits "
            f"0-9 only. Pages continue by the opaque _cursor of the next link. Unknown parameters are a 400 unless the "
            f"request says Prefer: handling=lenient (then ignored and named in an OperationOutcome entry).")


def _strict_only(served_by_modules: list[dict[str, Any]]) -> str:
    """Modules' searches parse their own parameters and do not take Prefer: handling=lenient; say which."""
    searched = [entry["type"] for entry in served_by_modules
                if any(i["code"] == "search-type" for i in entry.get("interaction", []))]
    return f" Searches of {', '.join(searched)} refuse unknown parameters whatever Prefer says." if searched else ""


def capability_statement(base_url: str, software_version: str, max_request_bytes: int) -> dict[str, Any]:
    """Declared FHIR version is the one fhir.resources validates against (R4B, 4.3.0)."""
    resources = [_resource(resource_type) for resource_type in WRITABLE]
    resources.append({"type": "AuditEvent", "interaction": [{"code": "read"}]})
    served_by_modules: list[dict[str, Any]] = []
    for module in installed():  # a module serving /fhir types of its own declares them (extras["fhir_capability"])
        if "fhir_capability" in module.extras:
            served_by_modules.extend(module.extras["fhir_capability"]())
    resources.extend(served_by_modules)
    return bulk_capability({
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
            "documentation": f"{limits_documentation(max_request_bytes)} A transaction or batch Bundle holds at "
                             f"most {max_entries()} entries (more: 413).{_strict_only(served_by_modules)}",
            "security": {"service": [{"text": "OAuth2-style Bearer token from /api/v1/auth/token"}]},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
