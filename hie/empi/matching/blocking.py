"""Blocking keys: strings the DB layer can store as HMAC blind indexes to fetch match candidates."""

from __future__ import annotations

import datetime as dt

from hie.empi.normalize import RESIDENT_ID_TYPE, NormalizedRecord

_SOUNDEX_CODES = {c: str(d) for d, letters in enumerate(
    ("aeiouyhw", "bfpv", "cgjkqsxz", "dt", "l", "mn", "r")) for c in letters}


def soundex(word: str) -> str:
    """American Soundex of a lowercase Latin key, tolerant of the misspellings in English names."""
    if not word:
        return ""
    code = word[0].upper()
    previous = _SOUNDEX_CODES.get(word[0], "")
    for char in word[1:]:
        digit = _SOUNDEX_CODES.get(char, "")
        if digit and digit != "0" and digit != previous:
            code += digit
        if char not in "hw":
            previous = digit
    return (code + "000")[:4]


def _date_keys(dates: tuple[dt.date, ...]) -> set[str]:
    """Birth dates plus their day/month-swapped forms, so swapped entries share a block."""
    keys = set()
    for d in dates:
        keys.add(f"{d.year:04d}{d.month:02d}{d.day:02d}")
        if d.day <= 12 and d.day != d.month:
            keys.add(f"{d.year:04d}{d.day:02d}{d.month:02d}")
    return keys


def blocking_keys(rec: NormalizedRecord) -> list[str]:
    """Candidate keys: ID (+digit anagram), phone, birth date (+swap), names, postcode with house number or surname."""
    keys: set[str] = set()
    if rec.id_number:
        keys.add(f"id:{rec.id_type}:{rec.id_number}")
    if rec.phone:
        keys.add(f"ph:{rec.phone}")
    years = {d.year for d in rec.birth_dates}
    if rec.given_pinyin:
        keys.update(f"gy:{rec.given_pinyin}:{year}" for year in years)
    keys.update(f"bd:{key}" for key in _date_keys(rec.birth_dates))
    names = sorted(p for p in (rec.family_pinyin, rec.given_pinyin) if p)
    if names:
        keys.add(f"nm:{'|'.join(names)}")
    if not rec.name_is_hanzi:
        if rec.family_pinyin:
            keys.update(f"sy:{soundex(rec.family_pinyin)}:{year}" for year in years)
        if len(names) == 2:
            keys.add(f"sx:{''.join(sorted(soundex(p) for p in names))}")
    if rec.id_number and rec.id_type != RESIDENT_ID_TYPE:
        keys.add(f"ix:{rec.id_type}:{''.join(sorted(rec.id_number))}")
    address = rec.address
    if address is not None and address.postcode:
        if address.house_number:
            keys.add(f"pc:{address.postcode}:{address.house_number}")
        if rec.family_pinyin:
            keys.add(f"ps:{address.postcode}:{soundex(rec.family_pinyin)}")
    return sorted(keys)
