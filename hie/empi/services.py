"""Registration of local records: normalise, find candidates by blind blocking keys, score, link or queue."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Integer, Select, String, bindparam, column, delete, func, select, text
from sqlalchemy.orm import Session

from hie.empi import features, stewardship
from hie.empi.index import (
    ids_conflict,
    local_cache_key,
    record_aad,
    refused_persons,
    resident_ids,
    survivor,
    unseal_normalized,
)
from hie.empi.matching import (
    VETO_DIFFERENT_IDS,
    ModelWeights,
    Outcome,
    Thresholds,
    blocking_keys,
    classify,
    default_model,
    resident_id,
    score,
)
from hie.empi.models import (
    BlockingKey,
    MasterPerson,
    MatchModel,
    PersonEvent,
    PersonRecord,
    PersonStatus,
    RegionThresholds,
    ReviewItem,
)
from hie.empi.normalize import NormalizedRecord, normalize_record
from hie.platform.cache import Cache
from hie.platform.crypto import KeyRing
from hie.platform.db import new_id, utcnow
from hie.platform.jobs.services import PLATFORM, emit

MAX_CANDIDATES = 50
# A key held by more records (张伟's name at a million persons) finds no one in particular and would make every
# registration group thousands of rows, so candidate search leaves it out (batch dedupe likewise skips blocks
# above its own, smaller MAX_BLOCK_SIZE, since it compares every pair inside a block).
MAX_BLOCK = 500
DEMOGRAPHIC_FIELDS = ("name", "family_name", "given_name", "sex", "birth_date", "id_type", "id_number", "phone",
                      "address")
_MODEL_TTL = 60.0
_model_cache: dict[str, tuple[ModelWeights, float]] = {}


@dataclass(frozen=True)
class Registration:
    """What a registering institution gets back."""

    record: PersonRecord
    person_id: str
    outcome: str
    weight: float | None
    changed: bool


@dataclass(frozen=True)
class Candidate:
    """An existing record scored against the incoming one; person_id is the master person holding it now."""

    record_id: str
    person_id: str
    weight: float
    levels: dict[str, str]
    veto: str | None
    normalized: NormalizedRecord


def current_model(session: Session) -> ModelWeights:
    """The newest stored weights (the defaults before any training), re-read at most once a minute."""
    hit = _model_cache.get("model")
    if hit is not None and time.monotonic() - hit[1] < _MODEL_TTL:
        return hit[0]
    row = session.scalar(select(MatchModel).order_by(MatchModel.version.desc()).limit(1))
    model = ModelWeights.from_dict(row.weights) if row is not None else default_model()
    _model_cache["model"] = (model, time.monotonic())
    return model


def forget_cached_model() -> None:
    """After training, use the new weights at once in this process."""
    _model_cache.clear()


def thresholds_for(session: Session, region_code: str | None) -> Thresholds:
    """The region's thresholds, or the engine's defaults."""
    row = session.get(RegionThresholds, region_code) if region_code else None
    return Thresholds(link=row.link, review=row.review) if row is not None else Thresholds()


def clean_demographics(demographics: dict[str, Any]) -> dict[str, str]:
    """The fields the EMPI keeps, as strings; shared with bulk loaders so they store what register() stores."""
    return {k: str(v) for k, v in demographics.items() if k in DEMOGRAPHIC_FIELDS and v not in (None, "")}


def fingerprint_of(ring: KeyRing, raw: dict[str, str]) -> str:
    """Blind hash of the cleaned demographics: the same input twice is recognised without unsealing."""
    return ring.blind_index("empi.fingerprint", json.dumps(raw, sort_keys=True, ensure_ascii=False))


def seal_demographics(ring: KeyRing, record_id: str, raw: dict[str, str], normalized: NormalizedRecord) -> str:
    """Raw and normalised demographics sealed to their record, so candidates need no re-normalising."""
    return ring.encrypt(json.dumps({"raw": raw, "norm": features.to_json(normalized)}, ensure_ascii=False),
                        record_aad(record_id))


@functools.lru_cache(maxsize=64)
def _candidate_rows(key_count: int) -> Select[tuple[str, str, str, str | None]]:
    """Records sharing most of the keys :k0, :k1 ... held by at most :block records, with their person's merge."""
    # Each key's records are counted no further than :cap index entries, so the check costs the same at any
    # index size. Plain rows, no ORM objects: candidates are unsealed and scored, only the best is used further.
    sizes = text(" UNION ALL ".join(
        f"SELECT :k{i} AS key_hash, COUNT(*) AS n FROM "
        f"(SELECT 1 FROM empi_blocking_keys WHERE key_hash = :k{i} LIMIT :cap) AS b{i}"
        for i in range(key_count))).columns(column("key_hash", String), column("n", Integer)).subquery("sizes")
    shared = (
        select(BlockingKey.record_id, func.count().label("shared"))
        .where(BlockingKey.key_hash.in_(select(sizes.c.key_hash).where(sizes.c.n <= bindparam("block"))))
        .group_by(BlockingKey.record_id)
        .order_by(func.count().desc())
        .limit(MAX_CANDIDATES + 1)
        .subquery()
    )
    return (select(PersonRecord.id, PersonRecord.person_id, PersonRecord.demographics_enc, MasterPerson.merged_into)
            .join(shared, shared.c.record_id == PersonRecord.id)
            .join(MasterPerson, MasterPerson.id == PersonRecord.person_id))


