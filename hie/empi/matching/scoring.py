"""Pair scoring, hard rules and the three-way outcome of a match."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from hie.empi.matching.comparison import DISAGREE, FIELD_LEVELS, FIELDS, compare
from hie.empi.matching.model import ModelWeights
from hie.empi.normalize import RESIDENT_ID_TYPE, NormalizedRecord, is_pinyin

_GIVEN = FIELDS.index("given_name")
_ID = FIELDS.index("id_number")
_ID_CLOSE = FIELD_LEVELS["id_number"].index("close")
_PHONE, _PHONE_CLOSE = FIELDS.index("phone"), FIELD_LEVELS["phone"].index("close")
_ADDRESS, _ADDRESS_CLOSE = FIELDS.index("address"), FIELD_LEVELS["address"].index("close")
_ADDRESS_EXACT = FIELD_LEVELS["address"].index("exact")

VETO_DIFFERENT_IDS = "different valid resident IDs"
VETO_GIVEN_NAMES = "given names disagree and IDs do not agree"
VETO_UNCORROBORATED = "only name, sex and birth date agree (no ID, phone or house address)"


def chinese_given_name(rec: NormalizedRecord) -> bool:
    """Hanzi or pinyin given name: chosen per child, so a different one marks a sibling, not a typo or nickname."""
    return rec.name_is_hanzi or bool(rec.given_pinyin and is_pinyin(rec.given_pinyin))


def resident_id(rec: NormalizedRecord) -> str | None:
    """The record's resident ID number if it is a valid one (a mistyped ID proves nothing)."""
    return rec.id_number if rec.id_valid and rec.id_type == RESIDENT_ID_TYPE and rec.id_number else None


class Outcome(StrEnum):
    """What the EMPI does with a candidate pair."""

    AUTO_LINK = "auto_link"
    REVIEW = "review"
    NEW_PERSON = "new_person"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Total log2 match weights (prior included) above which pairs link or go to review."""

    link: float = 6.0
    review: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.link) and math.isfinite(self.review)):
            raise ValueError("thresholds must be finite numbers (not NaN or infinity)")
        if self.review > self.link:
            raise ValueError("review threshold must not exceed link threshold")


class MatchScore(NamedTuple):
    """Total weight, per-field level labels, and the hard rule that forbids auto-linking, if any."""

    weight: float
    levels: dict[str, str]
    veto: str | None


def corroborated(a: NormalizedRecord, b: NormalizedRecord, levels: tuple[int, ...]) -> bool:
    """Agreement beyond name, sex and birth date: ID or phone (exact or one slip), or the address to the house."""
    if levels[_ID] >= _ID_CLOSE or levels[_PHONE] >= _PHONE_CLOSE:
        return True
    x, y = a.address, b.address
    if x is None or y is None:
        return False
    if not (x.is_chinese or y.is_chinese):
        return levels[_ADDRESS] >= _ADDRESS_CLOSE
    return levels[_ADDRESS] >= _ADDRESS_EXACT and bool(x.house_number) and x.house_number == y.house_number


def veto_reason(a: NormalizedRecord, b: NormalizedRecord, levels: tuple[int, ...]) -> str | None:
    """Hard rules no weight can override: distinct valid resident IDs, or twins' distinct Chinese given names."""
    if (
        a.id_valid and b.id_valid and a.id_type == RESIDENT_ID_TYPE == b.id_type
        and a.id_number != b.id_number
    ):
        return VETO_DIFFERENT_IDS
    if levels[_GIVEN] == DISAGREE and levels[_ID] < _ID_CLOSE and chinese_given_name(a) and chinese_given_name(b):
        return VETO_GIVEN_NAMES
    return None


def pair_weight(levels: tuple[int, ...], model: ModelWeights) -> float:
    """Prior plus the sum of field weights for a level vector."""
    table = model.weight_table()
    return model.prior_weight + float(sum(table[i, lv] for i, lv in enumerate(levels)))


def score(a: NormalizedRecord, b: NormalizedRecord, model: ModelWeights) -> MatchScore:
    """Score one pair against the index: weight, the level each field reached, and any veto."""
    levels = compare(a, b)
    labels = {name: FIELD_LEVELS[name][lv] for name, lv in zip(FIELDS, levels, strict=True)}
    # The index has no name frequencies (batch dedupe has, per file), and a common name such as 张伟 has
    # thousands of holders in a region: name, sex and birth date alone are not enough to link.
    veto = veto_reason(a, b, levels) or (None if corroborated(a, b, levels) else VETO_UNCORROBORATED)
    return MatchScore(pair_weight(levels, model), labels, veto)


def classify(weight: float, thresholds: Thresholds, veto: str | None = None) -> Outcome:
    """Auto-link, review or new person; a vetoed pair can at best go to review."""
    if weight >= thresholds.link and veto is None:
        return Outcome.AUTO_LINK
    if weight >= thresholds.review:
        return Outcome.REVIEW
    return Outcome.NEW_PERSON
