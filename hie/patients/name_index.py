"""Blind indexes of a patient's name parts and phones, so FHIR string search works while names stay sealed.

Each normalised form (the full name, surname, given name, their pinyin; each word of a Latin name) is indexed
with every prefix up to MAX_PREFIX characters, as keyed HMACs. A search value is normalised the same way and
looked up by its HMAC: a prefix match without the database ever holding the name. The price: rows per patient
grow with name length (about 10 forms x up to MAX_PREFIX prefixes), and equal prefixes are visible as equal
HMACs (who shares a surname's first letters), which is what the full-name index already shows for whole names.
A search value longer than MAX_PREFIX characters matches only a form equal to it in full.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Index, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.empi.normalize import canonical_text, has_hanzi, latin_key, normalize_name
from hie.platform.crypto import keyring
from hie.platform.db import TenantBase

MAX_PREFIX = 16
NAME_PARAMS = ("name", "family", "given")
EXACT = ":exact"
REGISTER, FHIR = "register", "fhir"  # who wrote a row: the register's own name, or a stored FHIR Patient
_WORDS = re.compile(r"[\s,\u00b7\u2022\u30fb.]+")


class PatientSearchToken(TenantBase):
    """One blind-indexed search form of a register patient (param name, family, given, phone; :exact forms)."""

    __tablename__ = "patient_search_tokens"
    __table_args__ = (
        Index("ix_patient_search_tokens_lookup", "param", "token", "patient_id"),
        Index("ix_patient_search_tokens_patient", "patient_id", "source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(16))
    param: Mapped[str] = mapped_column(String(32))
    token: Mapped[str] = mapped_column(String(32))


def search_form(value: str) -> str:
    """What a name part is compared as: hanzi canonical (simplified, no spaces), else Latin letters lowercased."""
    canon = canonical_text(value)
    return canon if has_hanzi(canon) else latin_key(canon)


def phone_form(value: str) -> str:
    """Digits only, without a leading +86: how a phone number is compared."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", value) if c.isdigit())
    return digits[2:] if value.strip().startswith("+86") else digits


def _prefixes(form: str) -> set[str]:
    return {form[:size] for size in range(1, min(len(form), MAX_PREFIX) + 1)} | {form}


def _hanzi_forms(text: str) -> dict[str, set[str]]:
    """A hanzi or run-together name: the full name, surname and given name, and their pinyin."""
    family, given, family_pinyin, given_pinyin, _ = normalize_name(text)
    forms: dict[str, set[str]] = {"name": {search_form(text)}, "family": set(), "given": set()}
    for param, values in (("family", (family, family_pinyin)), ("given", (given, given_pinyin))):
        found = {search_form(v) for v in values if v}
        forms[param] |= found
        forms["name"] |= found
    if family_pinyin and given_pinyin:
        forms["name"].add(family_pinyin + given_pinyin)
    return forms


def name_forms(names: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """param -> normalised forms of FHIR HumanNames (text only: split into surname and given as the EMPI does)."""
    forms: dict[str, set[str]] = {param: set() for param in NAME_PARAMS}
    for name in names:
        family = name.get("family") if isinstance(name.get("family"), str) else None
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        if family is None and not given and isinstance(name.get("text"), str):
            for param, found in _hanzi_forms(name["text"]).items():
                forms[param] |= found
            forms["name"] |= {search_form(word) for word in _WORDS.split(name["text"])}
            continue
        parts = {"family": [family] if family else [], "given": given}
        for param, values in parts.items():
            for value in values:
                forms[param].add(search_form(value))
                forms[param] |= {search_form(word) for word in _WORDS.split(value)}
        words = [*parts["family"], *given, *(p for p in (name.get("prefix") or []) + (name.get("suffix") or [])
                                            if isinstance(p, str))]
        forms["name"] |= forms["family"] | forms["given"] | {search_form(w) for w in words}
        if family and given:  # typed together: "Aaron Abbott", "Abbott Aaron", all given names and the family name
            forms["name"] |= {search_form(family + "".join(given)), search_form("".join(given) + family)}
            forms["name"] |= {search_form(g + family) for g in given} | {search_form(family + g) for g in given}
        if isinstance(name.get("text"), str):
            forms["name"] |= {search_form(name["text"])} | {search_form(w) for w in _WORDS.split(name["text"])}
    return {param: {form for form in found if form} for param, found in forms.items()}


def exact_forms(names: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """param -> name parts exactly as written (trimmed), for :exact."""
    forms: dict[str, set[str]] = {param: set() for param in NAME_PARAMS}
    for name in names:
        family, given = name.get("family"), [g for g in name.get("given") or [] if isinstance(g, str)]
        if isinstance(family, str):
            forms["family"].add(family.strip())
        forms["given"] |= {g.strip() for g in given}
        forms["name"] |= forms["family"] | forms["given"]
        if isinstance(name.get("text"), str):
            forms["name"].add(name["text"].strip())
    return forms


def _blind(param: str, form: str) -> str:
    return keyring().blind_index(f"patients.search.{param}", form)


def write(session: Session, patient_id: str, source: str, names: list[dict[str, Any]], phones: list[str]) -> None:
    """Replace the rows one source wrote for a patient (a stored FHIR Patient's replace the register's too: its
    structured names say more than the register's one text): prefixes of each name form, exact forms, phones."""
    stale = [PatientSearchToken.patient_id == patient_id]
    if source == REGISTER:
        stale.append(PatientSearchToken.source == REGISTER)
    session.execute(delete(PatientSearchToken).where(*stale))
    tokens: set[tuple[str, str]] = set()
    for param, forms in name_forms(names).items():
        tokens |= {(param, _blind(param, prefix)) for form in forms for prefix in _prefixes(form)}
    for param, forms in exact_forms(names).items():
        tokens |= {(param + EXACT, _blind(param + EXACT, form)) for form in forms if form}
    tokens |= {("phone", _blind("phone", phone_form(p))) for p in phones if phone_form(p)}
    session.add_all(PatientSearchToken(patient_id=patient_id, source=source, param=param, token=token)
                    for param, token in sorted(tokens))


def write_register(session: Session, patient_id: str, name: str | None) -> None:
    """The register's own name (one text, split as the EMPI splits it); its phone has its own blind index."""
    write(session, patient_id, REGISTER, [{"text": name}] if name else [], [])


def matching(param: str, values: list[str], exact: bool, patient_column: Any) -> ColumnElement[bool] | None:
    """Patients with a form equal to or starting with any value (None: no value can match anything)."""
    if param == "phone":
        keys = {("phone", _blind("phone", phone_form(v))) for v in values if phone_form(v)}
    elif exact:
        keys = {(param + EXACT, _blind(param + EXACT, v.strip())) for v in values if v.strip()}
    else:
        keys = {(param, _blind(param, search_form(v))) for v in values if search_form(v)}
    if not keys:
        return None
    params = {p for p, _ in keys}
    return patient_column.in_(select(PatientSearchToken.patient_id).where(
        PatientSearchToken.param.in_(params), PatientSearchToken.token.in_([t for _, t in keys])))
