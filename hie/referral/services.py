"""Referral use cases: who may send, see and move a referral, the care relationships it opens and ends, the audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from flask import current_app
from flask_smorest import abort
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from hie.empi import services as empi
from hie.empi.index import survivor
from hie.exchange import store
from hie.patients.models import Patient
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.config import ConfigError
from hie.platform.db import new_id, platform_session, shard_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.referral import capacity
from hie.referral.models import Direction, Referral, ReferralDeadline, ReferralStatus, ReferralStep, Urgency
from hie.tenants.models import Institution, InstitutionLevel

RESOURCE = "Referral"
DEFAULT_DEADLINES = {Urgency.emergency: timedelta(minutes=30), Urgency.urgent: timedelta(hours=4),
                     Urgency.routine: timedelta(hours=48)}
DEFAULT_GRACE_DAYS = 30
GRACE_SETTING = "HIE_REFERRAL_GRACE_DAYS"
LEVEL_RANK = {InstitutionLevel.tertiary_hospital: 4, InstitutionLevel.secondary_hospital: 3,
              InstitutionLevel.township_health_centre: 2, InstitutionLevel.community_health_centre: 2,
              InstitutionLevel.village_clinic: 1}
SENDER, RECEIVER = "sending", "receiving"
# action -> (which side moves it, the states it moves from, the state it moves to)
TRANSITIONS: dict[str, tuple[str, tuple[ReferralStatus, ...], ReferralStatus]] = {
    "accept": (RECEIVER, (ReferralStatus.requested,), ReferralStatus.accepted),
    "decline": (RECEIVER, (ReferralStatus.requested,), ReferralStatus.declined),
    "arrive": (RECEIVER, (ReferralStatus.accepted,), ReferralStatus.arrived),
    "complete": (RECEIVER, (ReferralStatus.arrived,), ReferralStatus.completed),
    "cancel": (SENDER, (ReferralStatus.requested, ReferralStatus.accepted), ReferralStatus.cancelled),
    "no-show": (RECEIVER, (ReferralStatus.accepted,), ReferralStatus.no_show),
}


def grace_period(extra: dict[str, str]) -> timedelta:
    """How long the receiver keeps reading after completion, so it can finish its records (HIE_REFERRAL_GRACE_DAYS)."""
    raw = extra.get(GRACE_SETTING) or str(DEFAULT_GRACE_DAYS)
    if not raw.isascii() or not raw.isdigit() or int(raw) > 365:
        raise ConfigError(f"{GRACE_SETTING} must be a whole number of days from 0 to 365, got {raw!r}")
    return timedelta(days=int(raw))


def deadline(session: Session, tenant_id: int, urgency: Urgency) -> timedelta:
    """The receiving tenant's answer deadline for this urgency, or the default."""
    minutes = session.scalar(select(ReferralDeadline.minutes).where(ReferralDeadline.tenant_id == tenant_id,
                                                                    ReferralDeadline.urgency == urgency))
    return timedelta(minutes=minutes) if minutes else DEFAULT_DEADLINES[urgency]


def source_ref(referral: Referral) -> str:
    """How a care relationship names the referral that opened it."""
    return f"referral/{referral.id}"


def _patient_ref(referral: Referral) -> str:
    return audit.patient_ref(referral.sender_tenant_code, referral.sender_patient_id)


def _invalid(field: str, message: str) -> NoReturn:
    abort(422, message=f"{field} {message}.", errors={"json": {field: [message]}})


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _own_patient(identity: Identity, patient_id: str, field: str, action: str) -> str:
    """The master person of a patient record of the caller's own institution, else 422 naming the field (audited)."""
    patient = shard_session(identity.tenant_code).get(Patient, patient_id) if len(patient_id) <= 36 else None
    person = None
    if patient is not None and patient.institution_id == identity.institution_id:
        person = empi.person_of_patient(platform_session(), identity.tenant_code, patient.id)
    if person is None:
        audit.record(action, "not_found" if patient is None else "denied", resource_type="Patient",
                     resource_id=patient_id[:80], patient=audit.patient_ref(identity.tenant_code, patient_id)[:80],
                     detail=f"referral {field}")
        _invalid(field, "is not an EMPI-linked patient record of your institution")
    return person


