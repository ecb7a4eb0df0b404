"""Required value-set bindings of the declared FHIR version: a status, intent or gender outside its value set is
refused, since every reader of the record takes those codes as the spec defines them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hie.exchange.outcome import FhirError

DATA = Path(__file__).with_name("data") / "required_bindings.json"  # its source and licence are inside it
EXTENSIONS = ("extension", "modifierExtension")
LISTED_CODES = 20  # a refusal lists the allowed codes when there are at most this many
_CHOICE = re.compile(r"([a-z][A-Za-z]*?)([A-Z][A-Za-z]*)")


@dataclass(frozen=True)
class Definitions:
    """What the checker needs of the official definitions: bindings and the types it walks through to reach them."""

    bindings: dict[str, str]  # element path -> value set URL
    value_sets: dict[str, dict[str, frozenset[str]]]  # value set URL -> system -> codes
    types: dict[str, str]  # element path -> its data type, where that type holds a required binding
    choices: dict[str, frozenset[str]]  # choice element path without [x] -> its data types that hold one
    references: dict[str, str]  # element path -> the element whose definition it reuses (Questionnaire.item.item)


@cache
def definitions() -> Definitions:
    """The bindings data, read once."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return Definitions(
        data["bindings"],
        {url: {system: frozenset(codes) for system, codes in systems.items()}
         for url, systems in data["valueSets"].items()},
        data["types"], {path: frozenset(kinds) for path, kinds in data["choices"].items()}, data["references"])


def check(resource: dict[str, Any], where: str) -> None:
    """Every required-bound code in a resource (its contained resources too) is in its value set, else a 422."""
    _walk(resource, resource["resourceType"], where)


def _element_kind(found: Definitions, definition: str, key: str) -> str:
    """The definition path an element's content is checked against: its data type's when that holds a binding."""
    if key in EXTENSIONS:
        return "Extension"
    element = f"{definition}.{key}"
    if element in found.types:
        return found.types[element]
    if element in found.references:
        return found.references[element]
    choice = _CHOICE.fullmatch(key)
    if choice and choice[2] in found.choices.get(f"{definition}.{choice[1]}", ()):
        return choice[2]
    return element


def _walk(value: dict[str, Any], definition: str, path: str) -> None:
    found = definitions()
    for key, item in value.items():
        if key == "contained" and isinstance(item, list):
            for index, resource in enumerate(item):
                if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                    _walk(resource, resource["resourceType"], f"{path}.contained[{index}]")
            continue
        url = found.bindings.get(f"{definition}.{key}")
        kind = "Element" if key.startswith("_") else _element_kind(found, definition, key)
        for where, entry in (((f"{path}.{key}[{i}]", e) for i, e in enumerate(item)) if isinstance(item, list)
                             else [(f"{path}.{key}", item)]):
            if url is not None and entry is not None:
                _check_code(entry, url, found.value_sets[url], where)
            elif isinstance(entry, dict):
                _walk(entry, kind, where)


def _check_code(value: Any, url: str, allowed: dict[str, frozenset[str]], where: str) -> None:
    """A code, Coding, CodeableConcept or CodeableReference against one value set."""
    if isinstance(value, str):
        if not any(value in codes for codes in allowed.values()):
            _refuse(where, value, url, allowed)
    elif isinstance(value, dict) and isinstance(value.get("concept"), dict):
        _check_code(value["concept"], url, allowed, f"{where}.concept")
    elif isinstance(value, dict) and ("coding" in value or "text" in value):
        codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
        if any(c.get("code") in allowed.get(c.get("system"), ()) for c in codings):
            return
        for index, coding in enumerate(codings):
            if coding.get("system") in allowed or "system" not in coding:
                _check_coding(coding, url, allowed, f"{where}.coding[{index}]")
        _refuse(where, None, url, allowed)
    elif isinstance(value, dict) and ("code" in value or "system" in value):
        _check_coding(value, url, allowed, where)


def _check_coding(coding: dict[str, Any], url: str, allowed: dict[str, frozenset[str]], where: str) -> None:
    """A Coding's system and code: a code without its system cannot be read as the value set's, so it is refused."""
    if "system" not in coding:
        systems = [system for system, codes in allowed.items() if coding.get("code") in codes]
        hint = f"; {coding.get('code')!r} is a code of {' or '.join(systems)}" if systems else ""
        raise FhirError(422, "code-invalid", f"{where}.system is missing: a code of the required value set {url} "
                        f"names its system{hint}.", [f"{where}.system"])
    if coding["system"] not in allowed:
        _refuse(f"{where}.system", coding["system"], url, allowed)
    if coding.get("code") not in allowed[coding["system"]]:
        _refuse(f"{where}.code", coding.get("code"), url, allowed)


def _refuse(where: str, code: Any, url: str, allowed: dict[str, frozenset[str]]) -> None:
    """A 422 naming the element, the code and the value set (with its codes when they are few)."""
    every = sorted({code for codes in allowed.values() for code in codes})
    listed = f": one of {', '.join(every)}" if len(every) <= LISTED_CODES else ""
    given = f"{str(code)[:64]!r} is not" if code is not None else "has no coding"
    raise FhirError(422, "code-invalid", f"{where}: {given} in the required value set {url}{listed}.", [where])
