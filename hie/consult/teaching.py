"""Teleteaching use cases: sessions a host institution gives to the institutions it invites, registration by their
clinicians, attendance, continuing-education credit, and the figures administrators see.

Credit rule: a registrant earns the session's full credits when the time they attended inside the session window
(from the later of joining and the start to the earlier of leaving and the end) is at least 80% of the session's
length; attending less earns 0. It is computed when they leave or when the host records their attendance."""

from __future__ import annotations

import secrets
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from flask import current_app
from flask_smorest import abort
from sqlalchemy import case, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.consult.models import TeachingInvite, TeachingRegistration, TeachingSession
from hie.consult.services import invalid
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import new_id, platform_session, utcnow
from hie.platform.figures import MIN_CELL, Window
from hie.tenants.models import Institution, Region, Tenant

RESOURCE = "TeachingSession"
VIDEO_SETTING = "HIE_VIDEO_BASE_URL"
MAX_LENGTH = timedelta(hours=8)
SLACK = timedelta(minutes=15)  # joining opens this long before the start; leaving is taken this long after the end
CREDIT_SHARE = (4, 5)  # attended time >= 4/5 of the session's length earns its credits
ADMIN_ROLES = frozenset({Role.health_admin, Role.tenant_admin, Role.institution_admin})
FIGURES = ("sessions", "registrations", "attendances", "credited", "credits")


def _refuse(action: str, status: int, message: str, teaching_id: str | None, detail: str) -> NoReturn:
    """Audit a refusal about a session (no patient involved), then answer it."""
    outcome = "denied" if status in (403, 404) else "failure"
    audit.record(action, outcome, resource_type=RESOURCE, resource_id=(teaching_id or "")[:80] or None,
                 detail=detail)
    abort(status, message=message)


def _refuse_field(action: str, field: str, message: str, teaching_id: str | None = None) -> NoReturn:
    """422 naming the field, audited."""
    audit.record(action, "failure", resource_type=RESOURCE, resource_id=teaching_id, detail=f"{field} {message}")
    invalid(field, message)


def video_url(room: str | None) -> str | None:
    """The room's link on the self-hosted video service, when HIE_VIDEO_BASE_URL is configured."""
    base = current_app.config["HIE"].extra.get(VIDEO_SETTING)
    if not base or not room:
        return None
    return f"{base.rstrip('/')}/{room}"


def _clinical_user(session: Session, username: str, institution_id: int) -> User | None:
    """An active account of this institution that may write clinical records (and so lecture)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active or user.institution_id != institution_id:
        return None
    granted = {permission for role in user.roles for permission in access.ROLE_PERMISSIONS[role]}
    return user if access.Permission.patient_write in granted else None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def create(identity: Identity, body: dict[str, Any], now: datetime | None = None) -> TeachingSession:
    """A session hosted by the caller's institution, with its invited institutions and a video room."""
    now = now or utcnow()
    session = platform_session()
    starts, ends = _utc(body["starts_at"]), _utc(body["ends_at"])
    if starts <= now:
        _refuse_field("create", "starts_at", "must be in the future")
    if ends <= starts:
        _refuse_field("create", "ends_at", "must be after starts_at")
    if ends - starts > MAX_LENGTH:
        _refuse_field("create", "ends_at", "must be at most 8 hours after starts_at")
    lecturer = _clinical_user(session, body.get("lecturer") or identity.username, identity.institution_id)
    if lecturer is None:
        _refuse_field("create", "lecturer", "is not an active clinician of your institution")
    codes = list(dict.fromkeys(body["invited_institutions"]))
    found = {i.code: i for i in session.scalars(select(Institution).where(Institution.code.in_(codes)))}
    for index, code in enumerate(body["invited_institutions"]):
        if code not in found or not found[code].active:
            _refuse_field("create", f"invited_institutions[{index}]", f"{code!r} is not an active institution")
    teaching = TeachingSession(
        id=new_id(), topic=body["topic"].strip(), lecturer_user_id=lecturer.id,
        host_institution_id=identity.institution_id, starts_at=starts, ends_at=ends, credits=body["credits"],
        materials=[dict(m) for m in body["materials"]], video_room=secrets.token_urlsafe(24), cancelled=False,
        created_by=identity.user_id, created_at=now)
    session.add(teaching)
    session.flush()
    session.add_all(TeachingInvite(session_id=teaching.id, institution_id=found[code].id) for code in codes)
    session.flush()
    audit.record("create", resource_type=RESOURCE, resource_id=teaching.id, purpose="education",
                 detail=f"teaching session invited={','.join(codes)} credits={teaching.credits}")
    return teaching


