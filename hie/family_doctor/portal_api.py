"""The resident's own portal (/api/v1/me/...): role resident only; no route takes a patient or person id."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Response, request
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from hie.family_doctor import portal
from hie.family_doctor.api import blp
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import utcnow
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE
from hie.platform.schemas import PathSchema

FHIR_JSON = "application/fhir+json"
WHEN = validate.Range(min=EARLIEST_QUERY_DATE, max=LATEST_QUERY_DATE)
MAX_WINDOW = timedelta(days=3 * 366)


class _CodeName(Schema):
    code = fields.String()
    name = fields.String()


class MyPackageOutSchema(Schema):
    """A signed service package: what it includes and how many follow-ups a year."""

    code = fields.String()
    name = fields.String()
    services = fields.List(fields.String())
    follow_ups_per_year = fields.Integer()
    conditions = fields.List(fields.String())


class MyTeamMemberOutSchema(Schema):
    """A member of the resident's team: name and what they do in the team."""

    display_name = fields.String()
    team_role = fields.String()


class MyTeamOutSchema(Schema):
    """The resident's team and its institution."""

    code = fields.String()
    name = fields.String()
    institution = fields.Nested(_CodeName)
    members = fields.List(fields.Nested(MyTeamMemberOutSchema))


class MyContractOutSchema(Schema):
    """The resident's active contract."""

    id = fields.String()
    status = fields.String()
    starts_on = fields.Date()
    ends_on = fields.Date()
    signed_at = fields.AwareDateTime()
    packages = fields.List(fields.Nested(MyPackageOutSchema))
    priority_groups = fields.List(fields.Nested(_CodeName))
    team = fields.Nested(MyTeamOutSchema)


class VitalsQuerySchema(PathSchema):
    """The window of readings and trends; both ends with a time zone."""

    since = fields.AwareDateTime(default_timezone=None, validate=WHEN,
                                 metadata={"description": "Default: a year before until"})
    until = fields.AwareDateTime(default_timezone=None, validate=WHEN, metadata={"description": "Default: now"})

    @validates_schema
    def _window(self, data: dict[str, Any], **_kwargs: Any) -> None:
        since, until = data.get("since"), data.get("until") or utcnow()
        if since is not None and since >= until:
            raise ValidationError("must be before until (or now)", "since")
        if since is not None and until - since > MAX_WINDOW:
            raise ValidationError("must be at most three years before until (or now)", "since")


class PointOutSchema(Schema):
    """One value of a measure at one time."""

    taken_at = fields.AwareDateTime()
    value = fields.Float()
    self_reported = fields.Boolean()


class TrendOutSchema(Schema):
    """One measure over the window, and its last 30 days against the 30 before."""

    measure = fields.String()
    unit = fields.String(metadata={"description": "UCUM"})
    latest = fields.Nested(PointOutSchema, allow_none=True)
    mean_30d = fields.Float(allow_none=True, metadata={"description": "Mean of the 30 days up to until"})
    count_30d = fields.Integer()
    mean_previous_30d = fields.Float(allow_none=True, metadata={"description": "Mean of the 30 days before those"})
    change_30d = fields.Float(allow_none=True, metadata={"description": "mean_30d - mean_previous_30d"})
    series = fields.List(fields.Nested(PointOutSchema), metadata={"description": "Oldest first, in the window"})


class ReadingOutSchema(Schema):
    """One set of readings, marked self-reported (the resident's own device) or taken by the team."""

    id = fields.Integer()
    taken_at = fields.AwareDateTime()
    setting = fields.String()
    self_reported = fields.Boolean()
    source = fields.String(metadata={"description": "self or team"})
    team = fields.String(allow_none=True)
    institution = fields.String(allow_none=True)
    values = fields.Dict(keys=fields.String(), values=fields.Float())


class MyVitalsOutSchema(Schema):
    """A page of readings (newest first; X-Pagination counts them) and the trends over the whole window."""

    since = fields.AwareDateTime()
    until = fields.AwareDateTime()
    readings = fields.List(fields.Nested(ReadingOutSchema))
    trends = fields.List(fields.Nested(TrendOutSchema))


class DueOutSchema(Schema):
    """A scheduled follow-up."""

    id = fields.String()
    condition = fields.String()
    due_on = fields.Date()
    overdue = fields.Boolean()
    team = fields.String(allow_none=True)


