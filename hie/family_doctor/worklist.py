"""The doctor's worklist: the team's follow-ups due this week and overdue, residents with an open alert, contracts
about to expire. Every section is one indexed page query plus one query for the page's last visits: a team of
5,000 residents costs the same as a team of 50. Entries name patients by record id, never by name (names are sealed
in the shards; the client reads the patient when it shows one)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from hie.family_doctor import services
from hie.family_doctor.models import Alert, Contract, ContractStatus, FollowUp, FollowUpStatus
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session

SECTIONS = ("due", "overdue", "alerts", "expiring")
EXPIRING_DAYS = 30
# section -> the sorts it takes, the first being its default
SORTS: dict[str, tuple[str, ...]] = {"due": ("due_on", "-due_on"), "overdue": ("due_on", "-due_on"),
                                     "alerts": ("-alerted_at", "alerted_at", "-open_alerts", "open_alerts"),
                                     "expiring": ("ends_on", "-ends_on")}


def week_end(today: date) -> date:
    """The Sunday of today's week (weeks run Monday to Sunday)."""
    return today + timedelta(days=6 - today.weekday())


def _follow_up_filter(team_id: int, section: str, today: date) -> tuple[ColumnElement[bool], ...]:
    """Scheduled follow-ups due from today to Sunday, or due before today (the sections do not overlap)."""
    window = (FollowUp.due_on >= today, FollowUp.due_on <= week_end(today)) if section == "due" \
        else (FollowUp.due_on < today,)
    return (FollowUp.team_id == team_id, FollowUp.status == FollowUpStatus.scheduled, *window)


def _expiring_filter(team_id: int, today: date) -> tuple[ColumnElement[bool], ...]:
    return (Contract.team_id == team_id, Contract.status == ContractStatus.active, Contract.ends_on >= today,
            Contract.ends_on <= today + timedelta(days=EXPIRING_DAYS))


def _open_alerts(team_id: int) -> tuple[ColumnElement[bool], ...]:
    return Alert.team_id == team_id, Alert.resolved_at.is_(None)


