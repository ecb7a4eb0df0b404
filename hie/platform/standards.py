"""National standards the API checks at the door: GB 11643 resident ID numbers, GB/T 2260 region codes."""

from __future__ import annotations

import re
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_REGION_RE = re.compile(r"^\d{6}(\d{3}(\d{3})?)?$", re.ASCII)
_PHONE_RE = re.compile(r"^(\+?86)?(1[3-9]\d{9}|0\d{2,3}\d{7,8})$", re.ASCII)


class StandardError(ValueError):
    """A value breaks the standard it claims to follow; the message says how."""


def check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of GB 11643-1999."""
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def normalise_resident_id(raw: str) -> str:
    """An 18-character resident ID, upgrading 15-digit ones; StandardError says what is wrong."""
    value = raw.strip().upper().replace(" ", "")
    if re.fullmatch(r"\d{15}", value, re.ASCII):
        body = value[:6] + "19" + value[6:]
        value = body + check_digit(body)
    if not re.fullmatch(r"\d{17}[\dX]", value, re.ASCII):
        raise StandardError("must be 18 characters (17 digits and a digit or X) or 15 digits")
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise StandardError("encodes an impossible birth date") from None
    if check_digit(value[:17]) != value[17]:
        raise StandardError("check digit does not match (GB 11643)")
    return value


def birth_date_of(resident_id: str) -> date:
    """The birth date a valid 18-character ID encodes."""
    return date(int(resident_id[6:10]), int(resident_id[10:12]), int(resident_id[12:14]))


def sex_of(resident_id: str) -> str:
    """M or F from the ID's order code (odd is male)."""
    return "M" if int(resident_id[16]) % 2 else "F"


def normalise_phone(raw: str) -> str:
    """Digits only, without the +86 prefix; StandardError if it cannot be a Chinese number."""
    value = re.sub(r"[\s\-()]", "", raw.strip())
    match = _PHONE_RE.fullmatch(value)
    if not match:
        raise StandardError("is not a Chinese mobile or landline number")
    return match.group(2)


def is_region_code(code: str) -> bool:
    """GB/T 2260 six digits, optionally extended to township (9) or village (12) level."""
    return bool(_REGION_RE.fullmatch(code))
