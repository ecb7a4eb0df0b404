"""Chronic-disease follow-ups (National Basic Public Health Service Specification, 3rd ed.): scheduling them from a
contract's packages, recording a visit with its form and classification, scheduling the next one by the verdict,
and proposing a referral when the verdict asks for one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask_smorest import abort
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hie.exchange.resources import local_zone
from hie.family_doctor import rules
from hie.family_doctor.models import (
    Alert,
    Classification,
    Condition,
    Contract,
    ContractStatus,
    FollowUp,
    FollowUpStatus,
    Team,
)
from hie.family_doctor.services import (
    conditions_of,
    contract_ref,
    invalid,
    membership,
    require_member,
    team_identity,
)
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import new_id, platform_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.platform.modules import installed

RESOURCE = "FollowUp"
FIRST_VISIT = timedelta(days=14)
FUTURE_SLACK = timedelta(minutes=5)  # a device clock a little ahead is not a visit in the future
REFERRAL_MODULE = "hie.referral"
SUGGESTION_DAYS = 14
# What an upward referral from a follow-up says: the diagnosis (ICD-10) and the department that receives it.
DIAGNOSES = {Condition.hypertension: {"code": "I10", "text": "原发性高血压"},
             Condition.diabetes: {"code": "E11.9", "text": "2型糖尿病"}}
DEPARTMENTS = {Condition.hypertension: "心内科", Condition.diabetes: "内分泌科"}
ALERT_KINDS = {"urgent": "urgent_referral", "recommended": "referral_recommended"}
SETTINGS = {"clinic": "clinic", "home": "home_visit", "phone": "self_device"}
VITAL_FIELDS = ("systolic", "diastolic", "heart_rate", "fasting_glucose", "random_glucose", "weight", "height",
                "waist", "spo2", "temperature")


def _scheduled(contract_id: str, condition: Condition) -> FollowUp | None:
    return platform_session().scalar(select(FollowUp).where(
        FollowUp.contract_id == contract_id, FollowUp.condition == condition,
        FollowUp.status == FollowUpStatus.scheduled).order_by(FollowUp.due_on).limit(1))


def schedule_contract(session: Session, contract: Contract, today: date) -> list[FollowUp]:
    """The first follow-up of each chronic condition the contract's packages cover, due within two weeks; a renewal
    or transfer keeps the date its previous contract had scheduled, so the schedule runs on rather than restarting."""
    carried: dict[Condition, date] = {}
    if contract.previous_id is not None:
        session.execute(update(Alert).where(Alert.contract_id == contract.previous_id, Alert.resolved_at.is_(None),
                                            Alert.team_id == contract.team_id).values(contract_id=contract.id))
        for condition, due_on in session.execute(select(FollowUp.condition, FollowUp.due_on).where(
                FollowUp.contract_id == contract.previous_id, FollowUp.status == FollowUpStatus.cancelled,
                FollowUp.done_at.is_(None))):
            carried[condition] = due_on
    scheduled = [FollowUp(id=new_id(), contract_id=contract.id, team_id=contract.team_id,
                          institution_id=contract.institution_id, master_person_id=contract.master_person_id,
                          condition=Condition(condition), status=FollowUpStatus.scheduled,
                          due_on=carried.get(Condition(condition), today + FIRST_VISIT))
                 for condition in conditions_of(contract.packages)]
    session.add_all(scheduled)
    return scheduled


def cancel_contract(session: Session, contract: Contract) -> None:
    """A contract that ends drops the follow-ups it still had scheduled and closes its open alerts: the team no
    longer cares for the person, so nothing of theirs stays on its worklist."""
    session.execute(update(FollowUp).where(FollowUp.contract_id == contract.id,
                                           FollowUp.status == FollowUpStatus.scheduled)
                    .values(status=FollowUpStatus.cancelled))
    if contract.status is not ContractStatus.renewed:  # a renewal's open alerts move to the new contract
        session.execute(update(Alert).where(Alert.contract_id == contract.id, Alert.resolved_at.is_(None))
                        .values(resolved_at=utcnow(), resolution=f"contract {contract.status.value}"))


def visible(identity: Identity, follow_up_id: str, action: str = "read") -> tuple[FollowUp, Contract]:
    """A follow-up of the caller's team, or of their institution for its staff, with its contract; else 404, audited."""
    session = platform_session()
    follow_up = session.get(FollowUp, follow_up_id) if len(follow_up_id) <= 36 else None
    contract = session.get(Contract, follow_up.contract_id) if follow_up is not None else None
    found = membership(session, identity.user_id)
    clinical = access.Permission.patient_read in access.permissions_of(identity)
    ours = follow_up is not None and clinical and (
        (found is not None and found[0].id == follow_up.team_id) or identity.institution_id == follow_up.institution_id)
    if not ours or contract is None:
        audit.record(action, "denied" if follow_up is not None else "not_found", resource_type=RESOURCE,
                     resource_id=follow_up_id[:80], patient=contract_ref(contract) if contract else None)
        abort(404, message="No such follow-up.")
    return follow_up, contract  # type: ignore[return-value]


