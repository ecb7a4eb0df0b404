"""Teleteaching over REST: /api/v1/teaching/* for clinicians, /api/v1/stats/teaching for administrators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields, validate, validates_schema
from marshmallow import ValidationError as MarshmallowError
from sqlalchemy import func, select

from hie.consult import teaching
from hie.consult.api import blp
from hie.consult.models import TeachingInvite, TeachingRegistration, TeachingSession
from hie.platform.access import Permission, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import Identity, current_identity
from hie.platform.auth.models import User
from hie.platform.db import platform_session
from hie.platform.figures import WHEN, WindowQuerySchema, asked_window
from hie.platform.schemas import PathSchema
from hie.tenants.models import Institution

HTTP_URL = validate.URL(schemes={"http", "https"}, require_tld=False, error="must be an http(s) URL")


class MaterialSchema(PathSchema):
    """A handout, slides or reading for the session, by link."""

    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    url = fields.String(required=True, validate=[validate.Length(max=500), HTTP_URL])


class TeachingInSchema(PathSchema):
    """A session as the host institution announces it."""

    topic = fields.String(required=True, validate=validate.Length(min=1, max=200))
    lecturer = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64),
                             metadata={"description": "Username of a clinician of your institution; default you"})
    starts_at = fields.AwareDateTime(required=True, default_timezone=None, validate=WHEN)
    ends_at = fields.AwareDateTime(required=True, default_timezone=None, validate=WHEN,
                                   metadata={"description": "After starts_at, at most 8 hours later"})
    credits = fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0, max=10),
                           metadata={"description": "Continuing-education credit for attending (0 to 10)"})
    invited_institutions = fields.List(fields.String(validate=validate.Length(min=1, max=32)), required=True,
                                       validate=validate.Length(min=1, max=300),
                                       metadata={"description": "Codes of active institutions"})
    materials = fields.List(fields.Nested(MaterialSchema), load_default=list, validate=validate.Length(max=30))

    @validates_schema
    def _topic(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "topic" in data and not data["topic"].strip():
            raise MarshmallowError("must not be blank", "topic")


class TeachingPatchSchema(PathSchema):
    """What the host may change: materials, the recording once it ended, a cancellation before it starts."""

    materials = fields.List(fields.Nested(MaterialSchema), validate=validate.Length(max=30))
    recording_url = fields.String(allow_none=True, validate=[validate.Length(max=500), HTTP_URL])
    cancelled = fields.Boolean(validate=validate.Equal(True, error="can only be set to true: a cancellation is "
                                                                   "final"))

    @validates_schema
    def _something(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if not data:
            raise MarshmallowError("name materials, recording_url or cancelled", "_schema")


class TeachingQuerySchema(PathSchema):
    """Which sessions: upcoming (not yet ended), past, or all."""

    when = fields.String(load_default=None, validate=validate.OneOf(("upcoming", "past")))


class AttendanceInSchema(PathSchema):
    """The host records a registrant's attendance."""

    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    joined_at = fields.AwareDateTime(required=True, default_timezone=None, validate=WHEN)
    left_at = fields.AwareDateTime(required=True, default_timezone=None, validate=WHEN)


class MyQuerySchema(PathSchema):
    """One local calendar year, or all."""

    year = fields.Integer(strict=False, validate=validate.Range(min=2000, max=2999))


class InstitutionRefSchema(Schema):
    """An institution by code and name."""

    code = fields.String()
    name = fields.String()


class RegistrationOutSchema(Schema):
    """A registration and the attendance and credit recorded on it (credits null until attendance is recorded)."""

    class Meta:
        ordered = True

    session_id = fields.String()
    username = fields.String()
    institution = fields.String()
    registered_at = fields.AwareDateTime()
    joined_at = fields.AwareDateTime(allow_none=True)
    left_at = fields.AwareDateTime(allow_none=True)
    credits = fields.Float(allow_none=True)


