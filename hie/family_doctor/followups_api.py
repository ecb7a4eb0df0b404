"""REST routes of chronic-disease follow-ups: record a visit (scheduled or not), read one, list a contract's."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.family_doctor import followups
from hie.family_doctor.api import blp
from hie.family_doctor.models import Alert, Condition, Contract, FollowUp, Vitals
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.auth.models import User
from hie.platform.db import platform_session
from hie.platform.schemas import PathSchema

LEVELS = ("good", "fair", "poor")


def _blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


def _plausible(value: datetime) -> None:
    if not 1900 <= value.year <= 2199:
        raise ValidationError("must lie in the years 1900 to 2199")


def _reading(low: float, high: float, unit: str) -> fields.Float:
    return fields.Float(load_default=None, allow_none=True, allow_nan=False, metadata={"description": unit},
                        validate=validate.Range(low, high, error=f"must lie within {{min}}..{{max}} {unit}"))


class VisitVitalsSchema(PathSchema):
    """Readings taken at the visit; each becomes a FHIR Observation (bounds of what a body can measure are checked
    again by the vitals service)."""

    systolic = _reading(0, 400, "mm[Hg]")
    diastolic = _reading(0, 400, "mm[Hg]")
    heart_rate = _reading(0, 400, "/min")
    fasting_glucose = _reading(0, 200, "mmol/L")
    random_glucose = _reading(0, 200, "mmol/L")
    weight = _reading(0, 700, "kg")
    height = _reading(0, 300, "cm")
    waist = _reading(0, 400, "cm")
    spo2 = _reading(0, 100, "%")
    temperature = _reading(0, 50, "Cel")


class LifestyleSchema(PathSchema):
    """The specification's lifestyle guidance items, as found at this visit."""

    smoking_per_day = fields.Integer(strict=True, load_default=None, allow_none=True,
                                     validate=validate.Range(0, 200), metadata={"description": "cigarettes"})
    alcohol_per_day = fields.Float(load_default=None, allow_none=True, allow_nan=False, validate=validate.Range(0, 50),
                                   metadata={"description": "liang (两, 50 g) of liquor"})
    exercise_per_week = fields.Integer(strict=True, load_default=None, allow_none=True,
                                       validate=validate.Range(0, 28), metadata={"description": "sessions"})
    exercise_minutes = fields.Integer(strict=True, load_default=None, allow_none=True,
                                      validate=validate.Range(0, 600), metadata={"description": "minutes a session"})
    salt_intake = fields.String(load_default=None, allow_none=True,
                                validate=validate.OneOf(("light", "moderate", "heavy")))
    staple_food_per_day = fields.Integer(strict=True, load_default=None, allow_none=True,
                                         validate=validate.Range(0, 3000), metadata={"description": "grams"})
    diet = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    psychological_adjustment = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(LEVELS))
    compliance = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(LEVELS),
                               metadata={"description": "follows medical advice (遵医行为)"})


class AdverseReactionsSchema(PathSchema):
    """Whether the medication caused adverse reactions, and which."""

    present = fields.Boolean(required=True)
    description = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))

    @validates_schema
    def _described(self, data: dict[str, Any], **_: object) -> None:
        if data.get("present") and not (data.get("description") or "").strip():
            raise ValidationError("must say which reactions", "description")


class MedicationSchema(PathSchema):
    """One drug the resident takes."""

    name = fields.String(required=True, validate=[validate.Length(min=1, max=100), _blank])
    dose = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=50))
    frequency = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=50))


class VisitSchema(PathSchema):
    """The follow-up form (National Basic Public Health Service Specification, 3rd ed.)."""

    visited_at = fields.AwareDateTime(default_timezone=None, load_default=None, validate=_plausible,
                                      metadata={"description": "Default: now"})
    method = fields.String(load_default=None, validate=validate.OneOf(tuple(followups.SETTINGS)),
                           metadata={"description": "clinic or home is face to face, phone is not"})
    face_to_face = fields.Boolean(load_default=None)
    symptoms = fields.List(fields.String(validate=validate.Length(min=1, max=60)), load_default=list,
                           validate=validate.Length(max=20),
                           metadata={"description": "Danger symptom codes of the condition (see the rules table)"})
    vitals = fields.Nested(VisitVitalsSchema, load_default=None, allow_none=True)
    lifestyle = fields.Nested(LifestyleSchema, load_default=None, allow_none=True)
    medication_adherence = fields.String(load_default=None, allow_none=True,
                                         validate=validate.OneOf(("regular", "intermittent", "none")))
    adverse_reactions = fields.Nested(AdverseReactionsSchema, load_default=None, allow_none=True)
    medications = fields.List(fields.Nested(MedicationSchema), load_default=list, validate=validate.Length(max=20))
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class UnscheduledVisitSchema(VisitSchema):
    """A visit nobody scheduled: which contract and which condition."""

    contract_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    condition = fields.Enum(Condition, required=True)


class AlertBriefSchema(Schema):
    """An alert the visit raised."""

    id = fields.Integer()
    kind = fields.String()
    resolved = fields.Boolean()


