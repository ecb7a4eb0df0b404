"""REST API of referral capacity: publish a department's slots, read free slots, suggest where to refer."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import select

from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session, utcnow
from hie.platform.schemas import PathSchema
from hie.referral import capacity, services
from hie.referral.api import blp
from hie.referral.capacity import local_day
from hie.referral.models import Direction
from hie.tenants.models import Institution

DEFAULT_DAYS = 14
MAX_DAYS = 92
# Slot days are clinic days: a bound keeps a day at the edge of the calendar from overflowing its UTC bounds
IN_SERVICE = validate.Range(date(2000, 1, 1), date(2099, 12, 31), error="must be a day from 2000 to 2099")


class DaySlotsSchema(PathSchema):
    """One day's capacity."""

    day = fields.Date(required=True, validate=IN_SERVICE)
    capacity = fields.Integer(required=True, strict=True, validate=validate.Range(0, capacity.MAX_CAPACITY))


class SlotsInSchema(PathSchema):
    """A department's capacity for some days; institution defaults to the caller's own."""

    institution = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    department = fields.String(required=True, validate=validate.Length(min=1, max=100))
    slots = fields.List(fields.Nested(DaySlotsSchema), required=True, validate=validate.Length(min=1, max=366))

    @validates_schema
    def _each_day_once(self, data: dict[str, Any], **_: object) -> None:
        seen: set[date] = set()
        for index, slot in enumerate(data.get("slots", [])):
            if slot["day"] in seen:
                raise ValidationError({f"slots[{index}].day": ["is given twice"]})
            seen.add(slot["day"])
        if not data.get("department", "x").strip():
            raise ValidationError({"department": ["must not be blank"]})


class WindowSchema(PathSchema):
    """Days from and to (inclusive); today and the next 13 days by default, at most 92."""

    start = fields.Date(data_key="from", load_default=None, validate=IN_SERVICE)
    end = fields.Date(data_key="to", load_default=None, validate=IN_SERVICE)

    @validates_schema
    def _window(self, data: dict[str, Any], **_: object) -> None:
        start, end = data.get("start"), data.get("end")
        if start is not None and end is not None and end < start:
            raise ValidationError({"to": ["must not be before from"]})
        if start is not None and end is not None and (end - start).days >= MAX_DAYS:
            raise ValidationError({"to": [f"must be within {MAX_DAYS} days of from"]})


class SlotsQuerySchema(WindowSchema):
    """Free slots, by institution code and department."""

    institution = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    department = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


class SuggestionQuerySchema(WindowSchema):
    """Where to refer: the direction, the department, and optionally the patient (for the family-doctor team)."""

    direction = fields.Enum(Direction, required=True)
    department = fields.String(required=True, validate=validate.Length(min=1, max=100))
    patient_id = fields.String(load_default=None, validate=validate.Length(min=1, max=36))


class SlotOutSchema(Schema):
    """One department's day: capacity, booked and free."""

    institution = fields.String()
    institution_name = fields.String()
    department = fields.String()
    day = fields.Date()
    capacity = fields.Integer()
    booked = fields.Integer()
    free = fields.Integer()


class SuggestionOutSchema(Schema):
    """A receiver that fits, where it lies, and its free slots in the window."""

    institution = fields.String()
    name = fields.String()
    level = fields.String()
    county = fields.String(allow_none=True)
    city = fields.String(allow_none=True)
    same_county = fields.Boolean()
    same_city = fields.Boolean()
    free = fields.Integer()


def _window(args: dict[str, Any]) -> tuple[date, date]:
    start = args.get("start") or local_day(utcnow())
    end = args.get("end") or start + timedelta(days=DEFAULT_DAYS - 1)
    if end < start:
        services._invalid("to", "must not be before from")
    return start, end


def _shown(slot: Any, code: str, name: str) -> dict[str, Any]:
    return {"institution": code, "institution_name": name, "department": slot.department, "day": slot.day,
            "capacity": slot.capacity, "booked": slot.booked, "free": max(slot.capacity - slot.booked, 0)}


@blp.route("/referral-slots")
class ReferralSlots(MethodView):
    """Receiving departments' capacity per day."""

    decorators = [login_required]

    @blp.arguments(SlotsQuerySchema, location="query")
    @blp.response(200, SlotOutSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Published slots and how many are free, for any clinician: capacity is not patient data"""
        require(Permission.patient_read)
        session = platform_session()
        institution_id = None
        if args["institution"] is not None:
            institution_id = session.scalar(select(Institution.id).where(Institution.code == args["institution"]))
            if institution_id is None:
                services._invalid("institution", f"{args['institution']!r} is not an institution")
        start, end = _window(args)
        return [_shown(*row) for row in capacity.free_slots(session, institution_id, args["department"], start, end)]

    @blp.arguments(SlotsInSchema)
    @blp.response(200, SlotOutSchema(many=True))
    def post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Publish (set) a department's slots per day: clinical staff of the receiving institution only"""
        identity = require(Permission.patient_write)
        if body["institution"] not in (None, identity.institution_code):
            abort(404, message=f"No institution {body['institution']!r} whose slots you may publish.")
        session = platform_session()
        institution = session.get_one(Institution, identity.institution_id)
        department = body["department"].strip()
        shown = []
        for index, day in enumerate(body["slots"]):
            try:
                slot = capacity.publish(session, institution.id, department, day["day"], day["capacity"])
            except capacity.SlotError as error:
                services._invalid(f"slots[{index}].capacity", str(error))
            shown.append(_shown(slot, institution.code, institution.name))
        session.flush()
        return shown


@blp.route("/referrals/suggestions")
class ReferralSuggestions(MethodView):
    """Where the caller could refer a patient."""

    decorators = [login_required]

    @blp.arguments(SuggestionQuerySchema, location="query")
    @blp.response(200, SuggestionOutSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Receivers of a higher (up), same (lateral) or lower (down) level publishing the department's slots"""
        identity = require(Permission.patient_read)
        person_id = None
        if args["patient_id"] is not None:
            person_id = services._own_patient(identity, args["patient_id"], "patient_id", "read")
        start, end = _window(args)
        found = capacity.suggest(identity, args["direction"], args["department"].strip(), start, end, person_id)
        return [{"institution": s.institution.code, "name": s.institution.name, "level": s.institution.level.value,
                 "county": s.county, "city": s.city, "same_county": s.same_county, "same_city": s.same_city,
                 "free": s.free} for s in found]