def read(identity: Identity, follow_up_id: str) -> tuple[FollowUp, Contract]:
    """One follow-up, its reading audited with the patient."""
    follow_up, contract = visible(identity, follow_up_id)
    audit.record("read", resource_type=RESOURCE, resource_id=follow_up.id, patient=contract_ref(contract),
                 purpose="treatment")
    return follow_up, contract


def of_contract(identity: Identity, contract_id: str, offset: int, limit: int) -> tuple[list[FollowUp], int]:
    """One page of a contract's follow-ups, the next due first, then the visits newest first; audited."""
    from hie.family_doctor.services import visible_contract

    contract = visible_contract(identity, contract_id)
    session = platform_session()
    query = select(FollowUp).where(FollowUp.contract_id == contract.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(
        (FollowUp.status == FollowUpStatus.scheduled).desc(), FollowUp.due_on.desc(), FollowUp.id)
        .offset(offset).limit(limit)))
    audit.record("search", resource_type=RESOURCE, patient=contract_ref(contract), purpose="treatment",
                 detail=f"follow-ups of contract {contract.id} results={len(rows)}")
    return rows, total


def _our_contract(identity: Identity, team: Team, contract_id: str) -> Contract:
    """An active contract of the caller's own team, locked; 404 for another team's, 409 for an ended one."""
    session = platform_session()
    contract = session.get(Contract, contract_id, with_for_update=True) if len(contract_id) <= 36 else None
    if contract is None or contract.team_id != team.id:
        audit.record("create", "denied" if contract else "not_found", resource_type="Contract",
                     resource_id=contract_id[:80], patient=contract_ref(contract) if contract else None,
                     detail="follow-up contract_id")
        abort(404, message="No such contract.")
    if contract.status is not ContractStatus.active:
        audit.record("create", "failure", resource_type="Contract", resource_id=contract.id,
                     patient=contract_ref(contract), detail=f"follow-up refused: contract is {contract.status.value}")
        abort(409, message=f"The contract is {contract.status.value}; follow-ups are recorded on active contracts.")
    return contract


def _check_form(form: dict[str, Any], condition: Condition, contract: Contract, now: datetime) -> None:
    """What the schema cannot know: the condition's symptom codes, the visit's time against the contract."""
    known = rules.symptoms(condition)
    for index, code in enumerate(form.get("symptoms") or []):
        if code not in known:
            invalid(f"symptoms[{index}]", f"{code!r} is not a danger symptom of {condition.value} "
                    f"({', '.join(known)})")
    visited_at = form["visited_at"]
    if visited_at > now + FUTURE_SLACK:
        invalid("visited_at", "is in the future")
    began = min(contract.starts_on, contract.signed_at.astimezone(local_zone()).date())  # a renewal starts ahead
    if visited_at.astimezone(local_zone()).date() < began:
        invalid("visited_at", f"is before the contract began ({began.isoformat()})")


def _method(form: dict[str, Any]) -> tuple[str, bool]:
    """How the visit was made and whether it was face to face (a phone call is not)."""
    method, face = form.get("method"), form.get("face_to_face")
    if method is None:
        method = "clinic" if face is None or face else "phone"
    if face is not None and face != (method != "phone"):
        invalid("face_to_face", f"contradicts method {method}")
    return method, method != "phone"