def last_visits(session: Session, persons: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each person's most recent visit per condition, newest first, in one query."""
    wanted = set(persons)
    if not wanted:
        return {}
    rows = session.execute(select(FollowUp.master_person_id, FollowUp.condition, FollowUp.classification,
                                  FollowUp.done_at).where(FollowUp.master_person_id.in_(wanted),
                                                          FollowUp.status == FollowUpStatus.done)
                           .order_by(FollowUp.done_at.desc()))
    found: dict[str, list[dict[str, Any]]] = {person: [] for person in wanted}
    for person, condition, classification, done_at in rows:
        if all(visit["condition"] != condition.value for visit in found[person]):
            found[person].append({"condition": condition.value,
                                  "classification": classification.value if classification else None,
                                  "visited_at": done_at})
    return found


def _entry(section: str, contract_id: str, tenant_code: str, patient_id: str, person: str,
           ends_on: date, **more: Any) -> dict[str, Any]:
    return {"section": section, "contract_id": contract_id, "patient_id": patient_id,
            "patient_tenant_code": tenant_code, "master_person_id": person, "contract_ends_on": ends_on,
            "follow_up_id": None, "condition": None, "due_on": None, "days_overdue": None, "open_alerts": None,
            "alerted_at": None, **more}


def _follow_ups(session: Session, team_id: int, section: str, today: date, sort: str, offset: int,
                limit: int) -> tuple[list[dict[str, Any]], int]:
    where = _follow_up_filter(team_id, section, today)
    total = session.scalar(select(func.count()).select_from(FollowUp).where(*where)) or 0
    order = (FollowUp.due_on.desc(), FollowUp.id.desc()) if sort.startswith("-") else (FollowUp.due_on, FollowUp.id)
    rows = session.execute(select(FollowUp.id, FollowUp.condition, FollowUp.due_on, Contract.id, Contract.tenant_code,
                                  Contract.patient_id, Contract.master_person_id, Contract.ends_on)
                           .join(Contract, Contract.id == FollowUp.contract_id).where(*where)
                           .order_by(*order).offset(offset).limit(limit)).all()
    return [_entry(section, contract_id, tenant, patient, person, ends_on, follow_up_id=follow_up_id,
                   condition=condition.value, due_on=due_on,
                   days_overdue=(today - due_on).days if due_on < today else 0)
            for follow_up_id, condition, due_on, contract_id, tenant, patient, person, ends_on in rows], total


def _alerted(session: Session, team_id: int, sort: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    where = _open_alerts(team_id)
    total = session.scalar(select(func.count(func.distinct(Alert.master_person_id))).where(*where)) or 0
    count, latest = func.count(Alert.id).label("open_alerts"), func.max(Alert.created_at).label("alerted_at")
    grouped = (select(Alert.master_person_id, func.max(Alert.contract_id).label("contract_id"), count, latest)
               .where(*where).group_by(Alert.master_person_id).subquery())
    key = grouped.c[sort.lstrip("-")]
    rows = session.execute(select(grouped, Contract.tenant_code, Contract.patient_id, Contract.ends_on)
                           .outerjoin(Contract, Contract.id == grouped.c.contract_id)
                           .order_by(key.desc() if sort.startswith("-") else key, grouped.c.master_person_id)
                           .offset(offset).limit(limit)).all()
    return [_entry("alerts", contract_id, tenant, patient, person, ends_on, open_alerts=alerts,
                   alerted_at=alerted_at)
            for person, contract_id, alerts, alerted_at, tenant, patient, ends_on in rows], total


def _expiring(session: Session, team_id: int, today: date, sort: str, offset: int,
              limit: int) -> tuple[list[dict[str, Any]], int]:
    where = _expiring_filter(team_id, today)
    total = session.scalar(select(func.count()).select_from(Contract).where(*where)) or 0
    order = (Contract.ends_on.desc(), Contract.id.desc()) if sort.startswith("-") else (Contract.ends_on, Contract.id)
    rows = session.execute(select(Contract.id, Contract.tenant_code, Contract.patient_id, Contract.master_person_id,
                                  Contract.ends_on).where(*where).order_by(*order).offset(offset).limit(limit)).all()
    return [_entry("expiring", *row) for row in rows], total


def section(identity: Identity, name: str, sort: str | None, offset: int, limit: int,
            today: date | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of one section for the caller's team, with each resident's last visits; every entry is audited with
    its patient, as a search of patient data."""
    team, _member = services.require_member(identity, "search")
    today = today or services.local_today()
    sort = sort or SORTS[name][0]
    session = platform_session()
    if name in ("due", "overdue"):
        entries, total = _follow_ups(session, team.id, name, today, sort, offset, limit)
    elif name == "alerts":
        entries, total = _alerted(session, team.id, sort, offset, limit)
    else:
        entries, total = _expiring(session, team.id, today, sort, offset, limit)
    visits = last_visits(session, (entry["master_person_id"] for entry in entries))
    for entry in entries:
        mine = [v for v in visits[entry["master_person_id"]]
                if entry["condition"] is None or v["condition"] == entry["condition"]]
        latest = max(mine, key=lambda v: v["visited_at"], default=None)
        entry["last_visits"] = mine
        entry["last_classification"] = latest["classification"] if latest else None
        entry["last_visit_at"] = latest["visited_at"] if latest else None
    audit.record("search", resource_type="FamilyDoctorWorklist", purpose="treatment",
                 detail=f"section={name} sort={sort} today={today.isoformat()} results={len(entries)}")
    for entry in entries:
        if entry["patient_id"] is not None:
            audit.record("read", resource_type="Contract", resource_id=entry["contract_id"], purpose="treatment",
                         patient=audit.patient_ref(entry["patient_tenant_code"], entry["patient_id"]),
                         detail=f"worklist {name}")
    return entries, total


def summary(identity: Identity, today: date | None = None) -> dict[str, Any]:
    """How many entries each section holds (counts only, no patient)."""
    team, _member = services.require_member(identity, "search")
    today = today or services.local_today()
    session = platform_session()
    counts: dict[str, Any] = {
        name: session.scalar(select(func.count()).select_from(FollowUp)
                             .where(*_follow_up_filter(team.id, name, today))) or 0
        for name in ("due", "overdue")}
    counts["alerts"] = session.scalar(select(func.count(func.distinct(Alert.master_person_id)))
                                      .where(*_open_alerts(team.id))) or 0
    counts["expiring"] = session.scalar(select(func.count()).select_from(Contract)
                                        .where(*_expiring_filter(team.id, today))) or 0
    audit.record("search", resource_type="FamilyDoctorWorklist", purpose="treatment",
                 detail=f"summary today={today.isoformat()}")
    return {**counts, "today": today, "week_ends_on": week_end(today), "team": team.code}
