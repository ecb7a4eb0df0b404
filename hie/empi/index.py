"""Low-level reads of the index shared by registration and stewardship: survivors, sealed records, IDs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.empi import features
from hie.empi.matching.scoring import resident_id
from hie.empi.models import MasterPerson, NotAMatch, PersonRecord
from hie.empi.normalize import NormalizedRecord
from hie.platform.crypto import KeyRing
from hie.platform.keys import SealedColumn, register_sealed_column


def record_aad(record_id: str) -> str:
    """Sealed demographics belong to exactly one EMPI record."""
    return f"empi_records.demographics|{record_id}"


register_sealed_column(SealedColumn(PersonRecord.__table__, "demographics_enc",  # type: ignore[arg-type]
                                    lambda _tenant, row: record_aad(row["id"]), platform=True))


def local_cache_key(institution_id: int, local_id: str) -> str:
    """Cache key of the hot lookup local id -> master person."""
    return f"empi:local:{institution_id}:{local_id}"


def survivor(session: Session, person_id: str) -> str:
    """Follow merges to the person that holds the records now."""
    seen = set()
    while person_id not in seen:
        seen.add(person_id)
        person = session.get(MasterPerson, person_id)
        if person is None or person.merged_into is None:
            return person_id
        person_id = person.merged_into
    return person_id


def unseal_demographics(ring: KeyRing, record: PersonRecord) -> dict[str, Any]:
    """Raw demographics and normalised features of a record."""
    return json.loads(ring.decrypt(record.demographics_enc, record_aad(record.id)))


def unseal_normalized(ring: KeyRing, record_id: str, sealed: str) -> NormalizedRecord:
    """The normalised features sealed with a record, from its id and sealed column alone."""
    return features.from_json(json.loads(ring.decrypt(sealed, record_aad(record_id)))["norm"])


def normalized_of(ring: KeyRing, record: PersonRecord) -> NormalizedRecord:
    """The normalised features sealed with a record."""
    return unseal_normalized(ring, record.id, record.demographics_enc)


def resident_ids(session: Session, ring: KeyRing, person_ids: Iterable[str],
                 known: Mapping[str, NormalizedRecord] | None = None) -> dict[str, set[str]]:
    """Valid resident ID numbers held by any record of each person (records in known are not unsealed again)."""
    out: dict[str, set[str]] = {p: set() for p in person_ids}
    if not out:
        return out
    known = known or {}
    for record in session.scalars(select(PersonRecord).where(PersonRecord.person_id.in_(list(out)))):
        number = resident_id(known.get(record.id) or normalized_of(ring, record))
        if number:
            out[record.person_id].add(number)
    return out


def ids_conflict(a: set[str], b: set[str]) -> bool:
    """Two persons hold different valid resident IDs, so they are two people whatever else agrees."""
    return bool(a) and bool(b) and a != b


def refused_persons(session: Session, person_id: str) -> set[str]:
    """Persons a steward said are not this person: a not-a-match between any records of the two."""
    own = set(session.scalars(select(PersonRecord.id).where(PersonRecord.person_id == person_id)))
    if not own:
        return set()
    rows = session.execute(select(NotAMatch.record_a, NotAMatch.record_b).where(
        NotAMatch.record_a.in_(own) | NotAMatch.record_b.in_(own))).all()
    others = {b if a in own else a for a, b in rows}
    if not others:
        return set()
    persons = session.scalars(select(PersonRecord.person_id).where(PersonRecord.id.in_(others)))
    return {survivor(session, p) for p in persons} - {person_id}
