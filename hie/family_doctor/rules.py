"""The follow-up rules of the National Basic Public Health Service Specification (3rd ed.) as data: one table
(data/followup_rules.json, or the file HIE_FAMILY_DOCTOR_RULES names), read here and nowhere else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from flask import current_app, has_app_context

from hie.family_doctor.models import Classification, Condition
from hie.platform.config import ConfigError

RULES_SETTING = "HIE_FAMILY_DOCTOR_RULES"
DEFAULT_RULES = Path(__file__).parent / "data" / "followup_rules.json"
GLUCOSE_FIELDS = ("fasting_glucose", "random_glucose")
PARTS = frozenset({"intervals_days", "urgent", "controlled", "reading_alarms",
                   "refer_after_consecutive_not_controlled"})


@dataclass(frozen=True)
class Verdict:
    """A follow-up's classification, why, when the next one is due, and whether to refer (urgent or recommended)."""

    classification: Classification
    reasons: list[str] = field(default_factory=list)
    next_due: date | None = None
    refer: str | None = None


@cache
def _load(path: str) -> dict[str, Any]:
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{RULES_SETTING}: {path} is not a follow-up rules table ({exc})") from None
    missing = sorted(PARTS - set(loaded)) if isinstance(loaded, dict) else sorted(PARTS)
    if missing:
        raise ConfigError(f"{RULES_SETTING}: {path} lacks {', '.join(missing)}")
    return loaded


def table(extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The rules in force: the province's variant when HIE_FAMILY_DOCTOR_RULES names one, else the specification's."""
    if extra is None and has_app_context():
        extra = current_app.config["HIE"].extra
    return _load(str((extra or {}).get(RULES_SETTING) or DEFAULT_RULES))


def symptoms(condition: Condition) -> dict[str, str]:
    """The danger symptoms of a condition, code -> the specification's words."""
    return table()["urgent"][condition.value]["symptoms"]


def _at_least(values: dict[str, float | None], name: str, limit: float | None) -> bool:
    return limit is not None and values.get(name) is not None and values[name] >= limit  # type: ignore[operator]


def _urgent_reasons(condition: Condition, values: dict[str, float | None], reported: list[str]) -> list[str]:
    danger = table()["urgent"][condition.value]
    reasons = []
    if _at_least(values, "systolic", danger.get("systolic_at_least")):
        reasons.append(f"systolic >= {danger['systolic_at_least']} mmHg")
    if _at_least(values, "diastolic", danger.get("diastolic_at_least")):
        reasons.append(f"diastolic >= {danger['diastolic_at_least']} mmHg")
    for name in GLUCOSE_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if "glucose_at_least" in danger and value >= danger["glucose_at_least"]:
            reasons.append(f"{name.replace('_', ' ')} >= {danger['glucose_at_least']} mmol/L")
        if "glucose_at_most" in danger and value <= danger["glucose_at_most"]:
            reasons.append(f"{name.replace('_', ' ')} <= {danger['glucose_at_most']} mmol/L")
    for name, key, unit in (("heart_rate", "heart_rate_above", "/min"), ("temperature", "temperature_above", "Cel")):
        if key in danger and values.get(name) is not None and values[name] > danger[key]:  # type: ignore[operator]
            reasons.append(f"{name.replace('_', ' ')} > {danger[key]} {unit}")
    reasons.extend(f"symptom: {danger['symptoms'][code]}" for code in reported if code in danger["symptoms"])
    return reasons


def _not_controlled_reasons(condition: Condition, values: dict[str, float | None], adverse: bool) -> list[str]:
    target = table()["controlled"][condition.value]
    reasons = []
    if condition is Condition.hypertension:
        if values.get("systolic") is None or values.get("diastolic") is None:
            reasons.append("blood pressure not measured")
        elif values["systolic"] >= target["systolic_below"] or values["diastolic"] >= target["diastolic_below"]:
            reasons.append(f"blood pressure not below {target['systolic_below']}/{target['diastolic_below']} mmHg")
    elif values.get("fasting_glucose") is None:
        reasons.append("fasting glucose not measured")
    elif values["fasting_glucose"] >= target["fasting_glucose_below"]:  # type: ignore[operator]
        reasons.append(f"fasting glucose not below {target['fasting_glucose_below']} mmol/L")
    if adverse:
        reasons.append("adverse drug reaction")
    return reasons


def classify(condition: Condition, values: dict[str, float | None], reported_symptoms: list[str],
             adverse_reactions: bool, visit_day: date, not_controlled_before: int = 0) -> Verdict:
    """Classify one follow-up (controlled, not controlled, urgent) and say when the next is due and whether to refer;
    not_controlled_before counts the person's consecutive not-controlled visits just before this one."""
    intervals = table()["intervals_days"]
    urgent = _urgent_reasons(condition, values, reported_symptoms)
    if urgent:
        return Verdict(Classification.urgent, urgent, visit_day + timedelta(days=intervals["urgent"]), "urgent")
    poor = _not_controlled_reasons(condition, values, adverse_reactions)
    if poor:
        again = not_controlled_before + 1 >= table()["refer_after_consecutive_not_controlled"]["count"]
        return Verdict(Classification.not_controlled, poor,
                       visit_day + timedelta(days=intervals["not_controlled"]), "recommended" if again else None)
    return Verdict(Classification.controlled, [], visit_day + timedelta(days=intervals["controlled"]))


def reading_alarms(values: dict[str, float | None]) -> list[tuple[str, str]]:
    """Possible but alarming readings, as (field, why): each raises an alert for the team."""
    limits = table()["reading_alarms"]
    found = []
    checks = (("systolic", "systolic_at_least", ">="), ("diastolic", "diastolic_at_least", ">="),
              ("fasting_glucose", "glucose_at_least", ">="), ("random_glucose", "glucose_at_least", ">="),
              ("fasting_glucose", "glucose_at_most", "<="), ("random_glucose", "glucose_at_most", "<="),
              ("heart_rate", "heart_rate_above", ">"), ("temperature", "temperature_above", ">"),
              ("spo2", "spo2_below", "<"))
    for name, key, op in checks:
        value, limit = values.get(name), limits.get(key)
        if value is None or limit is None:
            continue
        hit = {">=": value >= limit, "<=": value <= limit, ">": value > limit, "<": value < limit}[op]
        if hit:
            found.append((name, f"{name} {value:g} {op} {limit:g}"))
    return found
