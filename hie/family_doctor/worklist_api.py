"""REST routes of the doctor's desk: the worklist and its counts, the team's alerts, resolving them, and sending
the referral an alert drafted."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from hie.family_doctor import alerts, worklist
from hie.family_doctor.api import blp
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.schemas import PathSchema
from hie.referral import views as referral_views
from hie.referral.models import Urgency
from hie.referral.schemas import DiagnosisSchema, ReferralOutSchema

ALL_SORTS = tuple(dict.fromkeys(sort for sorts in worklist.SORTS.values() for sort in sorts))


class WorklistQuerySchema(PathSchema):
    """Which section, sorted how (each section has its own sorts)."""

    class Meta:
        ordered = True

    section = fields.String(load_default="due", validate=validate.OneOf(worklist.SECTIONS),
                            metadata={"description": "due: this week from today to Sunday; overdue: due before "
                                                     "today; alerts: residents with an open alert; expiring: "
                                                     f"contracts ending within {worklist.EXPIRING_DAYS} days"})
    sort = fields.String(load_default=None, validate=validate.OneOf(ALL_SORTS), metadata={
        "description": "; ".join(f"{name}: {', '.join(sorts)} (default {sorts[0]})"
                                 for name, sorts in worklist.SORTS.items())})

    @validates_schema
    def _sort_of_section(self, data: dict[str, Any], **_: object) -> None:
        sorts = worklist.SORTS[data.get("section", "due")]
        if data.get("sort") is not None and data["sort"] not in sorts:
            raise ValidationError(f"must be one of {', '.join(sorts)} for section {data.get('section', 'due')}",
                                  "sort")


class LastVisitSchema(Schema):
    """The resident's latest visit of one condition."""

    condition = fields.String()
    classification = fields.String(allow_none=True)
    visited_at = fields.AwareDateTime()


class WorklistEntrySchema(Schema):
    """One resident on the worklist, by record id and master person (never by name: read the patient for that)."""

    section = fields.String()
    contract_id = fields.String(allow_none=True)
    patient_id = fields.String(allow_none=True)
    patient_tenant_code = fields.String(allow_none=True)
    master_person_id = fields.String()
    contract_ends_on = fields.Date(allow_none=True)
    follow_up_id = fields.String(allow_none=True)
    condition = fields.String(allow_none=True)
    due_on = fields.Date(allow_none=True)
    days_overdue = fields.Integer(allow_none=True)
    open_alerts = fields.Integer(allow_none=True)
    alerted_at = fields.AwareDateTime(allow_none=True)
    last_classification = fields.String(allow_none=True)
    last_visit_at = fields.AwareDateTime(allow_none=True)
    last_visits = fields.List(fields.Nested(LastVisitSchema))


class WorklistSummarySchema(Schema):
    """How many entries each section holds today."""

    team = fields.String()
    today = fields.Date()
    week_ends_on = fields.Date()
    due = fields.Integer()
    overdue = fields.Integer()
    alerts = fields.Integer()
    expiring = fields.Integer()


class AlertQuerySchema(PathSchema):
    """Open alerts by default."""

    resolved = fields.Boolean(load_default=False)


class AlertOutSchema(Schema):
    """An alert of the team, with the draft referral it proposes, if any (a body for POST /api/v1/referrals)."""

    id = fields.Integer()
    kind = fields.String(metadata={"description": "reading, urgent_referral or referral_recommended"})
    message = fields.String()
    contract_id = fields.String(allow_none=True)
    patient_id = fields.String(allow_none=True)
    patient_tenant_code = fields.String(allow_none=True)
    master_person_id = fields.String()
    follow_up_id = fields.String(allow_none=True)
    vitals_id = fields.Integer(allow_none=True)
    draft_referral = fields.Dict(allow_none=True)
    created_at = fields.AwareDateTime()
    resolved_at = fields.AwareDateTime(allow_none=True)
    resolved_by = fields.String(allow_none=True)
    resolution = fields.String(allow_none=True)


