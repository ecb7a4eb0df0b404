"""Field comparisons that turn a record pair into Fellegi-Sunter agreement levels."""

from __future__ import annotations

import datetime as dt

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler

from hie.empi.normalize import Address, NormalizedRecord, is_pinyin, pinyin_splits

MISSING = 0
DISAGREE = 1

# Level labels per field, index = level; 0 is always "missing" and carries no weight.
FIELD_LEVELS: dict[str, tuple[str, ...]] = {
    "family_name": ("missing", "disagree", "jw80", "jw92", "pinyin", "exact"),
    "given_name": ("missing", "disagree", "jw80", "jw92", "pinyin", "exact"),
    "birth_date": ("missing", "disagree", "near", "typo_or_swap", "exact"),
    "sex": ("missing", "disagree", "exact"),
    "id_number": ("missing", "disagree", "close", "exact"),
    "phone": ("missing", "disagree", "close", "exact"),
    "address": ("missing", "disagree", "area", "close", "exact"),
}
FIELDS: tuple[str, ...] = tuple(FIELD_LEVELS)
NEAR_BIRTH_DAYS = 62


def _name_level(a_canon: str | None, b_canon: str | None, a_py: str | None, b_py: str | None) -> int:
    """Exact canonical form, same pinyin reading, or Jaro-Winkler bands on the pinyin."""
    if not a_py or not b_py:
        return MISSING
    if a_canon and a_canon == b_canon:
        return 5
    if a_py == b_py:
        return 4
    sim = JaroWinkler.normalized_similarity(a_py, b_py)
    if sim >= 0.92:
        return 3
    if sim >= 0.80:
        return 2
    return DISAGREE


def typed_spells(typed: str, syllables: tuple[str, ...], slips: int = 1) -> bool:
    """Whether typed pinyin spells the hanzi name's syllables with at most one IME slip over the whole name."""
    if not syllables:
        return not typed
    head, rest = syllables[0], syllables[1:]
    if typed.startswith(head) and typed_spells(typed[len(head):], rest, slips):
        return True
    if slips == 0:
        return False
    for size in range(max(1, len(head) - 1), len(head) + 2):
        if size <= len(typed) and OSA.distance(typed[:size], head) == 1 and typed_spells(typed[size:], rest, 0):
            return True
    return False


def typed_given_level(a: NormalizedRecord, b: NormalizedRecord, level: int) -> int:
    """A typed Chinese given name only fuzzily like another is a different name unless it spells its syllables."""
    hanzi, typed = (a, b) if a.given_syllables else (b, a)
    if typed.name_is_hanzi or not typed.given_pinyin or not hanzi.given_pinyin:
        return level
    readings = (hanzi.given_syllables,) if hanzi.given_syllables else pinyin_splits(hanzi.given_pinyin)
    if not readings or not is_pinyin(typed.given_pinyin):
        return level
    return level if any(typed_spells(typed.given_pinyin, r) for r in readings) else DISAGREE


def compare_names(a: NormalizedRecord, b: NormalizedRecord) -> tuple[int, int]:
    """Family and given levels, tolerant of swapped order and of names whose split is unknown."""
    fam = _name_level(a.family_name, b.family_name, a.family_pinyin, b.family_pinyin)
    giv = _name_level(a.given_name, b.given_name, a.given_pinyin, b.given_pinyin)
    if a.given_syllables and b.given_syllables:
        # Two hanzi given names agree only in writing or in reading: 琳/丽 or 霞/嘉 are twins' names, not slips.
        if giv < 4:
            giv = DISAGREE
    elif giv in (2, 3):
        giv = typed_given_level(a, b, giv)
    if fam == 5 and giv == 5:
        return fam, giv
    a_full, b_full = a.full_pinyin, b.full_pinyin
    if a_full and a_full == b_full and (fam < 4 or giv < 4):
        return 4, 4
    if a.family_pinyin and a.given_pinyin and b.family_pinyin and b.given_pinyin and (fam < 3 or giv < 3):
        if a.family_pinyin == b.given_pinyin and a.given_pinyin == b.family_pinyin:
            return 4, 4
        cross = sorted((JaroWinkler.normalized_similarity(a.family_pinyin, b.given_pinyin),
                        JaroWinkler.normalized_similarity(a.given_pinyin, b.family_pinyin)))
        if cross[0] >= 0.92 or (cross[0] >= 0.8 and cross[1] == 1.0):
            return 3, 3
        if fam < 3 and not (a.name_is_hanzi or b.name_is_hanzi) and cross[1] >= 0.92:
            return (4 if cross[1] == 1.0 else 3), giv
    return fam, giv