def key_hashes(ring: KeyRing, normalized: NormalizedRecord) -> list[str]:
    """Blind indexes of the blocking keys: the index tables never hold a plaintext identifier."""
    return sorted({ring.blind_index("empi.block", key) for key in blocking_keys(normalized)})


def find_candidates(session: Session, ring: KeyRing, normalized: NormalizedRecord, hashes: list[str],
                    model: ModelWeights, exclude: str | None = None) -> list[Candidate]:
    """Existing records sharing most selective blocking keys (none held by over MAX_BLOCK records), best first."""
    if not hashes:
        return []
    params: dict[str, Any] = {f"k{i}": key for i, key in enumerate(hashes)}
    rows = session.execute(_candidate_rows(len(hashes)), {**params, "cap": MAX_BLOCK + 1, "block": MAX_BLOCK})
    scored = []
    for record_id, person_id, sealed, merged_into in rows:
        if record_id == exclude:
            continue
        other = unseal_normalized(ring, record_id, sealed)
        result = score(normalized, other, model)
        holder = person_id if merged_into is None else survivor(session, person_id)
        scored.append(Candidate(record_id, holder, result.weight, result.levels, result.veto, other))
    return sorted(scored, key=lambda c: c.weight, reverse=True)


def _new_person(session: Session) -> MasterPerson:
    person = MasterPerson(id=new_id(), status=PersonStatus.active, created_at=utcnow(), updated_at=utcnow())
    session.add(person)
    return person


def _add_keys(session: Session, record_id: str, hashes: list[str]) -> None:
    """A new record has no keys yet, so it needs no delete first."""
    session.add_all(BlockingKey(key_hash=h, record_id=record_id) for h in hashes)


def store_keys(session: Session, record_id: str, hashes: list[str]) -> None:
    """Replace a record's blind blocking keys."""
    session.execute(delete(BlockingKey).where(BlockingKey.record_id == record_id))
    _add_keys(session, record_id, hashes)


def decide(session: Session, ring: KeyRing, person_id: str | None, own_ids: set[str], candidates: list[Candidate],
           thresholds: Thresholds) -> tuple[Outcome, Candidate | None]:
    """The best candidate of another person decides; refused persons are skipped, two valid IDs are only reviewed."""
    refused = refused_persons(session, person_id) if person_id else set()
    for candidate in candidates:
        other = candidate.person_id
        if other == person_id or other in refused:
            continue
        outcome = classify(candidate.weight, thresholds, candidate.veto)
        if outcome is Outcome.AUTO_LINK and own_ids:
            known = {c.record_id: c.normalized for c in candidates}
            if ids_conflict(own_ids, resident_ids(session, ring, [other], known)[other]):
                return Outcome.REVIEW, replace(candidate, veto=VETO_DIFFERENT_IDS)
        return outcome, candidate
    return Outcome.NEW_PERSON, None


def _add_review(session: Session, record_id: str, best: Candidate) -> None:
    """Put a possible match before a steward; a record created in this transaction can have no review yet."""
    session.add(ReviewItem(record_id=record_id, candidate_id=best.record_id, weight=best.weight,
                           levels=best.levels, veto=best.veto, created_at=utcnow()))


def queue_review(session: Session, record_id: str, best: Candidate) -> bool:
    """Put a possible match before a steward unless the pair was already put there; True when queued."""
    known = session.scalar(select(ReviewItem.id).where(
        ((ReviewItem.record_id == record_id) & (ReviewItem.candidate_id == best.record_id))
        | ((ReviewItem.record_id == best.record_id) & (ReviewItem.candidate_id == record_id))).limit(1))
    if known is not None:
        return False
    _add_review(session, record_id, best)
    return True