def _invited(session: Session, teaching_id: str, institution_id: int) -> bool:
    return session.get(TeachingInvite, (teaching_id, institution_id)) is not None


def visible(identity: Identity, teaching_id: str, action: str = "read") -> TeachingSession:
    """The session if the caller's institution hosts it or is invited to it; otherwise 404, audited."""
    session = platform_session()
    teaching = session.get(TeachingSession, teaching_id) if len(teaching_id) <= 36 else None
    if teaching is None or (teaching.host_institution_id != identity.institution_id
                            and not _invited(session, teaching.id, identity.institution_id)):
        _refuse(action, 404, "No such teaching session.", teaching_id,
                "teaching session not found" if teaching is None else "institution neither hosts nor is invited")
    return teaching


def _hosted(identity: Identity, teaching_id: str, action: str) -> TeachingSession:
    """The session if the caller's institution hosts it: 404 when not visible, 403 for an invited institution."""
    teaching = visible(identity, teaching_id, action)
    if teaching.host_institution_id != identity.institution_id:
        _refuse(action, 403, "Only the host institution may do this.", teaching.id, f"{action}: not the host")
    return teaching


def _not_cancelled(teaching: TeachingSession, action: str) -> None:
    if teaching.cancelled:
        _refuse(action, 409, "The teaching session is cancelled.", teaching.id, f"{action} refused: cancelled")


def search(identity: Identity, when: str | None, offset: int, limit: int,
           now: datetime | None = None) -> tuple[list[TeachingSession], int]:
    """Sessions the caller's institution hosts or is invited to: upcoming (soonest first), past or all (newest)."""
    now = now or utcnow()
    session = platform_session()
    invited = exists().where(TeachingInvite.session_id == TeachingSession.id,
                             TeachingInvite.institution_id == identity.institution_id)
    query = select(TeachingSession).where(or_(TeachingSession.host_institution_id == identity.institution_id,
                                              invited))
    order = [TeachingSession.starts_at.desc(), TeachingSession.id]
    if when == "upcoming":
        query, order = query.where(TeachingSession.ends_at > now), [TeachingSession.starts_at, TeachingSession.id]
    elif when == "past":
        query = query.where(TeachingSession.ends_at <= now)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(*order).offset(offset).limit(limit)))
    audit.record("search", resource_type=RESOURCE, purpose="education", detail=f"when={when} results={len(rows)}")
    return rows, total


def update(identity: Identity, teaching_id: str, body: dict[str, Any], now: datetime | None = None) -> TeachingSession:
    """The host changes materials, adds the recording once the session ended, or cancels it before it starts."""
    now = now or utcnow()
    teaching = _hosted(identity, teaching_id, "update")
    _not_cancelled(teaching, "update")
    if body.get("cancelled") and now >= teaching.starts_at:
        _refuse("update", 409, "A teaching session can be cancelled only before it starts.", teaching.id,
                "cancel refused: started")
    if body.get("recording_url") is not None and now < teaching.ends_at:
        _refuse("update", 409, "The recording can be linked only after the session has ended.", teaching.id,
                "recording refused: not ended")
    if "materials" in body:
        teaching.materials = [dict(m) for m in body["materials"]]
    if "recording_url" in body:
        teaching.recording_url = body["recording_url"]
    if body.get("cancelled"):
        teaching.cancelled = True
    changed = [name for name in ("materials", "recording_url", "cancelled") if name in body]
    platform_session().flush()
    audit.record("update", resource_type=RESOURCE, resource_id=teaching.id, purpose="education",
                 detail=f"changed={','.join(changed)}")
    return teaching


