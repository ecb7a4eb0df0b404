"""Referral slots: what each receiving department takes per day, booked on accept, and where to send a patient."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import current_app
from flask_smorest import abort
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session, utcnow
from hie.referral import services
from hie.referral.models import Direction, Referral, ReferralSlot, ReferralStatus
from hie.tenants.models import Institution, Region, RegionLevel

MAX_CAPACITY = 1000
# A referral in these states holds the slot of its appointment day; cancelling or a no-show gives it back.
HOLDS_SLOT = (ReferralStatus.accepted, ReferralStatus.arrived, ReferralStatus.completed)


class SlotError(ValueError):
    """A slot that cannot be published as asked; the message says why."""


@dataclass(frozen=True)
class Suggestion:
    """A receiver the sender could refer to, and why it ranks where it does."""

    institution: Institution
    county: str | None
    city: str | None
    same_county: bool
    same_city: bool
    free: int


def local_day(moment: datetime) -> date:
    """The calendar day of a moment where the region lives (HIE_TIMEZONE): slots are per local day."""
    return moment.astimezone(ZoneInfo(current_app.config["HIE"].timezone)).date()


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    zone = ZoneInfo(current_app.config["HIE"].timezone)
    start = datetime.combine(day, time.min, zone)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def _holding(session: Session, institution_id: int, department: str, day: date) -> int:
    """Referrals accepted for that department and day that still hold their place."""
    start, end = _day_bounds(day)
    return session.scalar(select(func.count()).select_from(Referral).where(
        Referral.receiver_institution_id == institution_id, Referral.receiver_department == department,
        Referral.status.in_(HOLDS_SLOT), Referral.appointment_at >= start, Referral.appointment_at < end)) or 0


def publish(session: Session, institution_id: int, department: str, day: date, capacity: int,
            now: datetime | None = None) -> ReferralSlot:
    """Set one department's capacity for a day; a new day counts the referrals already accepted for it."""
    if not 0 <= capacity <= MAX_CAPACITY:
        raise SlotError(f"capacity must be from 0 to {MAX_CAPACITY}, got {capacity}")
    slot = session.get(ReferralSlot, (institution_id, department, day))
    if slot is None:
        slot = ReferralSlot(institution_id=institution_id, department=department, day=day, capacity=capacity,
                            booked=_holding(session, institution_id, department, day))
        session.add(slot)
    if capacity < slot.booked:
        raise SlotError(f"capacity {capacity} on {day.isoformat()} is below the {slot.booked} referrals "
                        f"already accepted for that day")
    slot.capacity, slot.updated_at = capacity, now or utcnow()
    return slot


def book(referral: Referral) -> bool:
    """Take one slot of the appointment day in one conditional UPDATE, so concurrent accepts cannot overbook.

    False if the department publishes no slots for that day (accepted without booking); 409 if they are all taken.
    """
    if referral.receiver_department is None or referral.appointment_at is None:
        return False
    session = platform_session()
    day = local_day(referral.appointment_at)
    key = (ReferralSlot.institution_id == referral.receiver_institution_id,
           ReferralSlot.department == referral.receiver_department, ReferralSlot.day == day)
    taken = session.execute(update(ReferralSlot).where(*key, ReferralSlot.booked < ReferralSlot.capacity)
                            .values(booked=ReferralSlot.booked + 1).execution_options(synchronize_session=False))
    if taken.rowcount == 1:
        return True
    full = session.execute(select(ReferralSlot.capacity, ReferralSlot.booked).where(*key)).first()
    if full is None:
        return False
    audit.record("update", "failure", resource_type=services.RESOURCE, resource_id=referral.id,
                 patient=audit.patient_ref(referral.sender_tenant_code, referral.sender_patient_id),
                 detail=f"accept refused: no free slot on {day.isoformat()}")
    abort(409, message=f"No free referral slot in {referral.receiver_department} on {day.isoformat()}: "
                       f"{full.booked} of {full.capacity} booked. Choose another day.")