def rematch(session: Session, ring: KeyRing, cache: Cache, record: PersonRecord, normalized: NormalizedRecord,
            hashes: list[str], thresholds: Thresholds, *, whole_person: bool, user_id: int | None = None,
            reason: str = "rebuild_link") -> tuple[Outcome, bool]:
    """Match an indexed record against other persons: link (a steward can unmerge) or queue for review.

    Returns the outcome and whether it changed anything: a pair already before a steward is still REVIEW,
    but nothing new was queued.
    """
    own = survivor(session, record.person_id)
    candidates = find_candidates(session, ring, normalized, hashes, current_model(session), exclude=record.id)
    own_ids = resident_ids(session, ring, [own], {record.id: normalized})[own]
    outcome, best = decide(session, ring, own, own_ids, candidates, thresholds)
    if best is None or outcome is Outcome.NEW_PERSON:
        return Outcome.NEW_PERSON, False
    alone = session.scalar(select(func.count()).where(PersonRecord.person_id == own)) == 1
    if outcome is Outcome.AUTO_LINK and (whole_person or alone):
        stewardship.merge(session, ring, cache, own, best.person_id, user_id, reason)
        return Outcome.AUTO_LINK, True
    return Outcome.REVIEW, queue_review(session, record.id, best)


def register(
    session: Session, ring: KeyRing, cache: Cache, *, institution_id: int, tenant_code: str, local_id: str,
    demographics: dict[str, Any], region_code: str | None = None, patient_id: str | None = None,
    user_id: int | None = None,
) -> Registration:
    """Register or update a local record and return its master person; the same input twice changes nothing."""
    raw = clean_demographics(demographics)
    fingerprint = fingerprint_of(ring, raw)
    existing = session.scalar(select(PersonRecord).where(PersonRecord.institution_id == institution_id,
                                                         PersonRecord.local_id == local_id))
    if existing is not None and existing.fingerprint == fingerprint:
        return Registration(existing, survivor(session, existing.person_id), "unchanged", existing.match_weight,
                            False)
    normalized = normalize_record({"rec_id": local_id, **raw})
    hashes = key_hashes(ring, normalized)
    record = existing or PersonRecord(id=new_id(), institution_id=institution_id, tenant_code=tenant_code,
                                      local_id=local_id, created_at=utcnow())
    record.patient_id = patient_id or record.patient_id
    record.fingerprint = fingerprint
    record.demographics_enc = seal_demographics(ring, record.id, raw, normalized)
    record.updated_at = utcnow()
    thresholds = thresholds_for(session, region_code)
    if existing is not None:
        store_keys(session, record.id, hashes)
        session.flush()
        outcome, _ = rematch(session, ring, cache, record, normalized, hashes, thresholds, whole_person=False,
                             user_id=user_id, reason="update_link")
        return Registration(record, survivor(session, record.person_id), f"updated_{outcome.value}",
                            record.match_weight, True)
    candidates = find_candidates(session, ring, normalized, hashes, current_model(session))
    own_id = resident_id(normalized)
    outcome, best = decide(session, ring, None, {own_id} if own_id else set(), candidates, thresholds)
    person_id = best.person_id if outcome is Outcome.AUTO_LINK and best is not None else _new_person(session).id
    record.person_id = person_id
    record.match_weight = best.weight if best is not None else None
    session.add(record)
    session.flush()
    _add_keys(session, record.id, hashes)
    if outcome is Outcome.REVIEW and best is not None:
        _add_review(session, record.id, best)
    session.add(PersonEvent(action="link" if outcome is Outcome.AUTO_LINK else "create", person_id=person_id,
                            record_ids=[record.id], detail={"outcome": outcome.value,
                                                            "weight": record.match_weight},
                            user_id=user_id, created_at=utcnow()))
    session.flush()
    emit(session, PLATFORM, "empi.record_linked", {"record_id": record.id, "person_id": person_id,
                                                   "outcome": outcome.value})
    # Not written before commit: a reader that cannot see the new record yet gets None, which is never cached.
    cache.invalidate(local_cache_key(institution_id, local_id))
    return Registration(record, person_id, outcome.value, record.match_weight, True)


def person_of_local(session: Session, cache: Cache, institution_id: int, local_id: str) -> str | None:
    """The master person of a local record: Redis first, then the index."""
    key = local_cache_key(institution_id, local_id)

    def load() -> str | None:
        person_id = session.scalar(select(PersonRecord.person_id).where(
            PersonRecord.institution_id == institution_id, PersonRecord.local_id == local_id))
        return survivor(session, person_id) if person_id else None

    return cache.get_or_load(key, load)


def person_of_patient(session: Session, tenant_code: str, patient_id: str) -> str | None:
    """The master person of a shard's patient record, by the record id the shard gave it."""
    person_id = session.scalar(select(PersonRecord.person_id).where(PersonRecord.patient_id == patient_id,
                                                                    PersonRecord.tenant_code == tenant_code))
    return survivor(session, person_id) if person_id else None
