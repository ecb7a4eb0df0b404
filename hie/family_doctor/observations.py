"""Readings as FHIR R4 Observations: LOINC codes, UCUM units, vital-signs or laboratory category, and the marks that
say where a reading was taken and whether the resident took it themselves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SETTING_EXTENSION = "urn:hie:extension:family-doctor:setting"
SOURCE_TAG = "urn:hie:tag:family-doctor:source"
SELF_REPORTED = "self-reported"
ENTRY_IDENTIFIER = "urn:hie:family-doctor:entry"
INSTITUTION_IDENTIFIER = "urn:hie:institution"


@dataclass(frozen=True)
class Code:
    """One coded measurement: LOINC code(s) with their displays, UCUM unit, category."""

    codings: tuple[tuple[str, str], ...]
    unit: str
    category: str = "vital-signs"


BP_PANEL = Code((("85354-9", "Blood pressure panel with all children optional"),), "mm[Hg]")
BP_COMPONENTS = {"systolic": Code((("8480-6", "Systolic blood pressure"),), "mm[Hg]"),
                 "diastolic": Code((("8462-4", "Diastolic blood pressure"),), "mm[Hg]")}
# Glucose is stored in mmol/L, so its LOINC codes must be the substance-concentration ([Moles/volume]) ones:
# 1558-6 (named in the issue) and 2339-0 are [Mass/volume], i.e. mg/dL, and would misstate the unit.
# Fasting: 14771-0 "Fasting glucose [Moles/volume] in Serum or Plasma" (the 1558-6 counterpart in mmol/L);
# random: 15074-8 "Glucose [Moles/volume] in Blood" (as in the FHIR specification's example f001-glucose).
SINGLE: dict[str, Code] = {
    "heart_rate": Code((("8867-4", "Heart rate"),), "/min"),
    "fasting_glucose": Code((("14771-0", "Fasting glucose [Moles/volume] in Serum or Plasma"),), "mmol/L",
                            "laboratory"),
    "random_glucose": Code((("15074-8", "Glucose [Moles/volume] in Blood"),), "mmol/L", "laboratory"),
    "weight": Code((("29463-7", "Body weight"),), "kg"),
    "height": Code((("8302-2", "Body height"),), "cm"),
    "bmi": Code((("39156-5", "Body mass index (BMI) [Ratio]"),), "kg/m2"),
    "waist": Code((("8280-0", "Waist Circumference at umbilicus by Tape measure"),), "cm"),
    # 2708-6 is what the FHIR R4 vital-signs profile requires for oxygen saturation; 59408-5 says "by pulse
    # oximetry" (US Core adds it), which is how a clinic or a home device measures it.
    "spo2": Code((("2708-6", "Oxygen saturation in Arterial blood"),
                  ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")), "%"),
    "temperature": Code((("8310-5", "Body temperature"),), "Cel"),
}
# The order Observations are written in, and so the order of a reading's observation ids.
KINDS = ("blood_pressure", *SINGLE)


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": c, "display": d} for c, d in code.codings],
            "text": code.codings[0][1]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _base(kind: str, code: Code, reading: dict[str, Any]) -> dict[str, Any]:
    """What every Observation of a reading shares: subject, time, performer, setting, provenance marks."""
    category = code.category
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": ENTRY_IDENTIFIER, "value": f"{reading['entry_key']}/{kind}"}],
        "category": [{"coding": [{"system": CATEGORY, "code": category,
                                  "display": "Vital Signs" if category == "vital-signs" else "Laboratory"}]}],
        "code": _concept(code),
        "subject": {"reference": f"Patient/{reading['patient_id']}"},
        "effectiveDateTime": _instant(reading["taken_at"]),
        "extension": [{"url": SETTING_EXTENSION, "valueCode": reading["setting"]}],
    }
    if reading["self_reported"]:
        resource["meta"] = {"tag": [{"system": SOURCE_TAG, "code": SELF_REPORTED,
                                     "display": "Entered by the resident from their own device"}]}
        resource["performer"] = [{"reference": f"Patient/{reading['patient_id']}"}]
    else:
        resource["performer"] = [
            {"type": "Practitioner", "display": reading["performer"]},
            {"type": "Organization", "identifier": {"system": INSTITUTION_IDENTIFIER,
                                                    "value": reading["institution_code"]}}]
    return resource


def _instant(when: datetime) -> str:
    """In UTC, written as the validator writes it (Z, whole seconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(reading: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Observations of one reading, as (kind, resource), in KINDS order.

    reading: entry_key (user id/client id), patient_id, taken_at, setting, self_reported, performer (a username),
    institution_code, the values (systolic ... temperature, bmi), and bmi_note (how the BMI was computed), if any."""
    found: list[tuple[str, dict[str, Any]]] = []
    if reading.get("systolic") is not None and reading.get("diastolic") is not None:
        panel = _base("blood_pressure", BP_PANEL, reading)
        panel["component"] = [{"code": _concept(code), "valueQuantity": _quantity(reading[name], code.unit)}
                              for name, code in BP_COMPONENTS.items()]
        found.append(("blood_pressure", panel))
    for name, code in SINGLE.items():
        if reading.get(name) is None:
            continue
        resource = _base(name, code, reading)
        resource["valueQuantity"] = _quantity(reading[name], code.unit)
        if name == "bmi" and reading.get("bmi_note"):
            resource["note"] = [{"text": reading["bmi_note"]}]
        found.append((name, resource))
    return found