def release(referral: Referral) -> None:
    """Give back the slot an accepted referral held (cancelled or no-show); a day without slots has none."""
    if referral.receiver_department is None or referral.appointment_at is None:
        return
    platform_session().execute(update(ReferralSlot).where(
        ReferralSlot.institution_id == referral.receiver_institution_id,
        ReferralSlot.department == referral.receiver_department,
        ReferralSlot.day == local_day(referral.appointment_at), ReferralSlot.booked > 0,
    ).values(booked=ReferralSlot.booked - 1).execution_options(synchronize_session=False))


def free_slots(session: Session, institution_id: int | None, department: str | None, start: date,
               end: date) -> list[tuple[ReferralSlot, str, str]]:
    """Published slots in [start, end] with their institution's code and name, by institution, department, day."""
    query = (select(ReferralSlot, Institution.code, Institution.name)
             .join(Institution, Institution.id == ReferralSlot.institution_id)
             .where(ReferralSlot.day >= start, ReferralSlot.day <= end, Institution.active.is_(True)))
    if institution_id is not None:
        query = query.where(ReferralSlot.institution_id == institution_id)
    if department is not None:
        query = query.where(ReferralSlot.department == department)
    rows = session.execute(query.order_by(Institution.code, ReferralSlot.department, ReferralSlot.day))
    return [(slot, code, name) for slot, code, name in rows]


def _places(session: Session) -> dict[str, tuple[RegionLevel, str | None]]:
    return {code: (level, parent) for code, level, parent in
            session.execute(select(Region.code, Region.level, Region.parent_code))}


def county_and_city(places: dict[str, tuple[RegionLevel, str | None]],
                    institution: Institution) -> tuple[str | None, str | None]:
    """The county and city an institution lies in: its own region, else its tenant's, walked up the tree."""
    code = institution.region_code or institution.tenant.region_code
    county = city = None
    for _ in range(len(places) + 1):
        if code is None or code not in places:
            break
        level, parent = places[code]
        county = code if level is RegionLevel.county else county
        city = code if level is RegionLevel.city else city
        code = parent
    return county, city


def suggest(identity: Identity, direction: Direction, department: str, start: date, end: date,
            person_id: str | None) -> list[Suggestion]:
    """Receivers of the right level with slots in the department: same county first, then city, then most free."""
    session = platform_session()
    sender = session.get_one(Institution, identity.institution_id)
    if sender.level not in services.LEVEL_RANK:
        services._invalid("direction", f"cannot be sent from a {sender.level.value}")
    ours = services.LEVEL_RANK[sender.level]
    free = func.sum(ReferralSlot.capacity - ReferralSlot.booked)
    offered = dict(session.execute(
        select(ReferralSlot.institution_id, free).where(ReferralSlot.department == department,
                                                        ReferralSlot.day >= start, ReferralSlot.day <= end)
        .group_by(ReferralSlot.institution_id)).all())
    candidates = session.scalars(select(Institution).where(Institution.id.in_(offered), Institution.active.is_(True),
                                                           Institution.id != sender.id)).all()
    places = _places(session)
    county, city = county_and_city(places, sender)
    found = []
    for institution in candidates:
        theirs = services.LEVEL_RANK.get(institution.level)
        if theirs is None:
            continue
        fits = {Direction.up: theirs > ours, Direction.lateral: theirs == ours,
                Direction.down: theirs < ours or (person_id is not None
                                                  and services._family_doctor_of(session, institution.id,
                                                                                 person_id))}[direction]
        if fits:
            where = county_and_city(places, institution)
            found.append(Suggestion(institution, *where, same_county=county is not None and where[0] == county,
                                    same_city=city is not None and where[1] == city,
                                    free=int(offered[institution.id] or 0)))
    return sorted(found, key=lambda s: (not s.same_county, not s.same_city, -s.free, s.institution.code))
