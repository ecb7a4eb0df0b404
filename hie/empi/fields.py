"""Normalisation of the non-name fields: resident IDs, phones, dates and sex."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from hie.platform.standards import check_digit

RESIDENT_ID_TYPE = "CN-RIC"
_DATE_PATTERNS = (
    re.compile(r"^(\d{4})(\d{2})(\d{2})$"),
    re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$"),
)
# A time of day after the date, as exported by hospital systems: "1958-3-12 00:00:00", "1958-03-12T00:00".
_TIME_SUFFIX = re.compile(r"(?:[T\s]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?$")
ID_NOISE = re.compile(r"[\s\-]")
ID18 = re.compile(r"\d{17}[\dX]")  # a well-formed 18-character resident ID; use fullmatch
_SEX_UNKNOWN = frozenset({"U", "UNKNOWN", "未知", "不详", "0", "9", "O"})


@dataclass(frozen=True, slots=True)
class ParsedDate:
    """A birth date plus whether its day and month could have been swapped by the clerk."""

    value: dt.date
    swappable: bool


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A resident identity card number with the facts it encodes, used as matching evidence."""

    number: str
    valid: bool
    upgraded: bool = False
    birth_date: dt.date | None = None
    sex: str | None = None


def parse_resident_id(raw: str | None, today: dt.date | None = None) -> ResidentId | None:
    """Validate an 18-digit ID or upgrade a 15-digit one (insert 19, add check digit); read birth and sex."""
    return _parse_resident_id(raw or "", today or dt.date.today())


@lru_cache(maxsize=65536)
def _parse_resident_id(raw: str, today: dt.date) -> ResidentId | None:
    """parse_resident_id for a given day, cached because registrations repeat the same numbers."""
    text = unicodedata.normalize("NFKC", raw).upper()
    number = ID_NOISE.sub("", text)
    if not number:
        return None
    upgraded = False
    if len(number) == 15 and number.isdigit():
        body = number[:6] + "19" + number[6:]
        number = body + check_digit(body)
        upgraded = True
    if not ID18.fullmatch(number):
        return ResidentId(number=number, valid=False)
    birth = _safe_date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    plausible = birth is not None and dt.date(1880, 1, 1) <= birth <= today and number[0] in "12345678"
    valid = plausible and check_digit(number[:17]) == number[17]
    sex = "M" if int(number[16]) % 2 else "F"
    return ResidentId(number, valid, upgraded, birth if plausible else None, sex if plausible else None)


@lru_cache(maxsize=65536)
def normalize_phone(raw: str | None) -> str | None:
    """Digits of a Chinese mobile or landline without +86/0086 or separators; landlines keep the 0."""
    text = unicodedata.normalize("NFKC", raw or "")
    text = re.sub(r"(?:转|ext\.?|x)\s*\d+$", "", text.strip(), flags=re.IGNORECASE)
    digits = re.sub(r"\D", "", text)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and (len(digits) == 13 or text.lstrip().startswith("+")):
        digits = digits[2:]
    if len(digits) == 11 and digits[0] == "1":
        return digits
    if digits and digits[0] != "0" and len(digits) in (9, 10, 11) and digits[:2] in {"10", "20", "21", "22"}:
        digits = "0" + digits
    return digits if len(digits) >= 7 else None


def _safe_date(year: int, month: int, day: int) -> dt.date | None:
    """A date or None when the parts do not form one."""
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def parse_date(raw: str | None) -> ParsedDate | None:
    """Parse YYYY-MM-DD, YYYYMMDD, YYYY/M/D or YYYY年M月D日; flag dates whose day and month may be swapped."""
    text = _TIME_SUFFIX.sub("", unicodedata.normalize("NFKC", raw or "").strip(), count=1)
    if not text:
        return None
    for pattern in _DATE_PATTERNS:
        match = pattern.match(text)
        if match:
            year, month, day = (int(g) for g in match.groups())
            value = _safe_date(year, month, day) or _safe_date(year, day, month)
            if value is None or not 1880 <= year <= 2100:
                return None
            return ParsedDate(value, value.day <= 12 and value.day != value.month)
    return None


def sex_is_known_code(raw: str) -> bool:
    """Whether a sex value is one of the accepted codes (M/F/U, 男/女, GB/T 2261 digits, words), not a typo."""
    text = unicodedata.normalize("NFKC", raw).strip().upper()
    return normalize_sex(text) is not None or text in _SEX_UNKNOWN


def normalize_sex(raw: str | None) -> str | None:
    """M, F or None from M/F/U, 男/女 or words."""
    text = unicodedata.normalize("NFKC", raw or "").strip().upper()
    if text in {"M", "MALE", "男", "1"}:
        return "M"
    if text in {"F", "FEMALE", "女", "2"}:
        return "F"
    return None
