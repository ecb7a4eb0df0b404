"""The resident's own portal: their contract and team, vitals with trends, follow-ups, shared record and health
education. Every answer is about the caller's own master person (and anyone merged into it), never an id they send,
and every read is audited with purpose `self` naming their patient record."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from statistics import fmean
from typing import Any

from flask_smorest import abort
from sqlalchemy import func, select

from hie.exchange.everything import everything
from hie.exchange.outcome import FhirError
from hie.exchange.registry import merged_cluster
from hie.family_doctor import education, services
from hie.family_doctor.models import Contract, Delivery, FollowUp, FollowUpStatus, Team, TeamMember, TeamRole, Vitals
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.db import platform_session, utcnow
from hie.platform.limits import EARLIEST_QUERY_DATE
from hie.tenants.models import Institution

# Each measure of fd_vitals and its UCUM unit, in the order the portal shows them.
MEASURES = {"systolic": "mm[Hg]", "diastolic": "mm[Hg]", "heart_rate": "/min", "fasting_glucose": "mmol/L",
            "random_glucose": "mmol/L", "weight": "kg", "height": "cm", "bmi": "kg/m2", "waist": "cm", "spo2": "%",
            "temperature": "Cel"}
MONTH = timedelta(days=30)
DEFAULT_WINDOW = timedelta(days=365)
ROLE_ORDER = list(TeamRole)


def _audit(identity: Identity, action: str, resource_type: str, detail: str, outcome: str = "success",
           resource_id: str | None = None) -> None:
    audit.record(action, outcome, resource_type=resource_type, resource_id=resource_id,
                 patient=audit.patient_ref(identity.tenant_code, identity.patient_id) if identity.patient_id else None,
                 purpose=access.Basis.self.value, detail=detail)


def persons_of(identity: Identity) -> list[str]:
    """The resident's master person and everyone merged into it: whose rows are theirs (none without the EMPI)."""
    session = platform_session()
    person = access.resident_person(session, identity)
    return merged_cluster(session, person) if person else []


def contract(identity: Identity) -> dict[str, Any]:
    """The resident's active contract with its team, packages and term; 404 when they hold none."""
    session = platform_session()
    persons = persons_of(identity)
    found = session.scalar(select(Contract).where(Contract.active_person_id.in_(persons))) if persons else None
    if found is None:
        _audit(identity, "read", services.RESOURCE, "resident portal: no active contract", "not_found")
        abort(404, message="You hold no active family-doctor contract; ask your township health centre or village "
                           "clinic to sign you with a family-doctor team.")
    team = session.get_one(Team, found.team_id)
    institution = session.get_one(Institution, team.institution_id)
    members = session.execute(select(User.display_name, TeamMember.team_role)
                              .join(TeamMember, TeamMember.user_id == User.id)
                              .where(TeamMember.team_id == team.id, User.active.is_(True))).all()
    known = services.catalogue()
    _audit(identity, "read", services.RESOURCE, "resident portal: own contract", resource_id=found.id)
    return {
        "id": found.id, "status": found.status.value, "starts_on": found.starts_on, "ends_on": found.ends_on,
        "signed_at": found.signed_at,
        "packages": [{"code": code, **{k: known["packages"][code][k]
                                       for k in ("name", "services", "follow_ups_per_year", "conditions")}}
                     for code in found.packages],
        "priority_groups": [{"code": code, "name": known["priority_groups"][code]} for code in found.priority_groups],
        "team": {"code": team.code, "name": team.name,
                 "institution": {"code": institution.code, "name": institution.name},
                 "members": [{"display_name": name, "team_role": role.value} for name, role in
                             sorted(members, key=lambda m: (ROLE_ORDER.index(m[1]), m[0]))]},
    }


def _point(row: Vitals, measure: str) -> dict[str, Any]:
    return {"taken_at": row.taken_at, "value": getattr(row, measure), "self_reported": row.self_reported}


def _mean(values: list[float]) -> float | None:
    return round(fmean(values), 1) if values else None