class DoneOutSchema(Schema):
    """A follow-up done, with the verdict the specification's table gave."""

    id = fields.String()
    condition = fields.String()
    done_at = fields.AwareDateTime()
    classification = fields.String(allow_none=True)
    face_to_face = fields.Boolean(allow_none=True)
    systolic = fields.Float(allow_none=True)
    diastolic = fields.Float(allow_none=True)
    fasting_glucose = fields.Float(allow_none=True)
    team = fields.String(allow_none=True)


class MyFollowUpsOutSchema(Schema):
    """The next follow-up due, every scheduled one, and a page of those done (X-Pagination counts them)."""

    next_due = fields.Nested(DueOutSchema, allow_none=True)
    scheduled = fields.List(fields.Nested(DueOutSchema))
    done = fields.List(fields.Nested(DoneOutSchema))


class DeliveryOutSchema(Schema):
    """A health-education article delivered to the resident; body in Markdown."""

    id = fields.Integer(metadata={"description": "The delivery id, for the read receipt"})
    article_id = fields.Integer()
    title = fields.String()
    body = fields.String(metadata={"description": "Markdown without raw HTML"})
    tags = fields.List(fields.String())
    published_at = fields.AwareDateTime(allow_none=True)
    delivered_at = fields.AwareDateTime()
    read_at = fields.AwareDateTime(allow_none=True)
    read = fields.Boolean()


def _resident() -> Any:
    return require(Permission.own_record_read)


@blp.route("/me/contract")
class PortalContract(MethodView):
    """The resident's own contract."""

    decorators = [login_required]

    @blp.response(200, MyContractOutSchema)
    def get(self) -> dict[str, Any]:
        """Your active family-doctor contract: team, institution, members, packages and term (404 if none)"""
        return portal.contract(_resident())


@blp.route("/me/vitals")
class PortalVitals(MethodView):
    """The resident's own readings."""

    decorators = [login_required]

    @blp.arguments(VitalsQuerySchema, location="query")
    @blp.response(200, MyVitalsOutSchema)
    @blp.paginate()
    def get(self, window: dict[str, Any], pagination_parameters: Any) -> dict[str, Any]:
        """Your readings, by your team and your own device (marked), with trends per measure over the window"""
        identity = _resident()
        shown, total = portal.vitals(identity, window.get("since"), window.get("until"),
                                     pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return shown


@blp.route("/me/follow-ups")
class PortalFollowUps(MethodView):
    """The resident's own chronic-disease follow-ups."""

    decorators = [login_required]

    @blp.response(200, MyFollowUpsOutSchema)
    @blp.paginate()
    def get(self, pagination_parameters: Any) -> dict[str, Any]:
        """Your follow-ups done (newest first, with classification), those scheduled and the next one due"""
        identity = _resident()
        shown, total = portal.follow_ups(identity, pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return shown


@blp.route("/me/record")
class PortalRecord(MethodView):
    """The resident's shared health record."""

    decorators = [login_required]

    @blp.response(200, {"type": "object", "description": "A FHIR searchset Bundle"}, content_type=FHIR_JSON,
                  description="Patient/$everything of your master person, from every tenant, as yourself")
    def get(self) -> Response:
        """Your shared health record from every institution and tenant, as a FHIR Bundle"""
        bundle = portal.record(_resident(), request.host_url)
        return Response(bundle, mimetype=FHIR_JSON, headers={"Cache-Control": "no-store"})


@blp.route("/me/education")
class PortalEducation(MethodView):
    """Health education delivered to the resident."""

    decorators = [login_required]

    @blp.response(200, DeliveryOutSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters: Any) -> list[dict[str, Any]]:
        """Articles delivered to you, newest first, with whether you have read them"""
        identity = _resident()
        rows, total = portal.deliveries(identity, pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/me/education/<int:delivery_id>/read")
class PortalEducationRead(MethodView):
    """The read receipt of one delivered article."""

    decorators = [login_required]

    @blp.response(200, DeliveryOutSchema)
    def post(self, delivery_id: int) -> dict[str, Any]:
        """Mark an article delivered to you as read (the first reading counts); any other id is 404"""
        return portal.read_receipt(_resident(), delivery_id)
