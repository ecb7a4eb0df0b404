"""Bodies of the consultation API; each refusal names the field, as `records[1]` or `consultants[0]`."""

from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, validate

from hie.consult.models import ConsultStatus, Kind, Urgency
from hie.consult.scheduling import MAX_MINUTES
from hie.platform.schemas import PathSchema

RECORD_RE = re.compile(r"^[A-Z][A-Za-z]{1,40}/[A-Za-z0-9\-.]{1,64}$")
MAX_TEXT = 20000


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


def _usernames() -> fields.List:
    return fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=None,
                       allow_none=True, validate=validate.Length(min=1, max=10))


class ConsultationInSchema(PathSchema):
    """A consultation as the requesting clinician writes it."""

    kind = fields.Enum(Kind, required=True)
    urgency = fields.Enum(Urgency, load_default=Urgency.routine)
    patient_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    consultant_institution = fields.String(required=True, validate=validate.Length(min=1, max=32))
    department = fields.String(required=True, validate=[validate.Length(min=1, max=100), _not_blank])
    consultant = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    question = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_TEXT), _not_blank])
    records = fields.List(fields.String(validate=validate.Regexp(
        RECORD_RE, error="must be a reference like Observation/<id>")), load_default=list,
        validate=validate.Length(max=50))


class ConsultAcceptSchema(PathSchema):
    """Accepting books the session: when, for how long, who consults, whether the patient is invited."""

    scheduled_at = fields.AwareDateTime(required=True, default_timezone=None)
    duration_minutes = fields.Integer(load_default=30, strict=True, validate=validate.Range(min=5, max=MAX_MINUTES))
    consultants = _usernames()
    invite_patient = fields.Boolean(load_default=False)
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class ConsultRescheduleSchema(PathSchema):
    """A new time for an accepted session; duration and consultants stay unless given."""

    scheduled_at = fields.AwareDateTime(required=True, default_timezone=None)
    duration_minutes = fields.Integer(load_default=None, allow_none=True, strict=True,
                                      validate=validate.Range(min=5, max=MAX_MINUTES))
    consultants = _usernames()
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class ConsultDeclineSchema(PathSchema):
    """Declining must say why, so the requester can ask elsewhere."""

    reason = fields.String(required=True, validate=[validate.Length(min=1, max=2000), _not_blank])


class ConsultNoteSchema(PathSchema):
    """Start, acknowledge and close may carry a note."""

    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class ConsultCancelSchema(PathSchema):
    """Cancelling may say why."""

    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class ConsultationQuerySchema(PathSchema):
    """List filters: a box of the caller's institution, or the sessions the caller is invited to."""

    class Meta:
        ordered = True

    box = fields.String(load_default="incoming", validate=validate.OneOf(("incoming", "outgoing")))
    participant = fields.String(validate=validate.OneOf(("me",)))
    status = fields.Enum(ConsultStatus)
    kind = fields.Enum(Kind)
    urgency = fields.Enum(Urgency)


class ConsultStepOutSchema(Schema):
    """One move of the consultation."""

    from_status = fields.String(allow_none=True)
    to_status = fields.String()
    username = fields.String()
    institution = fields.String()
    at = fields.DateTime()
    note = fields.String(allow_none=True)


class ConsultParticipantOutSchema(Schema):
    """Someone invited to the session."""

    username = fields.String()
    role = fields.String()
    institution = fields.String()
    invited_at = fields.DateTime()


class ConsultScheduleOutSchema(Schema):
    """When the session sits."""

    scheduled_at = fields.DateTime()
    duration_minutes = fields.Integer()
    ends_at = fields.DateTime()


class ConsultationOutSchema(Schema):
    """A consultation as both sides and the invited see it."""

    id = fields.String()
    kind = fields.String()
    urgency = fields.String()
    status = fields.String()
    patient_id = fields.String()
    patient_tenant_code = fields.String()
    master_person_id = fields.String()
    requesting_institution = fields.String()
    requester = fields.String(allow_none=True)
    consultant_institution = fields.String()
    department = fields.String()
    consultant = fields.String(allow_none=True)
    question = fields.String()
    records = fields.List(fields.String())
    schedule = fields.Nested(ConsultScheduleOutSchema, allow_none=True)
    video_url = fields.String(allow_none=True)
    video_note = fields.String(allow_none=True)
    due_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    answered_at = fields.DateTime(allow_none=True)
    opinion_at = fields.DateTime(allow_none=True)
    closed_at = fields.DateTime(allow_none=True)
    steps = fields.List(fields.Nested(ConsultStepOutSchema))
    participants = fields.List(fields.Nested(ConsultParticipantOutSchema))


class ConsultationCountSchema(Schema):
    """Incoming consultations waiting for an answer."""

    unanswered = fields.Integer()
    urgent = fields.Integer()