class TeachingOutSchema(Schema):
    """A session; video_url only for the host's staff and registrants, registrants only for the host."""

    class Meta:
        ordered = True

    id = fields.String()
    topic = fields.String()
    lecturer = fields.String()
    lecturer_name = fields.String()
    host_institution = fields.Nested(InstitutionRefSchema)
    starts_at = fields.AwareDateTime()
    ends_at = fields.AwareDateTime()
    credits = fields.Float()
    materials = fields.List(fields.Dict())
    recording_url = fields.String(allow_none=True)
    video_url = fields.String(allow_none=True, metadata={"description": "Null unless HIE_VIDEO_BASE_URL is set"})
    cancelled = fields.Boolean()
    invited_institutions = fields.List(fields.Nested(InstitutionRefSchema))
    registrations = fields.Integer()
    my_registration = fields.Nested(RegistrationOutSchema, allow_none=True)
    registrants = fields.List(fields.Nested(RegistrationOutSchema))


class YearCreditsSchema(Schema):
    """Sessions registered for in one local calendar year, those that earned credit, and the credits."""

    class Meta:
        ordered = True

    year = fields.Integer()
    sessions = fields.Integer()
    credited = fields.Integer()
    credits = fields.Float()


class MyTeachingSchema(Schema):
    """The caller's registrations and continuing-education credits."""

    class Meta:
        ordered = True

    registrations = fields.List(fields.Nested(TeachingOutSchema))
    credits_by_year = fields.List(fields.Nested(YearCreditsSchema))
    total_credits = fields.Float()


class TeachingStatsQuerySchema(WindowQuerySchema):
    """The window (sessions starting in [since, until)) and the grouping."""

    group_by = fields.String(load_default="county", validate=validate.OneOf(("county", "institution")))


class TeachingFiguresSchema(Schema):
    """One group's figures; registrations, attendances and credits null with suppressed true when 1 to 4
    registrations fall in it."""

    class Meta:
        ordered = True

    county = fields.String(allow_none=True, metadata={"description": "Region code of the institution's tenant"})
    county_name = fields.String(allow_none=True)
    institution = fields.String()
    institution_name = fields.String()
    sessions = fields.Integer(metadata={"description": "Sessions hosted"})
    registrations = fields.Integer(allow_none=True, metadata={"description": "Registrations of its clinicians"})
    attendances = fields.Integer(allow_none=True, metadata={"description": "Registrations with attendance recorded"})
    credited = fields.Integer(allow_none=True, metadata={"description": "Attendances that earned credit"})
    credits = fields.Float(allow_none=True)
    suppressed = fields.Boolean()


class TeachingStatsSchema(Schema):
    """The figures of the caller's scope in the window, in total and per group."""

    class Meta:
        ordered = True

    since = fields.AwareDateTime()
    until = fields.AwareDateTime()
    group_by = fields.String()
    min_cell = fields.Integer()
    total = fields.Nested(TeachingFiguresSchema)
    groups = fields.List(fields.Nested(TeachingFiguresSchema))


def _registration_view(registration: TeachingRegistration, users: dict[int, str],
                       codes: dict[int, str]) -> dict[str, Any]:
    return {"session_id": registration.session_id, "username": users.get(registration.user_id),
            "institution": codes.get(registration.institution_id), "registered_at": registration.registered_at,
            "joined_at": registration.joined_at, "left_at": registration.left_at, "credits": registration.credits}