def _date_level(a: dt.date, b: dt.date) -> int:
    """Exact, swapped day/month or one-digit typo, near (lunar shift), or disagree."""
    if a == b:
        return 4
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return 3
    if OSA.distance(a.strftime("%Y%m%d"), b.strftime("%Y%m%d")) <= 1:
        return 3
    if abs((a - b).days) <= NEAR_BIRTH_DAYS:
        return 2
    return DISAGREE


def compare_birth_dates(a: NormalizedRecord, b: NormalizedRecord) -> int:
    """Best level over stated and ID-encoded birth dates."""
    a_dates, b_dates = a.birth_dates, b.birth_dates
    if not a_dates or not b_dates:
        return MISSING
    return max(_date_level(x, y) for x in a_dates for y in b_dates)


def compare_sex(a: NormalizedRecord, b: NormalizedRecord) -> int:
    """Agreement on sex, the ID-encoded sex counting as a second reading."""
    a_sex = {s for s in (a.sex, a.id_sex) if s}
    b_sex = {s for s in (b.sex, b.id_sex) if s}
    if not a_sex or not b_sex:
        return MISSING
    return 2 if a_sex & b_sex else DISAGREE


def compare_ids(a: NormalizedRecord, b: NormalizedRecord) -> int:
    """Same identifier, one typo or transposition away, or different; other ID types do not compare."""
    if not a.id_number or not b.id_number or a.id_type != b.id_type:
        return MISSING
    if a.id_number == b.id_number:
        return 3
    if OSA.distance(a.id_number, b.id_number) <= 1 and not (a.id_valid and b.id_valid):
        return 2
    return DISAGREE


def compare_phones(a: NormalizedRecord, b: NormalizedRecord) -> int:
    """Same number, one digit off or same last eight digits, or different."""
    if not a.phone or not b.phone:
        return MISSING
    if a.phone == b.phone:
        return 3
    if OSA.distance(a.phone, b.phone) <= 1 or (len(a.phone) >= 8 and a.phone[-8:] == b.phone[-8:]):
        return 2
    return DISAGREE


def _chinese_address_level(a: Address, b: Address) -> int:
    """Compare only the levels both addresses spell out, so long and short forms can agree."""
    for level in ("province", "city", "county"):
        x, y = getattr(a, level), getattr(b, level)
        if x and y and x != y:
            return DISAGREE
    fine = [(getattr(a, f), getattr(b, f)) for f in ("township", "village", "house_number")]
    common = [(x, y) for x, y in fine if x and y]
    agree = sum(x == y for x, y in common)
    conflicts = len(common) - agree
    if common and conflicts == 0 and (a.village and b.village or a.house_number and b.house_number):
        return 4
    township_same = a.township and a.township == b.township
    village_same = a.village and a.village == b.village
    if village_same or (township_same and conflicts <= 1):
        return 3
    if township_same or (a.county and a.county == b.county):
        return 2
    if not common and not (a.county and b.county):
        return 2 if a.text in b.text or b.text in a.text else DISAGREE
    return DISAGREE


def compare_addresses(a: NormalizedRecord, b: NormalizedRecord) -> int:
    """Structured comparison for Chinese addresses, token similarity for Latin ones."""
    if a.address is None or b.address is None:
        return MISSING
    if a.address.text == b.address.text:
        return 4
    if a.address.is_chinese and b.address.is_chinese:
        return _chinese_address_level(a.address, b.address)
    x, y = a.address, b.address
    sim = max(fuzz.token_sort_ratio(x.text, y.text), fuzz.ratio(x.text.replace(" ", ""), y.text.replace(" ", "")))
    sim /= 100.0
    if sim >= 0.85 or (sim >= 0.6 and x.postcode and x.postcode == y.postcode and x.house_number == y.house_number):
        return 3
    if sim >= 0.6:
        return 2
    return DISAGREE


def compare(a: NormalizedRecord, b: NormalizedRecord) -> tuple[int, ...]:
    """Agreement level of every field, in FIELDS order."""
    fam, giv = compare_names(a, b)
    return (
        fam,
        giv,
        compare_birth_dates(a, b),
        compare_sex(a, b),
        compare_ids(a, b),
        compare_phones(a, b),
        compare_addresses(a, b),
    )