def _family_doctor_of(session: Session, institution_id: int, person_id: str) -> bool:
    """Whether the institution's family-doctor team holds a contract with the person right now."""
    query = care.active_persons(institution_id).where(care.CareRelationship.master_person_id == person_id,
                                                      care.CareRelationship.kind == care.CareKind.contract)
    return session.scalar(query.limit(1)) is not None


def _receiver(session: Session, code: str, field: str) -> Institution:
    institution = session.scalar(select(Institution).where(Institution.code == code))
    if institution is None or not institution.active or institution.level not in LEVEL_RANK:
        _invalid(field, f"{code!r} is not an institution that receives referrals")
    return institution


def _check_direction(session: Session, direction: Direction, sender: Institution, receiver: Institution,
                     person_id: str, prefix: str) -> None:
    """Up goes to a higher level, down to a lower one or the family-doctor team, lateral to the same level."""
    if receiver.id == sender.id:
        _invalid(_field(prefix, "receiving_institution"), "is your own institution")
    if sender.level not in LEVEL_RANK:
        _invalid(_field(prefix, "direction"), f"cannot be sent from a {sender.level.value}")
    ours, theirs = LEVEL_RANK[sender.level], LEVEL_RANK[receiver.level]
    fits = {Direction.up: theirs > ours, Direction.lateral: theirs == ours,
            Direction.down: theirs < ours or _family_doctor_of(session, receiver.id, person_id)}[direction]
    if not fits:
        _invalid(_field(prefix, "direction"), f"{direction.value} does not lead from a {sender.level.value} "
                 f"to a {receiver.level.value}")


def _check_records(identity: Identity, records: list[str], person_id: str, prefix: str) -> None:
    """Each record sent along must be one of this person's records the sender may see."""
    field = _field(prefix, "records")
    bad = store.first_refused_record(identity, records, person_id, f"referral {field}")
    if bad is not None:
        _invalid(f"{field}[{bad}]", "is not a record of this patient that you may see")


def _step(identity: Identity, referral: Referral, target: ReferralStatus, now: datetime, note: str | None) -> None:
    """Record the move as a row, an audit event naming the patient, and an outbox event that notifies the other side."""
    previous = referral.status if referral.id and referral.status else None
    platform_session().add(ReferralStep(
        referral_id=referral.id, from_status=previous, to_status=target, user_id=identity.user_id,
        username=identity.username, role=identity.role_label[:200], institution_id=identity.institution_id,
        at=now, note=note))
    referral.status, referral.updated_at = target, now
    emit(platform_session(), PLATFORM, f"referral.{target.value}",
         {"referral_id": referral.id, "status": target.value, "institution_id": identity.institution_id})
    audit.record("create" if previous is None else "update", resource_type=RESOURCE, resource_id=referral.id,
                 patient=_patient_ref(referral), purpose="treatment",
                 detail=f"referral {previous.value if previous else 'new'} -> {target.value}")


def create(identity: Identity, body: dict[str, Any], now: datetime | None = None, prefix: str = "",
           follow_up_of: Referral | None = None) -> Referral:
    """Refer a patient of the caller's institution; opens care relationships for the receiver and the sender."""
    now = now or utcnow()
    session = platform_session()
    person_id = _own_patient(identity, body["patient_id"], prefix or "patient_id", "create")
    sender = session.get_one(Institution, identity.institution_id)
    receiver = _receiver(session, body["receiving_institution"], _field(prefix, "receiving_institution"))
    if follow_up_of is not None and receiver.id != follow_up_of.sender_institution_id \
            and not _family_doctor_of(session, receiver.id, person_id):
        _invalid(_field(prefix, "receiving_institution"), "must be the referring institution or the patient's "
                 "family-doctor team")
    _check_direction(session, body["direction"], sender, receiver, person_id, prefix)
    _check_records(identity, body["records"], person_id, prefix)
    referral = Referral(
        id=new_id(), direction=body["direction"], urgency=body["urgency"], sender_institution_id=sender.id,
        sender_tenant_code=identity.tenant_code, sender_patient_id=body["patient_id"], master_person_id=person_id,
        receiver_institution_id=receiver.id, receiver_department=body.get("department"), reason=body["reason"],
        diagnoses=[{"code": d["code"], "text": d["text"]} for d in body["diagnoses"]],
        clinical_summary=body.get("clinical_summary"), records=list(body["records"]),
        follow_up_of=follow_up_of.id if follow_up_of else None, requested_by=identity.user_id, created_at=now,
        updated_at=now, due_at=now + deadline(session, receiver.tenant_id, body["urgency"]))
    session.add(referral)
    _step(identity, referral, ReferralStatus.requested, now, None)
    session.flush()
    for institution_id in (receiver.id, sender.id):
        care.grant(session, institution_id, person_id, care.CareKind.referral, source_ref=source_ref(referral))
    return referral


