"""De-identified copies of resources for health administrators' exports: direct identifiers removed, birth dates
generalised to the year, ids replaced by pseudonyms that are stable within one export and unlinkable across exports."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Pseudonym = Callable[[str, str], str]  # (resource type, id) -> pseudonymous id

PERSON_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
# Removed wherever they occur: they name, locate or reach a person, or are free text that may.
DROPPED_EVERYWHERE = frozenset({"identifier", "telecom", "photo", "note"})
# Removed from the resources that describe a person (Patient.contact names relatives; extensions there carry
# birthplace, mother's maiden name and the like).
DROPPED_FROM_PERSONS = frozenset({"name", "contact", "extension", "modifierExtension", "communication"})
ADDRESS_KEPT = frozenset({"use", "type", "city", "district", "state", "country", "period"})
DATE_GENERALISED = ("birthDate", "deceasedDateTime")
META_KEPT = frozenset({"versionId", "lastUpdated", "profile", "security", "tag"})
_REFERENCE = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def deidentify(resource: dict[str, Any], pseudonym: Pseudonym) -> dict[str, Any]:
    """A copy of the resource without direct identifiers; references point at the pseudonyms of their targets."""
    out = _walk(resource, pseudonym)
    out["id"] = pseudonym(resource["resourceType"], str(resource.get("id", "")))
    return out


def _walk(value: Any, pseudonym: Pseudonym, key: str = "") -> Any:
    if isinstance(value, list):
        return [_walk(item, pseudonym, key) for item in value]
    if not isinstance(value, dict):
        return value
    if "resourceType" in value:
        return _resource(value, pseudonym)
    if key == "address":
        return {name: item for name, item in value.items() if name in ADDRESS_KEPT}
    out: dict[str, Any] = {}
    for name, item in value.items():
        if name in DROPPED_EVERYWHERE:
            continue
        if name == "display" and not ({"system", "code"} & value.keys()):
            continue  # a Reference's display is often the person's name; a Coding's is the code's meaning
        if name == "reference" and isinstance(item, str):
            out[name] = _reference(item, pseudonym)
        elif name in ("data", "url") and "contentType" in value:
            continue  # an attachment's document (a discharge letter, a scan) is identified free text
        else:
            out[name] = _walk(item, pseudonym, name)
    return out


def _resource(resource: dict[str, Any], pseudonym: Pseudonym) -> dict[str, Any]:
    """One resource, top-level or contained: narrative dropped, person details removed, dates generalised."""
    person = resource["resourceType"] in PERSON_TYPES
    out: dict[str, Any] = {}
    for name, item in resource.items():
        if name == "text" or (person and name in DROPPED_FROM_PERSONS) or name in DROPPED_EVERYWHERE:
            continue
        if name == "meta" and isinstance(item, dict):
            out[name] = {k: v for k, v in item.items() if k in META_KEPT}
        elif name in DATE_GENERALISED and isinstance(item, str):
            out[name] = item[:4]
        else:
            out[name] = _walk(item, pseudonym, name)
    return out


def _reference(reference: str, pseudonym: Pseudonym) -> str:
    """Type/id (relative, absolute or versioned) becomes Type/<pseudonym>; a local #ref stays; anything else is
    replaced by an opaque pseudonym, since an external URL may itself identify."""
    if reference.startswith("#"):
        return reference
    found = _REFERENCE.match(reference)
    if found is not None:
        return f"{found.group(1)}/{pseudonym(found.group(1), found.group(2))}"
    return f"urn:hie:pseudonym:{pseudonym('reference', reference)}"