def register(identity: Identity, teaching_id: str, now: datetime | None = None) -> TeachingRegistration:
    """A clinician of an invited institution registers, once, until the session ends."""
    now = now or utcnow()
    session = platform_session()
    teaching = visible(identity, teaching_id, "register")
    if not _invited(session, teaching.id, identity.institution_id):
        _refuse("register", 403, "Only clinicians of invited institutions may register.", teaching.id,
                "register refused: institution not invited")
    _not_cancelled(teaching, "register")
    if now >= teaching.ends_at:
        _refuse("register", 409, "The teaching session has ended.", teaching.id, "register refused: ended")
    if session.get(TeachingRegistration, (teaching.id, identity.user_id)) is not None:
        _refuse("register", 409, "You are already registered for this session.", teaching.id,
                "register refused: already registered")
    registration = TeachingRegistration(session_id=teaching.id, user_id=identity.user_id,
                                        institution_id=identity.institution_id, registered_at=now)
    try:
        with session.begin_nested():
            session.add(registration)
    except IntegrityError:
        _refuse("register", 409, "You are already registered for this session.", teaching.id,
                "register refused: registered concurrently")
    audit.record("register", resource_type=RESOURCE, resource_id=teaching.id, purpose="education")
    return registration


def _own_registration(identity: Identity, teaching: TeachingSession, action: str) -> TeachingRegistration:
    registration = platform_session().get(TeachingRegistration, (teaching.id, identity.user_id))
    if registration is None:
        _refuse(action, 409, "You are not registered for this session.", teaching.id, f"{action}: not registered")
    return registration


def unregister(identity: Identity, teaching_id: str, now: datetime | None = None) -> None:
    """Withdraw a registration before the session starts."""
    now = now or utcnow()
    teaching = visible(identity, teaching_id, "unregister")
    registration = _own_registration(identity, teaching, "unregister")
    if now >= teaching.starts_at:
        _refuse("unregister", 409, "A registration can be withdrawn only before the session starts.", teaching.id,
                "unregister refused: started")
    platform_session().delete(registration)
    platform_session().flush()
    audit.record("unregister", resource_type=RESOURCE, resource_id=teaching.id, purpose="education")


def credit_for(teaching: TeachingSession, joined: datetime, left: datetime) -> float:
    """The session's credits when the time attended inside its window is at least 80% of its length, else 0."""
    attended = min(left, teaching.ends_at) - max(joined, teaching.starts_at)
    length = teaching.ends_at - teaching.starts_at
    earned = attended * CREDIT_SHARE[1] >= length * CREDIT_SHARE[0]
    return float(teaching.credits) if earned and attended > timedelta(0) else 0.0


def join(identity: Identity, teaching_id: str, now: datetime | None = None) -> TeachingRegistration:
    """The registrant joins: from 15 minutes before the start until the end, once."""
    now = now or utcnow()
    teaching = visible(identity, teaching_id, "join")
    _not_cancelled(teaching, "join")
    registration = _own_registration(identity, teaching, "join")
    if not teaching.starts_at - SLACK <= now < teaching.ends_at:
        _refuse("join", 409, "Joining is open from 15 minutes before the start until the end.", teaching.id,
                "join refused: outside the session window")
    if registration.joined_at is not None:
        _refuse("join", 409, "Your attendance is already recorded; the host may correct it.", teaching.id,
                "join refused: already joined")
    registration.joined_at = now
    platform_session().flush()
    audit.record("join", resource_type=RESOURCE, resource_id=teaching.id, purpose="education")
    return registration