def _visible(identity: Identity, referral_id: str, action: str, lock: bool = False) -> Referral:
    """The referral if the caller's institution sends or receives it; otherwise 404, audited."""
    session = platform_session()
    referral = None
    if len(referral_id) <= 36:
        query = select(Referral).where(Referral.id == referral_id)
        referral = session.scalar(query.with_for_update() if lock else query)
    clinical = access.Permission.patient_read in access.permissions_of(identity)
    if referral is None or not clinical or identity.institution_id not in (referral.sender_institution_id,
                                                                           referral.receiver_institution_id):
        audit.record(action, "denied" if referral is not None else "not_found", resource_type=RESOURCE,
                     resource_id=referral_id[:80], patient=_patient_ref(referral) if referral else None)
        abort(404, message="No such referral.")
    return referral


def get_visible(identity: Identity, referral_id: str) -> Referral:
    """A referral the caller's institution sends or receives, its reading audited; 404 for any other id."""
    referral = _visible(identity, referral_id, "read")
    audit.record("read", resource_type=RESOURCE, resource_id=referral.id, patient=_patient_ref(referral),
                 purpose="treatment")
    return referral


def begin_move(identity: Identity, referral_id: str, action: str) -> Referral:
    """The referral locked for a move: 404 if not visible, 403 if the other side's move, 409 from a wrong state."""
    referral = _visible(identity, referral_id, "update", lock=True)
    side, sources, target = TRANSITIONS[action]
    mover = referral.receiver_institution_id if side == RECEIVER else referral.sender_institution_id
    if identity.institution_id != mover:
        audit.record("update", "denied", resource_type=RESOURCE, resource_id=referral.id,
                     patient=_patient_ref(referral), detail=f"{action}: only the {side} institution may")
        abort(403, message=f"Only the {side} institution may {action} this referral.")
    if referral.status not in sources:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=referral.id,
                     patient=_patient_ref(referral), detail=f"{action} refused: referral is {referral.status.value}")
        abort(409, message=f"The referral is {referral.status.value}; {action} is possible only when it is "
                           f"{' or '.join(s.value for s in sources)}.")
    return referral


def end_care(referral: Referral, when: datetime) -> None:
    """End the relationships the referral opened (at once, or at the end of a grace period)."""
    session = platform_session()
    rows = session.scalars(select(care.CareRelationship).where(
        care.CareRelationship.source_ref == source_ref(referral),
        or_(care.CareRelationship.ends_at.is_(None), care.CareRelationship.ends_at > when)))
    for relationship in rows.all():
        care.end(session, relationship, when)


def accept(identity: Identity, referral_id: str, body: dict[str, Any], now: datetime | None = None) -> Referral:
    """The receiver takes the patient and says when to come."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "accept")
    if body["appointment_at"] < referral.created_at:
        _invalid("appointment_at", "must not be before the referral was made")
    referral.appointment_at, referral.answered_at = body["appointment_at"].astimezone(UTC), now
    capacity.book(referral)
    _step(identity, referral, ReferralStatus.accepted, now, body.get("note"))
    return referral


def decline(identity: Identity, referral_id: str, body: dict[str, Any], now: datetime | None = None) -> Referral:
    """The receiver refuses, saying why; its care relationship and the sender's end at once."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "decline")
    referral.answered_at = now
    _step(identity, referral, ReferralStatus.declined, now, body["reason"].strip())
    end_care(referral, now)
    return referral


def cancel(identity: Identity, referral_id: str, body: dict[str, Any], now: datetime | None = None) -> Referral:
    """The sender withdraws the referral before the patient arrives; the relationships end at once."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "cancel")
    if referral.status is ReferralStatus.accepted:
        capacity.release(referral)
    _step(identity, referral, ReferralStatus.cancelled, now, body.get("reason"))
    end_care(referral, now)
    return referral


def no_show(identity: Identity, referral_id: str, body: dict[str, Any], now: datetime | None = None) -> Referral:
    """The patient did not come to the appointment; the relationships end at once."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "no-show")
    capacity.release(referral)
    _step(identity, referral, ReferralStatus.no_show, now, body.get("reason"))
    end_care(referral, now)
    return referral


