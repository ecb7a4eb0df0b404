"""PIX (cross-reference) and PDQ (demographic query) over the index, with match grades."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.empi.matching import Thresholds
from hie.empi.models import MasterPerson, PersonRecord
from hie.empi.normalize import normalize_record
from hie.empi.services import Candidate, current_model, find_candidates, key_hashes, person_of_local
from hie.platform import access
from hie.platform.auth.identity import Identity
from hie.platform.cache import Cache
from hie.platform.crypto import KeyRing
from hie.tenants.models import Institution

IDENTIFYING = ("id_number", "phone")  # an exact agreement on one of these alone makes a person a possible match


@dataclass(frozen=True)
class PersonMatch:
    """A master person that fits a query, with how well."""

    person_id: str
    weight: float
    score: float
    grade: str


def identifiers(session: Session, person_id: str) -> list[dict[str, str]]:
    """Every local id of a master person: which institution, which tenant, which record number (stewards)."""
    rows = session.execute(
        select(Institution.code, PersonRecord.tenant_code, PersonRecord.local_id)
        .join(Institution, Institution.id == PersonRecord.institution_id)
        .where(PersonRecord.person_id == person_id)
        .order_by(Institution.code, PersonRecord.local_id)
    ).all()
    return [{"institution_code": code, "tenant_code": tenant, "local_id": local} for code, tenant, local in rows]


@dataclass(frozen=True)
class Holdings:
    """What a caller is shown of a master person's local records: those they may read, and a count of the rest."""

    identifiers: list[dict[str, str]]
    other_records: int

    @property
    def visible(self) -> bool:
        """Whether the caller may read any record of the person (and so learn the person's id)."""
        return bool(self.identifiers)


def holdings(session: Session, identity: Identity, person_id: str) -> Holdings:
    """A person's local ids the caller may read (own institution, care relationship; stewards all of them);
    registrations elsewhere only counted: where a person is registered is itself sensitive."""
    if access.Permission.empi_steward in access.permissions_of(identity):
        return Holdings(identifiers(session, person_id), 0)
    rows = session.execute(
        select(Institution.code, PersonRecord.tenant_code, PersonRecord.local_id, PersonRecord.institution_id,
               PersonRecord.patient_id)
        .join(Institution, Institution.id == PersonRecord.institution_id)
        .where(PersonRecord.person_id == person_id)
        .order_by(Institution.code, PersonRecord.local_id)
    ).all()
    shown = [{"institution_code": code, "tenant_code": tenant, "local_id": local}
             for code, tenant, local, institution_id, patient_id in rows
             if access.patient_basis(session, identity, access.PatientRecordRef(
                 tenant, patient_id or "", institution_id, person_id), False) is not None]
    return Holdings(shown, len(rows) - len(shown))


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


def _identified(candidate: Candidate) -> str | None:
    """A query of few fields (a phone alone) cannot outweigh the prior, yet an exact resident ID or phone with
    nothing asked disagreeing is worth showing: possible (a phone is shared in a family), never more."""
    levels = candidate.levels
    if any(levels.get(name) == "exact" for name in IDENTIFYING) and "disagree" not in levels.values():
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
        match_grade = grade(candidate.weight, candidate.veto, thresholds) or _identified(candidate)
        if match_grade is None or (only_certain and match_grade != "certain"):
            continue
        if person_id not in best or best[person_id].weight < candidate.weight:
            best[person_id] = PersonMatch(person_id, candidate.weight, probability(candidate.weight), match_grade)
    return sorted(best.values(), key=lambda m: m.weight, reverse=True)[:count]


def person(session: Session, person_id: str) -> MasterPerson | None:
    """A master person by id (merged ones included, they point at their survivor)."""
    return session.get(MasterPerson, person_id)


def purpose(identity: Identity) -> str:
    """Why a query looked persons up, for the audit: a steward's is stewardship, a clinician's treatment."""
    if access.Permission.patient_read in access.permissions_of(identity):
        return "treatment"
    return "stewardship"


def query_aad(request_id: str, action: str) -> str:
    """The sealed values of a PDQ or $match belong to the audit event of that request and action, nowhere else."""
    return f"audit_events.detail|{request_id}|{action}"


def audit_detail(ring: KeyRing, request_id: str, action: str, query: dict[str, Any], matches: list[PersonMatch],
                 shown: set[str]) -> str:
    """An audit event's record of a demographic query: the fields asked in clear, their values sealed (they are
    identifiers), the persons shown and the persons only counted, by master person id."""
    asked = {name: str(value) for name, value in query.items() if value}
    sealed = ring.encrypt(json.dumps(asked, ensure_ascii=False, sort_keys=True), query_aad(request_id, action))
    return (f"fields={','.join(sorted(asked))} results={len(matches)} "
            f"shown={','.join(m.person_id for m in matches if m.person_id in shown)} "
            f"counted={','.join(m.person_id for m in matches if m.person_id not in shown)} query={sealed}")


def open_query(ring: KeyRing, request_id: str, action: str, detail: str) -> dict[str, str]:
    """The values a PDQ or $match asked, from its audit event (for an investigation, by whoever holds the ring)."""
    return json.loads(ring.decrypt(detail.rpartition(" query=")[2], query_aad(request_id, action)))