def trends(rows: list[Vitals], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per measure: the series in [since, until], the latest reading in it, the mean of the 30 days up to until and
    its change from the 30 days before (rows: every reading from min(since, until - 60 days) to until, oldest first)."""
    shown = []
    for measure, unit in MEASURES.items():
        taken = [row for row in rows if getattr(row, measure) is not None]
        series = [_point(row, measure) for row in taken if row.taken_at >= since]
        recent = [getattr(row, measure) for row in taken if row.taken_at > until - MONTH]
        before = [getattr(row, measure) for row in taken if until - 2 * MONTH < row.taken_at <= until - MONTH]
        if not series and not recent:
            continue
        mean, previous = _mean(recent), _mean(before)
        shown.append({"measure": measure, "unit": unit, "latest": series[-1] if series else None,
                      "mean_30d": mean, "count_30d": len(recent), "mean_previous_30d": previous,
                      "change_30d": round(mean - previous, 1) if mean is not None and previous is not None else None,
                      "series": series})
    return shown


def reading_view(row: Vitals, teams: dict[int, str], institutions: dict[int, str]) -> dict[str, Any]:
    """One set of readings, marked as self-reported or taken by the team."""
    return {"id": row.id, "taken_at": row.taken_at, "setting": row.setting.value, "self_reported": row.self_reported,
            "source": "self" if row.self_reported else "team",
            "team": teams.get(row.team_id) if row.team_id else None,
            "institution": institutions.get(row.institution_id),
            "values": {measure: getattr(row, measure) for measure in MEASURES if getattr(row, measure) is not None}}


def vitals(identity: Identity, since: datetime | None, until: datetime | None, first: int, size: int,
           now: datetime | None = None) -> tuple[dict[str, Any], int]:
    """A page of the resident's readings in [since, until] (newest first) and the trends over it, with the total."""
    until = until or now or utcnow()
    since = since or max(until - DEFAULT_WINDOW, EARLIEST_QUERY_DATE)
    earliest = max(min(since, until - 2 * MONTH), EARLIEST_QUERY_DATE)
    session = platform_session()
    persons = persons_of(identity)
    rows = list(session.scalars(select(Vitals).where(
        Vitals.master_person_id.in_(persons), Vitals.taken_at >= earliest, Vitals.taken_at <= until)
        .order_by(Vitals.taken_at, Vitals.id))) if persons else []
    newest_first = [row for row in reversed(rows) if row.taken_at >= since]
    total, page = len(newest_first), newest_first[first:first + size]
    teams = dict(session.execute(select(Team.id, Team.name)
                                 .where(Team.id.in_({r.team_id for r in page if r.team_id}))).all())
    institutions = dict(session.execute(select(Institution.id, Institution.name)
                                        .where(Institution.id.in_({r.institution_id for r in page}))).all())
    _audit(identity, "read", "Vitals", f"resident portal: own vitals, {total} reading(s) from {since.isoformat()} "
           f"to {until.isoformat()}")
    return {"since": since, "until": until, "readings": [reading_view(r, teams, institutions) for r in page],
            "trends": trends(rows, since, until)}, total


def follow_ups(identity: Identity, first: int, size: int, today: date | None = None) -> tuple[dict[str, Any], int]:
    """The resident's follow-ups: a page of those done (newest first, with their classification), the scheduled ones
    and the next one due."""
    today = today or services.local_today()
    session = platform_session()
    persons = persons_of(identity)
    done: list[FollowUp] = []
    scheduled: list[FollowUp] = []
    total = 0
    if persons:
        mine = FollowUp.master_person_id.in_(persons)
        finished = (mine, FollowUp.status == FollowUpStatus.done)
        total = session.scalar(select(func.count()).select_from(FollowUp).where(*finished)) or 0
        done = list(session.scalars(select(FollowUp).where(*finished)
                                    .order_by(FollowUp.done_at.desc(), FollowUp.id).offset(first).limit(size)))
        scheduled = list(session.scalars(select(FollowUp).where(mine, FollowUp.status == FollowUpStatus.scheduled)
                                         .order_by(FollowUp.due_on, FollowUp.condition)))
    teams = dict(session.execute(select(Team.id, Team.name)
                                 .where(Team.id.in_({f.team_id for f in done + scheduled}))).all())
    upcoming = [{"id": f.id, "condition": f.condition.value, "due_on": f.due_on, "overdue": f.due_on < today,
                 "team": teams.get(f.team_id)} for f in scheduled]
    _audit(identity, "read", "FollowUp", f"resident portal: own follow-ups, {total} done, {len(scheduled)} scheduled")
    return {"next_due": upcoming[0] if upcoming else None, "scheduled": upcoming,
            "done": [{"id": f.id, "condition": f.condition.value, "done_at": f.done_at,
                      "classification": f.classification.value if f.classification else None,
                      "face_to_face": f.face_to_face, "systolic": f.systolic, "diastolic": f.diastolic,
                      "fasting_glucose": f.fasting_glucose, "team": teams.get(f.team_id)} for f in done]}, total


def record(identity: Identity, base_url: str) -> bytes:
    """The resident's shared health record from every tenant: the exchange's $everything, asked as themselves."""
    if identity.patient_id is None:
        _audit(identity, "read", "Patient", "resident portal: account names no patient record", "not_found")
        abort(404, message="Your account is linked to no patient record.")
    try:
        bundle = everything(identity, identity.patient_id, base_url)
    except FhirError:
        _audit(identity, "read", "Patient", "resident portal: own record not found", "not_found",
               resource_id=identity.patient_id)
        abort(404, message="Your patient record was not found; ask the institution that registered you.")
    return bundle  # the exchange audited the read, with purpose self


def deliveries(identity: Identity, first: int, size: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the health-education articles delivered to the resident, newest first, with read state."""
    rows, total = education.delivered_to(platform_session(), persons_of(identity), first, size)
    _audit(identity, "read", "ArticleDelivery", f"resident portal: own health education, {total} article(s)")
    return rows, total


def read_receipt(identity: Identity, delivery_id: int, now: datetime | None = None) -> dict[str, Any]:
    """Mark one of the resident's own deliveries read; anyone else's delivery id answers 404."""
    session = platform_session()
    shown = education.mark_read(session, persons_of(identity), delivery_id, now or utcnow())
    if shown is None:
        exists = session.get(Delivery, delivery_id) is not None
        _audit(identity, "update", "ArticleDelivery", "resident portal: read receipt of a delivery not theirs",
               "denied" if exists else "not_found", resource_id=str(delivery_id))
        abort(404, message="No such article delivered to you.")
    _audit(identity, "update", "ArticleDelivery", "resident portal: article read", resource_id=str(delivery_id))
    return shown
