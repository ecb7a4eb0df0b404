"""PIX (cross-reference) and PDQ (demographic query) over the index, with match grades."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.empi.matching import Thresholds
from hie.empi.models import MasterPerson, PersonRecord
from hie.empi.normalize import normalize_record
from hie.empi.services import current_model, find_candidates, key_hashes, person_of_local
from hie.platform.cache import Cache
from hie.platform.crypto import KeyRing
from hie.tenants.models import Institution


@dataclass(frozen=True)
class PersonMatch:
    """A master person that fits a query, with how well."""

    person_id: str
    weight: float
    score: float
    grade: str


def identifiers(session: Session, person_id: str) -> list[dict[str, str]]:
    """Every local id of a master person: which institution, which tenant, which record number."""
    rows = session.execute(
        select(Institution.code, PersonRecord.tenant_code, PersonRecord.local_id)
        .join(Institution, Institution.id == PersonRecord.institution_id)
        .where(PersonRecord.person_id == person_id)
        .order_by(Institution.code, PersonRecord.local_id)
    ).all()
    return [{"institution_code": code, "tenant_code": tenant, "local_id": local} for code, tenant, local in rows]


def cross_reference(session: Session, cache: Cache, institution_id: int, local_id: str) -> str | None:
    """PIX: the master person of a local record (the hot lookup, through the cache), or None."""
    return person_of_local(session, cache, institution_id, local_id)


def grade(weight: float, veto: str | None, thresholds: Thresholds) -> str | None:
    """FHIR match-grade: certain at the auto-link threshold, probable above the midpoint, possible above review."""
    if weight >= thresholds.link and veto is None:
        return "certain"
    if weight >= (thresholds.link + thresholds.review) / 2:
        return "probable"
    if weight >= thresholds.review:
        return "possible"
    return None


def probability(weight: float) -> float:
    """Match weight (log2 odds) as a 0..1 score."""
    return round(1.0 / (1.0 + math.pow(2.0, -max(min(weight, 60.0), -60.0))), 4)


def demographic_query(session: Session, ring: KeyRing, demographics: dict[str, Any], count: int,
                      thresholds: Thresholds | None = None, only_certain: bool = False) -> list[PersonMatch]:
    """PDQ and $match: the best-scoring master persons for some demographics, best first."""
    thresholds = thresholds or Thresholds()
    normalized = normalize_record({"rec_id": "query", **{k: v for k, v in demographics.items() if v}})
    candidates = find_candidates(session, ring, normalized, key_hashes(ring, normalized), current_model(session))
    best: dict[str, PersonMatch] = {}
    for candidate in candidates:
        person_id = candidate.person_id
        match_grade = grade(candidate.weight, candidate.veto, thresholds)
        if match_grade is None or (only_certain and match_grade != "certain"):
            continue
        if person_id not in best or best[person_id].weight < candidate.weight:
            best[person_id] = PersonMatch(person_id, candidate.weight, probability(candidate.weight), match_grade)
    return sorted(best.values(), key=lambda m: m.weight, reverse=True)[:count]


def person(session: Session, person_id: str) -> MasterPerson | None:
    """A master person by id (merged ones included, they point at their survivor)."""
    return session.get(MasterPerson, person_id)
