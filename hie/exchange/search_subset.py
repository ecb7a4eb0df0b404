"""_summary and _elements: a match cut down to the elements asked for, marked SUBSETTED as the spec requires."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from hie.exchange.outcome import FhirError

SUMMARY_VALUES = ("true", "text", "data", "count", "false")
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
ALWAYS = ("resourceType", "id", "meta")


@lru_cache(maxsize=64)
def _elements(resource_type: str) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Top-level element names of a type: all, those in its summary, and the mandatory ones (min 1)."""
    every, summary, mandatory = set(), set(), set()
    for name, info in get_fhir_model_class(resource_type).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        key = info.alias or name
        every.add(key)
        if extra.get("summary_element_property"):
            summary.add(key)
        if info.is_required() or extra.get("element_required"):
            mandatory.add(key)
    return frozenset(every), frozenset(summary), frozenset(mandatory)


def check_elements(resource_type: str, raw: str) -> tuple[str, ...]:
    """The element names of _elements (Type.element accepted too); an unknown one is a 400 naming _elements."""
    every = _elements(resource_type)[0]
    names = []
    for part in raw.split(","):
        name = part.strip().removeprefix(f"{resource_type}.")
        if not any(_kept(key, {name}) for key in every):
            raise FhirError(400, "invalid", f"_elements: {resource_type} has no element {part!r}.", ["_elements"])
        names.append(name)
    return tuple(dict.fromkeys(names))


def _kept(key: str, wanted: set[str]) -> bool:
    """A choice element's JSON key (valueQuantity) is kept when its base (value[x] asked as value) is asked for."""
    return key in wanted or any(key.startswith(name) and key[len(name):][:1].isupper() for name in wanted)


def subset(resource: dict[str, Any], summary: str | None, elements: tuple[str, ...] | None) -> dict[str, Any]:
    """The resource as _summary (true, text, data) or _elements asks for it; unchanged when neither does."""
    if summary in (None, "false", "count") and elements is None:
        return resource
    _, in_summary, mandatory = _elements(resource["resourceType"])
    if summary == "data":
        kept = {key: value for key, value in resource.items() if key != "text"}
    else:
        wanted = set(ALWAYS) | set(mandatory)
        wanted |= set(in_summary) if summary == "true" else {"text"} if summary == "text" else set(elements or ())
        kept = {key: value for key, value in resource.items() if _kept(key, wanted)}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    return {**kept, "meta": meta}
