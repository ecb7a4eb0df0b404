"""Data stewardship: decide possible matches, merge master persons, unmerge with nothing lost."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hie.empi.index import ids_conflict, local_cache_key, resident_ids, survivor
from hie.empi.models import MasterPerson, NotAMatch, PersonEvent, PersonRecord, PersonStatus, ReviewItem, ReviewStatus
from hie.platform.cache import Cache
from hie.platform.crypto import KeyRing
from hie.platform.db import utcnow
from hie.platform.jobs.services import PLATFORM, emit, handles

LINK_ACTIONS = ("merge", "review_link", "rebuild_link", "update_link")


class StewardshipError(ValueError):
    """A stewardship action that cannot be done; the message says why."""


def _records_of(session: Session, person_id: str) -> list[PersonRecord]:
    return list(session.scalars(select(PersonRecord).where(PersonRecord.person_id == person_id)
                                .order_by(PersonRecord.created_at, PersonRecord.id)))


def _forget(cache: Cache, records: list[PersonRecord]) -> None:
    cache.invalidate(*(local_cache_key(r.institution_id, r.local_id) for r in records))


def _active(session: Session, person_id: str) -> MasterPerson:
    person = session.get(MasterPerson, person_id)
    if person is None:
        raise LookupError(person_id)
    if person.status is not PersonStatus.active:
        raise StewardshipError(f"master person {person_id} was merged into {person.merged_into}")
    return person


def _supersede_reviews(session: Session, person_id: str) -> None:
    """Open reviews whose two records now belong to one person need no decision any more."""
    ids = select(PersonRecord.id).where(PersonRecord.person_id == person_id)
    session.execute(update(ReviewItem).where(ReviewItem.status == ReviewStatus.open, ReviewItem.record_id.in_(ids),
                                             ReviewItem.candidate_id.in_(ids))
                    .values(status=ReviewStatus.superseded).execution_options(synchronize_session=False))


def merge(session: Session, ring: KeyRing, cache: Cache, source_id: str, target_id: str, user_id: int | None,
          reason: str = "merge") -> PersonEvent:
    """Move every record of source to target; source stays as a pointer to target."""
    if source_id == target_id:
        raise StewardshipError("a master person cannot be merged into itself")
    source, target = _active(session, source_id), _active(session, target_id)
    ids = resident_ids(session, ring, [source.id, target.id])
    if ids_conflict(ids[source.id], ids[target.id]):
        raise StewardshipError(f"master persons {source.id} and {target.id} hold different valid resident ID "
                               "numbers, so they are different people; nothing was merged")
    records = _records_of(session, source.id)
    session.execute(update(PersonRecord).where(PersonRecord.person_id == source.id).values(person_id=target.id))
    source.status, source.merged_into, source.updated_at = PersonStatus.merged, target.id, utcnow()
    target.updated_at = utcnow()
    event = PersonEvent(action=reason, person_id=target.id, other_person_id=source.id,
                        record_ids=[r.id for r in records], user_id=user_id, created_at=utcnow())
    session.add(event)
    session.flush()
    _supersede_reviews(session, target.id)
    _forget(cache, records)
    session.expire_all()
    emit(session, PLATFORM, "empi.merged", {"source": source.id, "target": target.id,
                                            "record_ids": event.record_ids, "event_id": event.id})
    return event


def unmerge(session: Session, cache: Cache, person_id: str, user_id: int | None) -> PersonEvent:
    """Undo the latest merge of person_id into another: its records go back, exactly as they were."""
    person = session.get(MasterPerson, person_id)
    if person is None:
        raise LookupError(person_id)
    merge_event = session.scalar(
        select(PersonEvent).where(PersonEvent.other_person_id == person_id,
                                  PersonEvent.action.in_(LINK_ACTIONS),
                                  PersonEvent.undone_by.is_(None))
        .order_by(PersonEvent.id.desc()).limit(1)
    )
    if merge_event is None or person.status is not PersonStatus.merged:
        raise StewardshipError(f"master person {person_id} is not merged into anyone")
    if person.merged_into != merge_event.person_id:
        raise StewardshipError("undo the later merges of this person first")
    target = _active(session, merge_event.person_id)
    moved = list(session.scalars(select(PersonRecord).where(PersonRecord.id.in_(merge_event.record_ids),
                                                             PersonRecord.person_id == target.id)))
    for record in moved:
        record.person_id = person.id
    person.status, person.merged_into, person.updated_at = PersonStatus.active, None, utcnow()
    event = PersonEvent(action="unmerge", person_id=person.id, other_person_id=target.id,
                        record_ids=[r.id for r in moved], detail={"undoes": merge_event.id}, user_id=user_id,
                        created_at=utcnow())
    session.add(event)
    session.flush()
    merge_event.undone_by = event.id
    session.flush()
    _forget(cache, moved)
    emit(session, PLATFORM, "empi.unmerged", {"restored": person.id, "from": target.id,
                                              "record_ids": event.record_ids, "event_id": event.id})
    return event


def decide_review(session: Session, ring: KeyRing, cache: Cache, review_id: int, decision: str,
                  user_id: int | None) -> ReviewItem:
    """Link the two records' persons, or remember that they are different people."""
    item = session.get(ReviewItem, review_id)
    if item is None:
        raise LookupError(review_id)
    if item.status is not ReviewStatus.open:
        raise StewardshipError(f"review {review_id} was already decided ({item.status.value})")
    record, candidate = session.get(PersonRecord, item.record_id), session.get(PersonRecord, item.candidate_id)
    assert record is not None and candidate is not None
    if decision == "link":
        source, target = survivor(session, record.person_id), survivor(session, candidate.person_id)
        if source != target:
            merge(session, ring, cache, source, target, user_id, reason="review_link")
        item.status = ReviewStatus.linked
    else:
        first, second = sorted((record.id, candidate.id))
        if session.get(NotAMatch, (first, second)) is None:
            session.add(NotAMatch(record_a=first, record_b=second, decided_by=user_id, created_at=utcnow()))
        item.status = ReviewStatus.not_a_match
    item.decided_by, item.decided_at = user_id, utcnow()
    session.flush()
    return item


@handles("empi.merged")
@handles("empi.unmerged")
def forget_moved(session: Session, payload: dict) -> None:
    """After commit: a reader between the in-transaction invalidation and the commit may have cached the old person."""
    rows = session.execute(select(PersonRecord.institution_id, PersonRecord.local_id)
                           .where(PersonRecord.id.in_(payload["record_ids"]))).all()
    current_app.extensions["hie.cache"].invalidate(*(local_cache_key(i, local) for i, local in rows))