def _views(identity: Identity, sessions: Sequence[TeachingSession], full: bool = False) -> list[dict[str, Any]]:
    """Sessions as shown to the caller, with a few batched look-ups for the whole page."""
    db = platform_session()
    ids = [s.id for s in sessions]
    invites: dict[str, list[int]] = {}
    for session_id, institution_id in db.execute(select(TeachingInvite.session_id, TeachingInvite.institution_id)
                                                 .where(TeachingInvite.session_id.in_(ids))):
        invites.setdefault(session_id, []).append(institution_id)
    counts = dict(db.execute(select(TeachingRegistration.session_id, func.count())
                             .where(TeachingRegistration.session_id.in_(ids))
                             .group_by(TeachingRegistration.session_id)).all())
    mine = {r.session_id: r for r in db.scalars(select(TeachingRegistration).where(
        TeachingRegistration.session_id.in_(ids), TeachingRegistration.user_id == identity.user_id))}
    hosted = [s.id for s in sessions if s.host_institution_id == identity.institution_id]
    registrants = list(db.scalars(select(TeachingRegistration).where(TeachingRegistration.session_id.in_(hosted))
                                  .order_by(TeachingRegistration.registered_at))) if full and hosted else []
    user_ids = {s.lecturer_user_id for s in sessions} | {r.user_id for r in [*mine.values(), *registrants]}
    users = {u.id: u for u in db.scalars(select(User).where(User.id.in_(user_ids)))}
    institution_ids = {i for ids_ in invites.values() for i in ids_} | {s.host_institution_id for s in sessions} \
        | {r.institution_id for r in [*mine.values(), *registrants]}
    institutions = {i.id: i for i in db.scalars(select(Institution).where(Institution.id.in_(institution_ids)))}
    names, codes = {i: u.username for i, u in users.items()}, {i: x.code for i, x in institutions.items()}
    out = []
    for s in sessions:
        host, own = s.host_institution_id == identity.institution_id, mine.get(s.id)
        shown_room = s.video_room if (host or own is not None) and not s.cancelled else None
        out.append({
            "id": s.id, "topic": s.topic, "lecturer": names.get(s.lecturer_user_id),
            "lecturer_name": users[s.lecturer_user_id].display_name if s.lecturer_user_id in users else None,
            "host_institution": institutions[s.host_institution_id], "starts_at": s.starts_at,
            "ends_at": s.ends_at, "credits": s.credits, "materials": s.materials, "recording_url": s.recording_url,
            "video_url": teaching.video_url(shown_room), "cancelled": s.cancelled,
            "invited_institutions": sorted((institutions[i] for i in invites.get(s.id, [])), key=lambda i: i.code),
            "registrations": counts.get(s.id, 0),
            "my_registration": _registration_view(own, names, codes) if own is not None else None,
            "registrants": [_registration_view(r, names, codes) for r in registrants if r.session_id == s.id]})
    return out


def _shown(identity: Identity, session: TeachingSession) -> dict[str, Any]:
    return _views(identity, [session], full=True)[0]