def arrive(identity: Identity, referral_id: str, body: dict[str, Any], now: datetime | None = None) -> Referral:
    """The patient is here: the receiver names its own record of the same master person."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "arrive")
    person_id = _own_patient(identity, body["patient_id"], "patient_id", "update")
    if person_id != survivor(platform_session(), referral.master_person_id):
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=referral.id,
                     patient=_patient_ref(referral), detail="arrive: patient_id is another person")
        _invalid("patient_id", "is linked in the EMPI to another person than the referred patient")
    referral.receiver_patient_id = body["patient_id"]
    _step(identity, referral, ReferralStatus.arrived, now, None)
    return referral


def complete(identity: Identity, referral_id: str, body: dict[str, Any],
             now: datetime | None = None) -> tuple[Referral, Referral | None]:
    """Discharge with a summary (and, after an upward referral, optionally refer back down in the same request)."""
    now = now or utcnow()
    referral = begin_move(identity, referral_id, "complete")
    back = None
    if body.get("back_referral") is not None:
        if referral.direction is not Direction.up:
            _invalid("back_referral", "can follow only an upward referral")
        values = {**body["back_referral"], "patient_id": referral.receiver_patient_id, "direction": Direction.down}
        back = create(identity, values, now, prefix="back_referral", follow_up_of=referral)
    referral.discharge_summary = body["discharge_summary"]
    _step(identity, referral, ReferralStatus.completed, now, None)
    end_care(referral, now + grace_period(current_app.config["HIE"].extra))
    return referral, back


def box_query(identity: Identity, filters: dict[str, Any]) -> Select[tuple[Referral]]:
    """The caller's institution's incoming or outgoing referrals matching the filters."""
    column = Referral.receiver_institution_id if filters.get("box", "incoming") == "incoming" \
        else Referral.sender_institution_id
    query = select(Referral).where(column == identity.institution_id)
    if filters.get("status") is not None:
        query = query.where(Referral.status == filters["status"])
    if filters.get("urgency") is not None:
        query = query.where(Referral.urgency == filters["urgency"])
    if filters.get("since") is not None:
        query = query.where(Referral.created_at >= filters["since"])
    if filters.get("until") is not None:
        query = query.where(Referral.created_at < filters["until"])
    return query


def search(identity: Identity, filters: dict[str, Any], offset: int, limit: int) -> tuple[list[Referral], int]:
    """One page of the inbox or outbox, newest first; total counts the whole box."""
    session = platform_session()
    query = box_query(identity, filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(Referral.created_at.desc(), Referral.id.desc())
                                .offset(offset).limit(limit)))
    asked = ",".join(f"{k}={v}" for k, v in sorted(filters.items()))
    audit.record("search", resource_type=RESOURCE, purpose="treatment", detail=f"{asked} results={len(rows)}")
    for referral in rows:
        audit.record("read", resource_type=RESOURCE, resource_id=referral.id, patient=_patient_ref(referral),
                     purpose="treatment")
    return rows, total


def unanswered(identity: Identity, now: datetime | None = None) -> dict[str, int]:
    """Incoming referrals still waiting for an answer, and how many of those are past their deadline."""
    now = now or utcnow()
    base = select(func.count()).select_from(Referral).where(
        Referral.receiver_institution_id == identity.institution_id, Referral.status == ReferralStatus.requested)
    session = platform_session()
    return {"unanswered": session.scalar(base) or 0,
            "overdue": session.scalar(base.where(Referral.due_at < now)) or 0}


def overdue(session: Session, now: datetime | None = None, institution_id: int | None = None) -> list[Referral]:
    """Referrals still unanswered past their deadline, most overdue first (the CLI and the reminder job read this)."""
    query = select(Referral).where(Referral.status == ReferralStatus.requested, Referral.due_at < (now or utcnow()))
    if institution_id is not None:
        query = query.where(Referral.receiver_institution_id == institution_id)
    return list(session.scalars(query.order_by(Referral.due_at, Referral.id)))


def is_overdue(referral: Referral, now: datetime | None = None) -> bool:
    """Unanswered past its deadline."""
    return referral.status is ReferralStatus.requested and referral.due_at < (now or utcnow())