def _streak(person: str, condition: Condition, before: datetime, limit: int) -> int:
    """How many of the person's visits of this condition just before this one were not controlled, consecutively."""
    rows = platform_session().scalars(select(FollowUp.classification).where(
        FollowUp.master_person_id == person, FollowUp.condition == condition,
        FollowUp.status == FollowUpStatus.done, FollowUp.done_at < before)
        .order_by(FollowUp.done_at.desc()).limit(limit))
    streak = 0
    for classification in rows:
        if classification is not Classification.not_controlled:
            break
        streak += 1
    return streak


def _face_to_face_due(person: str, condition: Condition, contract: Contract, visit_day: date, due: date) -> date:
    """After a visit that was not face to face, the next is due no later than a quarter (by the specification's
    face-to-face visits a year) after the last face-to-face one, so the year still holds them all."""
    per_year = rules.table()["follow_ups_per_year"][condition.value]
    last = platform_session().scalar(select(FollowUp.done_at).where(
        FollowUp.master_person_id == person, FollowUp.condition == condition, FollowUp.status == FollowUpStatus.done,
        FollowUp.face_to_face.is_(True)).order_by(FollowUp.done_at.desc()).limit(1))
    anchor = last.astimezone(local_zone()).date() if last is not None else contract.starts_on
    return max(min(due, anchor + timedelta(days=365 // per_year)), visit_day + timedelta(days=1))


def _store_vitals(identity: Identity, follow_up: FollowUp, contract: Contract, form: dict[str, Any],
                  setting: str) -> Any:
    """The visit's readings as a vitals entry, so they become FHIR Observations in the team's shard."""
    from hie.family_doctor import vitals

    values = {name: value for name, value in (form.get("vitals") or {}).items() if value is not None}
    if not values:
        return None
    entry = {"client_id": f"follow-up/{follow_up.id}", "contract_id": contract.id, "taken_at": form["visited_at"],
             "setting": setting, **values}
    try:
        stored, _new = vitals.record_entry(identity, entry)
    except vitals.EntryRefused as refused:
        invalid(f"vitals.{refused.field}", refused.message)
    return stored


def _later_visit(person: str, condition: Condition, visited_at: datetime) -> bool:
    """Whether the person has a visit of the condition recorded after this time (this one is entered late)."""
    return platform_session().scalar(select(FollowUp.id).where(
        FollowUp.master_person_id == person, FollowUp.condition == condition, FollowUp.status == FollowUpStatus.done,
        FollowUp.done_at > visited_at).limit(1)) is not None


def _target(identity: Identity, team: Team, body: dict[str, Any], follow_up_id: str | None,
            now: datetime) -> tuple[FollowUp, Contract, bool]:
    """The follow-up a visit completes, its contract, and whether the visit is entered after a later one (a late
    entry takes no scheduled slot and schedules nothing)."""
    session = platform_session()
    if follow_up_id is not None:
        follow_up, _contract = visible(identity, follow_up_id, "update")
        contract = _our_contract(identity, team, follow_up.contract_id)  # the contract first, as unscheduled visits
        session.refresh(follow_up, with_for_update=True)
        if follow_up.status is not FollowUpStatus.scheduled:
            audit.record("update", "failure", resource_type=RESOURCE, resource_id=follow_up.id,
                         patient=contract_ref(contract), detail=f"follow-up is {follow_up.status.value}")
            abort(409, message=f"This follow-up is {follow_up.status.value}; record an unscheduled visit instead.")
        _check_form(body, follow_up.condition, contract, now)
        if _later_visit(contract.master_person_id, follow_up.condition, body["visited_at"]):
            invalid("visited_at", "is before the latest recorded visit of this condition; record it as an "
                    "unscheduled visit")
        return follow_up, contract, False
    contract = _our_contract(identity, team, body["contract_id"])
    condition = body["condition"]
    if condition.value not in conditions_of(contract.packages):
        invalid("condition", f"is not covered by the contract's packages ({', '.join(contract.packages)})")
    _check_form(body, condition, contract, now)
    late = _later_visit(contract.master_person_id, condition, body["visited_at"])
    follow_up = (None if late else _scheduled(contract.id, condition)) or FollowUp(
        id=new_id(), contract_id=contract.id, team_id=contract.team_id, institution_id=contract.institution_id,
        master_person_id=contract.master_person_id, condition=condition, status=FollowUpStatus.scheduled,
        due_on=body["visited_at"].astimezone(local_zone()).date())
    session.add(follow_up)
    return follow_up, contract, late


def record(identity: Identity, body: dict[str, Any], follow_up_id: str | None = None,
           now: datetime | None = None) -> tuple[FollowUp, Contract]:
    """Record a visit: a scheduled follow-up completed, or an unscheduled one (contract_id + condition), which
    fulfils the follow-up its contract had scheduled for the condition. The verdict schedules the next follow-up
    and, when it asks for a referral, raises an alert with a draft of it."""
    now = now or utcnow()
    body = {**body, "visited_at": body.get("visited_at") or now}
    if follow_up_id is not None:
        visible(identity, follow_up_id, "update")  # another team's id is 404 before anything else
    team, _member = require_member(identity, "update")
    session = platform_session()
    follow_up, contract, late = _target(identity, team, body, follow_up_id, now)
    condition = follow_up.condition
    method, face_to_face = _method(body)
    session.flush()
    stored = _store_vitals(identity, follow_up, contract, body, SETTINGS[method])
    values = {name: (body.get("vitals") or {}).get(name) for name in VITAL_FIELDS}
    visited_at = body["visited_at"].astimezone(UTC)
    visit_day = visited_at.astimezone(local_zone()).date()
    adverse = body.get("adverse_reactions") or {}
    count = rules.table()["refer_after_consecutive_not_controlled"]["count"]
    verdict = rules.classify(condition, values, body.get("symptoms") or [], bool(adverse.get("present")), visit_day,
                             _streak(contract.master_person_id, condition, visited_at, count))
    next_due = verdict.next_due or visit_day + FIRST_VISIT
    if not face_to_face:
        next_due = _face_to_face_due(contract.master_person_id, condition, contract, visit_day, next_due)
    follow_up.status, follow_up.done_at, follow_up.done_by = FollowUpStatus.done, visited_at, identity.user_id
    follow_up.face_to_face, follow_up.classification = face_to_face, verdict.classification
    follow_up.systolic, follow_up.diastolic = values["systolic"], values["diastolic"]
    follow_up.fasting_glucose, follow_up.vitals_id = values["fasting_glucose"], stored.id if stored else None
    follow_up.form = {
        "method": method, "unscheduled": follow_up_id is None, "late_entry": late,
        "symptoms": body.get("symptoms") or [], "vitals": {k: v for k, v in values.items() if v is not None},
        "lifestyle": body.get("lifestyle") or {}, "medication_adherence": body.get("medication_adherence"),
        "adverse_reactions": adverse or None, "medications": body.get("medications") or [], "note": body.get("note"),
        "reasons": verdict.reasons, "refer": verdict.refer, "next_due": None if late else next_due.isoformat()}
    if not late:
        session.add(FollowUp(id=new_id(), contract_id=contract.id, team_id=contract.team_id,
                             institution_id=contract.institution_id, master_person_id=contract.master_person_id,
                             condition=condition, status=FollowUpStatus.scheduled, due_on=next_due))
    if verdict.refer is not None:
        _raise_alert(identity, team, contract, follow_up, verdict, stored, visit_day)
    emit(session, PLATFORM, "family_doctor.follow_up_done",
         {"follow_up_id": follow_up.id, "contract_id": contract.id, "team_id": team.id,
          "condition": condition.value, "classification": verdict.classification.value})
    audit.record("update" if follow_up_id else "create", resource_type=RESOURCE, resource_id=follow_up.id,
                 patient=contract_ref(contract), purpose="treatment",
                 detail=f"{condition.value} follow-up ({method}): {verdict.classification.value}, "
                        + ("entered late" if late else f"next {next_due}"))
    session.flush()
    return follow_up, contract


def referral_installed() -> bool:
    """Whether the referral module is in the app's list, so a referral can be drafted and sent."""
    return any(module.name == REFERRAL_MODULE for module in installed())


def _suggested_receiver(acting: Identity, condition: Condition, person: str, today: date) -> str | None:
    """The referral module's first suggestion of where to send the patient up, if any receiver publishes slots."""
    from hie.referral import capacity
    from hie.referral.models import Direction

    found = capacity.suggest(acting, Direction.up, DEPARTMENTS[condition], today,
                             today + timedelta(days=SUGGESTION_DAYS - 1), person)
    return found[0].institution.code if found else None


def _summary(follow_up: FollowUp) -> str:
    form = follow_up.form or {}
    readings = ", ".join(f"{name} {value:g}" for name, value in form.get("vitals", {}).items())
    drugs = "; ".join(" ".join(filter(None, (m["name"], m.get("dose"), m.get("frequency"))))
                      for m in form.get("medications", []))
    parts = [f"{follow_up.condition.value} follow-up {follow_up.done_at.astimezone(local_zone()):%Y-%m-%d %H:%M} "
             f"({form.get('method')}): {follow_up.classification.value}" if follow_up.classification else ""]
    parts += [f"readings: {readings}" if readings else "", f"medication: {drugs}" if drugs else "",
              f"adherence: {form['medication_adherence']}" if form.get("medication_adherence") else "",
              f"note: {form['note']}" if form.get("note") else ""]
    return "\n".join(part for part in parts if part)


def draft_referral(identity: Identity, team: Team, contract: Contract, follow_up: FollowUp, verdict: rules.Verdict,
                   stored: Any, today: date) -> dict[str, Any]:
    """A body for POST /api/v1/referrals: up, from the team's institution, with the visit's readings attached."""
    condition = follow_up.condition
    observations = [ref if "/" in ref else f"Observation/{ref}" for ref in (stored.observations if stored else [])]
    label = "Urgent referral" if verdict.refer == "urgent" else "Referral recommended"
    return {"patient_id": contract.patient_id, "direction": "up",
            "urgency": "urgent" if verdict.refer == "urgent" else "routine",
            "receiving_institution": _suggested_receiver(team_identity(identity, team), condition,
                                                         contract.master_person_id, today),
            "department": DEPARTMENTS[condition],
            "reason": f"{label} at the {condition.value} follow-up: {'; '.join(verdict.reasons)}"[:2000],
            "diagnoses": [DIAGNOSES[condition]], "clinical_summary": _summary(follow_up),
            "records": observations[:50]}


def _raise_alert(identity: Identity, team: Team, contract: Contract, follow_up: FollowUp, verdict: rules.Verdict,
                 stored: Any, today: date) -> Alert:
    """An alert for the team: urgent referral at once, or a referral recommended after repeated poor control."""
    why = "; ".join(verdict.reasons)
    urgent = verdict.refer == "urgent"
    head = (f"Urgent referral needed ({follow_up.condition.value} follow-up {today.isoformat()}): {why}." if urgent
            else f"Referral recommended: {follow_up.condition.value} not controlled at consecutive follow-ups: {why}.")
    draft = None
    if referral_installed():
        draft = draft_referral(identity, team, contract, follow_up, verdict, stored, today)
        tail = " A draft upward referral is ready to send."
    else:
        tail = " The referral module is not installed: refer the patient by the usual paper or phone route."
    alert = Alert(team_id=team.id, contract_id=contract.id, master_person_id=contract.master_person_id,
                  kind=ALERT_KINDS[verdict.refer or "urgent"], message=(head[:500 - len(tail)] + tail),
                  vitals_id=stored.id if stored else None, follow_up_id=follow_up.id, draft_referral=draft)
    session = platform_session()
    session.add(alert)
    if urgent and stored is not None:  # the reading's own alarms are this alert's reasons: one alert, not several
        session.execute(update(Alert).where(Alert.vitals_id == stored.id, Alert.kind == "reading",
                                            Alert.resolved_at.is_(None))
                        .values(resolved_at=utcnow(), resolution=f"part of the urgent referral alert of follow-up "
                                                                 f"{follow_up.id}"))
    audit.record("create", resource_type="FamilyDoctorAlert", patient=contract_ref(contract), purpose="treatment",
                 detail=f"{alert.kind} from follow-up {follow_up.id}")
    return alert