class FollowUpOutSchema(Schema):
    """A follow-up: scheduled with its due date, or done with its form and verdict. The patient by record id only."""

    id = fields.String()
    contract_id = fields.String()
    patient_id = fields.String()
    patient_tenant_code = fields.String()
    master_person_id = fields.String()
    condition = fields.String()
    status = fields.String()
    due_on = fields.Date()
    visited_at = fields.AwareDateTime(allow_none=True)
    recorded_by = fields.String(allow_none=True)
    method = fields.String(allow_none=True)
    face_to_face = fields.Boolean(allow_none=True)
    unscheduled = fields.Boolean(allow_none=True)
    symptoms = fields.List(fields.String())
    vitals = fields.Dict(allow_none=True)
    vitals_id = fields.Integer(allow_none=True)
    observations = fields.List(fields.String())
    lifestyle = fields.Dict(allow_none=True)
    medication_adherence = fields.String(allow_none=True)
    adverse_reactions = fields.Dict(allow_none=True)
    medications = fields.List(fields.Dict())
    note = fields.String(allow_none=True)
    classification = fields.String(allow_none=True)
    reasons = fields.List(fields.String())
    refer = fields.String(allow_none=True, metadata={"description": "urgent, recommended or null"})
    next_due = fields.Date(allow_none=True)
    referral_id = fields.String(allow_none=True)
    alerts = fields.List(fields.Nested(AlertBriefSchema))
    created_at = fields.AwareDateTime()


def views(session: Session, rows: list[tuple[FollowUp, Contract]]) -> list[dict[str, Any]]:
    """Follow-ups as the API shows them, with their Observations and alerts, in three queries for any page."""
    ids = [follow_up.id for follow_up, _contract in rows]
    vitals_ids = {f.vitals_id for f, _c in rows if f.vitals_id is not None}
    observations = dict(session.execute(select(Vitals.id, Vitals.observations)
                                        .where(Vitals.id.in_(vitals_ids))).all()) if vitals_ids else {}
    alerts: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for follow_up_id, alert_id, kind, resolved_at in session.execute(
                select(Alert.follow_up_id, Alert.id, Alert.kind, Alert.resolved_at)
                .where(Alert.follow_up_id.in_(ids)).order_by(Alert.id)):
            alerts[follow_up_id].append({"id": alert_id, "kind": kind, "resolved": resolved_at is not None})
    users = {f.done_by for f, _c in rows if f.done_by is not None}
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(users))).all()) if users else {}
    shown = []
    for follow_up, contract in rows:
        form = follow_up.form or {}
        shown.append({
            "id": follow_up.id, "contract_id": contract.id, "patient_id": contract.patient_id,
            "patient_tenant_code": contract.tenant_code, "master_person_id": follow_up.master_person_id,
            "condition": follow_up.condition.value, "status": follow_up.status.value, "due_on": follow_up.due_on,
            "visited_at": follow_up.done_at, "recorded_by": names.get(follow_up.done_by) if follow_up.done_by
            else None, "method": form.get("method"), "face_to_face": follow_up.face_to_face,
            "unscheduled": form.get("unscheduled"), "symptoms": form.get("symptoms", []),
            "vitals": form.get("vitals"), "vitals_id": follow_up.vitals_id,
            "observations": [f"Observation/{i}" for i in observations.get(follow_up.vitals_id, [])],
            "lifestyle": form.get("lifestyle"), "medication_adherence": form.get("medication_adherence"),
            "adverse_reactions": form.get("adverse_reactions"), "medications": form.get("medications", []),
            "note": form.get("note"),
            "classification": follow_up.classification.value if follow_up.classification else None,
            "reasons": form.get("reasons", []), "refer": form.get("refer"),
            "next_due": date.fromisoformat(form["next_due"]) if form.get("next_due") else None,
            "referral_id": follow_up.referral_id, "alerts": alerts[follow_up.id], "created_at": follow_up.created_at})
    return shown


def _shown(found: tuple[FollowUp, Contract]) -> dict[str, Any]:
    return views(platform_session(), [found])[0]


@blp.route("/family-doctor/follow-ups")
class FollowUps(MethodView):
    """Visits nobody scheduled."""

    decorators = [login_required]

    @blp.arguments(UnscheduledVisitSchema)
    @blp.response(201, FollowUpOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Record an unscheduled visit of a contract's resident for one condition; it fulfils the follow-up the
        contract had scheduled for the condition, and the verdict schedules the next"""
        return _shown(followups.record(require(Permission.patient_write), body))


@blp.route("/family-doctor/follow-ups/<string:follow_up_id>")
class FollowUpById(MethodView):
    """One follow-up."""

    decorators = [login_required]

    @blp.response(200, FollowUpOutSchema)
    def get(self, follow_up_id: str) -> dict[str, Any]:
        """A follow-up of the caller's team or institution"""
        return _shown(followups.read(require(Permission.patient_read), follow_up_id))

    @blp.arguments(VisitSchema)
    @blp.response(200, FollowUpOutSchema)
    def post(self, body: dict[str, Any], follow_up_id: str) -> dict[str, Any]:
        """Complete a scheduled follow-up with the visit's form: it is classified (controlled, not controlled,
        urgent), the next follow-up is scheduled, and an urgent or recommended referral raises an alert"""
        return _shown(followups.record(require(Permission.patient_write), body, follow_up_id))


@blp.route("/family-doctor/contracts/<string:contract_id>/follow-ups")
class ContractFollowUps(MethodView):
    """A contract's follow-ups."""

    decorators = [login_required]

    @blp.response(200, FollowUpOutSchema(many=True))
    @blp.paginate()
    def get(self, contract_id: str, pagination_parameters: Any) -> list[dict[str, Any]]:
        """The scheduled follow-up first, then the visits, newest first"""
        rows, total = followups.of_contract(require(Permission.patient_read), contract_id,
                                            pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        if not rows:
            return []
        contract = platform_session().get_one(Contract, rows[0].contract_id)
        return views(platform_session(), [(row, contract) for row in rows])