def leave(identity: Identity, teaching_id: str, now: datetime | None = None) -> TeachingRegistration:
    """The registrant leaves, up to 15 minutes after the end; their credit is computed."""
    now = now or utcnow()
    teaching = visible(identity, teaching_id, "leave")
    _not_cancelled(teaching, "leave")
    registration = _own_registration(identity, teaching, "leave")
    if registration.joined_at is None or registration.left_at is not None:
        state = "not joined" if registration.joined_at is None else "already left"
        _refuse("leave", 409, f"You have {state}; the host may record your attendance.", teaching.id,
                f"leave refused: {state}")
    if now > teaching.ends_at + SLACK:
        _refuse("leave", 409, "Leaving is recorded until 15 minutes after the end; the host may record your "
                              "attendance.", teaching.id, "leave refused: after the session window")
    registration.left_at = now
    registration.credits = credit_for(teaching, registration.joined_at, now)
    platform_session().flush()
    audit.record("leave", resource_type=RESOURCE, resource_id=teaching.id, purpose="education",
                 detail=f"credits={registration.credits}")
    return registration


def record_attendance(identity: Identity, teaching_id: str, body: dict[str, Any],
                      now: datetime | None = None) -> TeachingRegistration:
    """The host records (or corrects) a registrant's attendance; their credit is computed."""
    now = now or utcnow()
    session = platform_session()
    teaching = _hosted(identity, teaching_id, "attendance")
    _not_cancelled(teaching, "attendance")
    joined, left = _utc(body["joined_at"]), _utc(body["left_at"])
    user = session.scalar(select(User).where(User.username == body["username"]))
    registration = session.get(TeachingRegistration, (teaching.id, user.id)) if user is not None else None
    if registration is None:
        _refuse_field("attendance", "username", "is not registered for this session", teaching.id)
    if joined < teaching.starts_at - SLACK:
        _refuse_field("attendance", "joined_at", "must be at most 15 minutes before the start", teaching.id)
    if left <= joined:
        _refuse_field("attendance", "left_at", "must be after joined_at", teaching.id)
    if left > teaching.ends_at + SLACK or left > now:
        _refuse_field("attendance", "left_at", "must be at most 15 minutes after the end, and not in the future",
                      teaching.id)
    registration.joined_at, registration.left_at = joined, left
    registration.credits = credit_for(teaching, joined, left)
    session.flush()
    audit.record("attendance", resource_type=RESOURCE, resource_id=teaching.id, purpose="education",
                 detail=f"user_id={registration.user_id} credits={registration.credits}")
    return registration


def mine(identity: Identity, year: int | None = None) -> dict[str, Any]:
    """The caller's registrations (newest session first) and the credits they earned per local calendar year."""
    session = platform_session()
    zone = ZoneInfo(current_app.config["HIE"].timezone)
    rows = session.execute(select(TeachingRegistration, TeachingSession)
                           .join(TeachingSession, TeachingSession.id == TeachingRegistration.session_id)
                           .where(TeachingRegistration.user_id == identity.user_id)
                           .order_by(TeachingSession.starts_at.desc(), TeachingSession.id)).all()
    by_year: dict[int, dict[str, Any]] = {}
    shown = []
    for registration, teaching in rows:
        local_year = teaching.starts_at.astimezone(zone).year
        if year is not None and local_year != year:
            continue
        shown.append((registration, teaching))
        totals = by_year.setdefault(local_year, {"year": local_year, "sessions": 0, "credited": 0, "credits": 0.0})
        totals["sessions"] += 1
        if registration.credits:
            totals["credited"] += 1
            totals["credits"] = round(totals["credits"] + registration.credits, 2)
    audit.record("search", resource_type=RESOURCE, purpose="education",
                 detail=f"own registrations year={year} results={len(shown)}")
    return {"registrations": shown, "credits_by_year": [by_year[y] for y in sorted(by_year, reverse=True)],
            "total_credits": round(sum(t["credits"] for t in by_year.values()), 2)}