class ResolveSchema(PathSchema):
    """How the alert was dealt with."""

    resolution = fields.String(required=True, validate=validate.Length(min=1, max=500))

    @validates_schema
    def _said(self, data: dict[str, Any], **_: object) -> None:
        if not data.get("resolution", "x").strip():
            raise ValidationError("must say how the alert was dealt with", "resolution")


class SendReferralSchema(PathSchema):
    """Changes to the draft before it is sent (each left out keeps the draft's); patient and direction are fixed."""

    receiving_institution = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    department = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    urgency = fields.String(load_default=None, validate=validate.OneOf([u.value for u in Urgency]))
    reason = fields.String(load_default=None, validate=validate.Length(min=1, max=2000))
    clinical_summary = fields.String(load_default=None, validate=validate.Length(max=20000))
    diagnoses = fields.List(fields.Nested(DiagnosisSchema), load_default=None, validate=validate.Length(max=20))
    records = fields.List(fields.String(validate=validate.Length(min=1, max=120)), load_default=None,
                          validate=validate.Length(max=50))


@blp.route("/family-doctor/worklist")
class Worklist(MethodView):
    """The caller's team's worklist."""

    decorators = [login_required]

    @blp.arguments(WorklistQuerySchema, location="query")
    @blp.response(200, WorklistEntrySchema(many=True))
    @blp.paginate()
    def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """One section of the worklist (today in the platform's time zone; weeks run Monday to Sunday)"""
        rows, total = worklist.section(require(Permission.patient_read), query["section"], query.get("sort"),
                                       pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/family-doctor/worklist/summary")
class WorklistSummary(MethodView):
    """The worklist's counts."""

    decorators = [login_required]

    @blp.response(200, WorklistSummarySchema)
    def get(self) -> dict[str, Any]:
        """How many follow-ups are due this week and overdue, residents with an open alert, contracts expiring"""
        return worklist.summary(require(Permission.patient_read))


@blp.route("/family-doctor/alerts")
class Alerts(MethodView):
    """The caller's team's alerts."""

    decorators = [login_required]

    @blp.arguments(AlertQuerySchema, location="query")
    @blp.response(200, AlertOutSchema(many=True))
    @blp.paginate()
    def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """The team's open alerts (or resolved ones), newest first"""
        rows, total = alerts.search(require(Permission.patient_read), query["resolved"],
                                    pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/family-doctor/alerts/<int:alert_id>")
class AlertById(MethodView):
    """One alert."""

    decorators = [login_required]

    @blp.response(200, AlertOutSchema)
    def get(self, alert_id: int) -> dict[str, Any]:
        """An alert of the caller's team"""
        return alerts.read(require(Permission.patient_read), alert_id)


@blp.route("/family-doctor/alerts/<int:alert_id>/resolve")
class AlertResolve(MethodView):
    """open -> resolved."""

    decorators = [login_required]

    @blp.arguments(ResolveSchema)
    @blp.response(200, AlertOutSchema)
    def post(self, body: dict[str, Any], alert_id: int) -> dict[str, Any]:
        """The team dealt with the alert, saying how"""
        return alerts.resolve(require(Permission.patient_write), alert_id, body)


@blp.route("/family-doctor/alerts/<int:alert_id>/referral")
class AlertReferral(MethodView):
    """Send the alert's draft referral."""

    decorators = [login_required]

    @blp.arguments(SendReferralSchema)
    @blp.response(201, ReferralOutSchema)
    def post(self, body: dict[str, Any], alert_id: int) -> dict[str, Any]:
        """Send the draft upward referral (with changes, e.g. receiving_institution) as the team's institution: the
        answer is the referral, the follow-up records it, the alert is resolved"""
        referral = alerts.send_referral(require(Permission.patient_write), alert_id, body)
        return referral_views.full_view(platform_session(), referral)
