"""Rebuilds required_bindings.json from the official FHIR definitions, so the data can be checked against its source.

The source is the HL7 FHIR R4B core package (hl7.fhir.r4b.core 4.3.0, CC0-1.0): `npm pack hl7.fhir.r4b.core@4.3.0`,
unpack it, then `python hie/exchange/data/build_required_bindings.py path/to/package`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CODED = {"code", "Coding", "CodeableConcept", "CodeableReference"}
WALKED_BY_KEY = {"Element", "BackboneElement", "Extension", "Resource"}  # the checker knows these from the JSON key


def _load(folder: Path, prefix: str) -> dict[str, dict[str, Any]]:
    """Every definition of one kind in the package, by canonical URL."""
    found = {}
    for file in folder.glob(f"{prefix}-*.json"):
        item = json.loads(file.read_text(encoding="utf-8"))
        found[item["url"]] = item
    return found


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    """Codes of a code system, nested ones included."""
    codes = []
    for concept in concepts:
        codes.append(concept["code"])
        codes += _concepts(concept.get("concept", []))
    return codes


def _expand(url: str, value_sets: dict, code_systems: dict, seen: frozenset = frozenset()) -> dict[str, set] | None:
    """system -> codes of an enumerable value set; None when it uses filters or a code system not in the package."""
    value_set = value_sets.get(url)
    if value_set is None or url in seen or "compose" not in value_set:
        return None
    parts: dict[str, set] = {}
    for include in value_set["compose"].get("include", []):
        if "filter" in include:
            return None
        if "valueSet" in include:
            for nested in include["valueSet"]:
                expanded = _expand(nested.split("|")[0], value_sets, code_systems, seen | {url})
                if expanded is None:
                    return None
                for system, codes in expanded.items():
                    parts.setdefault(system, set()).update(codes)
        if "system" not in include:
            continue
        system = include["system"]
        if "concept" in include:
            codes = {c["code"] for c in include["concept"]}
        elif system in code_systems and code_systems[system].get("content") == "complete":
            codes = set(_concepts(code_systems[system].get("concept", [])))
        else:
            return None
        parts.setdefault(system, set()).update(codes)
    for exclude in value_set["compose"].get("exclude", []):
        if "concept" not in exclude:
            return None
        parts.get(exclude.get("system", ""), set()).difference_update(c["code"] for c in exclude["concept"])
    return parts or None


def build(folder: Path) -> dict[str, Any]:
    """The required bindings of every resource and data type, with what the checker needs to walk to them."""
    value_sets, code_systems = _load(folder, "ValueSet"), _load(folder, "CodeSystem")
    definitions = [d for d in _load(folder, "StructureDefinition").values()
                   if d.get("derivation") == "specialization" and d["kind"] in ("resource", "complex-type")]
    bindings, expanded, types, choices, references = {}, {}, {}, {}, {}
    for definition in definitions:
        for element in definition["snapshot"]["element"]:
            path, codes = element["path"], [t["code"] for t in element.get("type", [])]
            if "contentReference" in element:
                references[path] = element["contentReference"].split("#", 1)[1]
            binding = element.get("binding") or {}
            if binding.get("strength") == "required" and set(codes) <= CODED and codes and "[x]" not in path:
                url = binding["valueSet"].split("|")[0]
                parts = _expand(url, value_sets, code_systems)
                if parts is not None:
                    bindings[path] = url
                    expanded[url] = {system: sorted(found) for system, found in sorted(parts.items())}
            complex_types = [c for c in codes if c[0].isupper() and c not in WALKED_BY_KEY]
            if path.endswith("[x]"):
                if complex_types:
                    choices[path[:-3]] = complex_types
            elif len(complex_types) == 1 and codes == complex_types:
                types[path] = complex_types[0]
    bound_types = _types_reaching(set(bindings), types, choices)
    return {
        "source": "HL7 FHIR R4B core package hl7.fhir.r4b.core 4.3.0 (StructureDefinition, ValueSet and CodeSystem "
                  "resources), https://hl7.org/fhir/R4B; rebuilt by build_required_bindings.py",
        "licence": "CC0-1.0 (HL7 FHIR is published under Creative Commons 'No Rights Reserved')",
        "fhirVersion": "4.3.0",
        "bindings": dict(sorted(bindings.items())),
        "valueSets": dict(sorted(expanded.items())),
        "types": {p: t for p, t in sorted(types.items()) if t in bound_types},
        "choices": {p: [t for t in ts if t in bound_types] for p, ts in sorted(choices.items())
                    if any(t in bound_types for t in ts)},
        "references": dict(sorted(references.items())),
    }


def _types_reaching(bound: set[str], types: dict[str, str], choices: dict[str, list[str]]) -> set[str]:
    """Data types that hold a required binding, directly or through an element of another such type."""
    reaching = {path.split(".")[0] for path in bound}
    while True:
        more = {path.split(".")[0] for path, kind in types.items() if kind in reaching}
        more |= {path.split(".")[0] for path, kinds in choices.items() if set(kinds) & reaching}
        if more <= reaching:
            return reaching
        reaching |= more


if __name__ == "__main__":
    target = Path(__file__).with_name("required_bindings.json")
    target.write_text(json.dumps(build(Path(sys.argv[1])), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