def stats_scope(session: Session, identity: Identity) -> dict[int, tuple[str, str, str | None, str | None]]:
    """Institutions whose figures the administrator sees: health and tenant administrators their region subtree,
    an institution administrator their own institution. id -> (code, name, county code, county name)."""
    query = (select(Institution.id, Institution.code, Institution.name, Tenant.region_code, Region.name)
             .join(Tenant, Tenant.id == Institution.tenant_id).outerjoin(Region, Region.code == Tenant.region_code))
    conditions = []
    if identity.roles & {Role.health_admin, Role.tenant_admin}:
        conditions.append(Tenant.region_code.in_(access.region_subtree(session, identity.region_code)))
    if Role.institution_admin in identity.roles:
        conditions.append(Institution.id == identity.institution_id)
    if not conditions:
        return {}
    return {row[0]: tuple(row[1:]) for row in session.execute(query.where(or_(*conditions)))}  # type: ignore[misc]


def _cell(counts: dict[str, Any]) -> dict[str, Any]:
    """One group's figures; the person counts are null, with suppressed true, when 1 to 4 registrations fall in it."""
    if 0 < counts["registrations"] < MIN_CELL:
        return {"sessions": counts["sessions"], **dict.fromkeys(FIGURES[1:]), "suppressed": True}
    return {**counts, "credits": round(counts["credits"], 2), "suppressed": False}


def teaching_figures(session: Session, scope: dict[int, tuple[str, str, str | None, str | None]], window: Window,
                     group_by: str) -> dict[str, Any]:
    """Sessions hosted by, and registrations, attendances and credits of clinicians of, the institutions in scope,
    for sessions (not cancelled) starting in the window; in total and per institution or county."""
    counts: dict[int, dict[str, Any]] = defaultdict(lambda: {"sessions": 0, "registrations": 0, "attendances": 0,
                                                             "credited": 0, "credits": 0.0})
    live = [TeachingSession.cancelled.is_(False), TeachingSession.starts_at >= window.since,
            TeachingSession.starts_at < window.until]
    if scope:
        hosted = (select(TeachingSession.host_institution_id, func.count())
                  .where(*live, TeachingSession.host_institution_id.in_(scope))
                  .group_by(TeachingSession.host_institution_id))
        for institution_id, sessions in session.execute(hosted):
            counts[institution_id]["sessions"] = int(sessions)
        attended = (select(TeachingRegistration.institution_id, func.count(),
                           func.sum(case((TeachingRegistration.joined_at.is_not(None), 1), else_=0)),
                           func.sum(case((TeachingRegistration.credits > 0, 1), else_=0)),
                           func.sum(func.coalesce(TeachingRegistration.credits, 0)))
                    .join(TeachingSession, TeachingSession.id == TeachingRegistration.session_id)
                    .where(*live, TeachingRegistration.institution_id.in_(scope))
                    .group_by(TeachingRegistration.institution_id))
        for institution_id, registrations, attendances, credited, credits in session.execute(attended):
            counts[institution_id].update(registrations=int(registrations), attendances=int(attendances or 0),
                                          credited=int(credited or 0), credits=float(credits or 0))
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    total = {"sessions": 0, "registrations": 0, "attendances": 0, "credited": 0, "credits": 0.0}
    for institution_id, figures in counts.items():
        code, name, county, county_name = scope[institution_id]
        key = (county, county_name, code, name) if group_by == "institution" else (county, county_name)
        group = groups.setdefault(key, dict.fromkeys(total, 0))
        for figure, value in figures.items():
            group[figure] += value
            total[figure] += value
    shown = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        labels = {"county": key[0], "county_name": key[1]}
        if group_by == "institution":
            labels.update(institution=key[2], institution_name=key[3])
        shown.append({**labels, **_cell(groups[key])})
    return {"group_by": group_by, "min_cell": MIN_CELL, "total": _cell(total), "groups": shown}