@blp.route("/teaching/sessions")
class TeachingSessions(MethodView):
    """Sessions the caller's institution hosts or is invited to."""

    decorators = [login_required]

    @blp.arguments(TeachingQuerySchema, location="query")
    @blp.response(200, TeachingOutSchema(many=True))
    @blp.paginate()
    def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """Upcoming sessions (soonest first), past ones, or all (newest first)"""
        identity = require(Permission.patient_read)
        rows, total = teaching.search(identity, query["when"], pagination_parameters.first_item,
                                      pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return _views(identity, rows)

    @blp.arguments(TeachingInSchema)
    @blp.response(201, TeachingOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Announce a session hosted by the caller's institution, inviting institutions"""
        identity = require(Permission.patient_write)
        return _shown(identity, teaching.create(identity, body))


@blp.route("/teaching/sessions/<string:session_id>")
class TeachingSessionById(MethodView):
    """One session."""

    decorators = [login_required]

    @blp.response(200, TeachingOutSchema)
    def get(self, session_id: str) -> dict[str, Any]:
        """Read a session the caller's institution hosts or is invited to"""
        identity = require(Permission.patient_read)
        found = teaching.visible(identity, session_id)
        audit.record("read", resource_type=teaching.RESOURCE, resource_id=found.id, purpose="education")
        return _shown(identity, found)

    @blp.arguments(TeachingPatchSchema)
    @blp.response(200, TeachingOutSchema)
    def patch(self, body: dict[str, Any], session_id: str) -> dict[str, Any]:
        """The host changes materials, links the recording after the end, or cancels before the start"""
        identity = require(Permission.patient_write)
        return _shown(identity, teaching.update(identity, session_id, body))


@blp.route("/teaching/sessions/<string:session_id>/register")
class TeachingRegister(MethodView):
    """The caller's registration."""

    decorators = [login_required]

    @blp.response(201, TeachingOutSchema)
    def post(self, session_id: str) -> dict[str, Any]:
        """Register for a session the caller's institution is invited to, until it ends"""
        identity = require(Permission.patient_read)
        registration = teaching.register(identity, session_id)
        return _shown(identity, platform_session().get(TeachingSession, registration.session_id))

    @blp.response(204)
    def delete(self, session_id: str) -> None:
        """Withdraw the registration before the session starts"""
        teaching.unregister(require(Permission.patient_read), session_id)


@blp.route("/teaching/sessions/<string:session_id>/attendance/join")
class TeachingJoin(MethodView):
    """The registrant joins."""

    decorators = [login_required]

    @blp.response(200, RegistrationOutSchema)
    def post(self, session_id: str) -> dict[str, Any]:
        """Record that the caller joined (from 15 minutes before the start until the end)"""
        identity = require(Permission.patient_read)
        return _own_view(identity, teaching.join(identity, session_id))


@blp.route("/teaching/sessions/<string:session_id>/attendance/leave")
class TeachingLeave(MethodView):
    """The registrant leaves."""

    decorators = [login_required]

    @blp.response(200, RegistrationOutSchema)
    def post(self, session_id: str) -> dict[str, Any]:
        """Record that the caller left (until 15 minutes after the end); the credit is computed"""
        identity = require(Permission.patient_read)
        return _own_view(identity, teaching.leave(identity, session_id))


@blp.route("/teaching/sessions/<string:session_id>/attendance")
class TeachingAttendance(MethodView):
    """The host records attendance."""

    decorators = [login_required]

    @blp.arguments(AttendanceInSchema)
    @blp.response(200, RegistrationOutSchema)
    def post(self, body: dict[str, Any], session_id: str) -> dict[str, Any]:
        """Record or correct a registrant's joining and leaving times; the credit is computed"""
        registration = teaching.record_attendance(require(Permission.patient_write), session_id, body)
        institution = platform_session().get(Institution, registration.institution_id)
        return _registration_view(registration, {registration.user_id: body["username"]},
                                  {registration.institution_id: institution.code if institution else ""})


def _own_view(identity: Identity, registration: TeachingRegistration) -> dict[str, Any]:
    return _registration_view(registration, {identity.user_id: identity.username},
                              {identity.institution_id: identity.institution_code})


@blp.route("/teaching/me")
class MyTeaching(MethodView):
    """The caller's continuing education."""

    decorators = [login_required]

    @blp.arguments(MyQuerySchema, location="query")
    @blp.response(200, MyTeachingSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Sessions the caller registered for, newest first, and the credits earned per year"""
        identity = require(Permission.patient_read)
        result = teaching.mine(identity, query.get("year"))
        sessions = [s for _registration, s in result["registrations"]]
        return {**result, "registrations": _views(identity, sessions)}


def teaching_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    """Health, tenant and institution administrators only, checked before the query string (403, audited)."""
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        identity = current_identity()
        if not identity.roles & teaching.ADMIN_ROLES:
            audit.record("authorize", outcome="denied", detail="teaching figures need an administrator role")
            abort(403, message="Teaching figures are for health, tenant and institution administrators.")
        return view(*args, **kwargs)
    return guarded


@blp.route("/stats/teaching")
class TeachingStatistics(MethodView):
    """Aggregates for administrators, without names of people."""

    decorators = [teaching_admin, login_required]

    @blp.arguments(TeachingStatsQuerySchema, location="query")
    @blp.response(200, TeachingStatsSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Sessions, registrations, attendances and credits by county or institution, the caller's scope only"""
        identity = current_identity()
        window = asked_window(query, ZoneInfo(current_app.config["HIE"].timezone))
        session = platform_session()
        figures = teaching.teaching_figures(session, teaching.stats_scope(session, identity), window,
                                            query["group_by"])
        suppressed = sum(group["suppressed"] for group in figures["groups"])
        audit.record("read", resource_type="TeachingStatistics", purpose="health_management",
                     detail=f"since={window.since.isoformat()} until={window.until.isoformat()} "
                            f"group_by={figures['group_by']} groups={len(figures['groups'])} suppressed={suppressed}")
        return {"since": window.since, "until": window.until, **figures}
