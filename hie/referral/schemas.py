"""Bodies of the referral API; each refusal names the field, as `diagnoses.0.code` or `records.1`."""

from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, validate, validates

from hie.platform.schemas import PathSchema
from hie.referral.models import Direction, ReferralStatus, Urgency

ICD10_RE = re.compile(r"^[A-TV-Z][0-9][0-9AB](\.[0-9A-TV-Z]{1,4})?$")
RECORD_RE = re.compile(r"^[A-Z][A-Za-z]{1,40}/[A-Za-z0-9\-.]{1,64}$")
MAX_TEXT = 20000


class DiagnosisSchema(PathSchema):
    """One diagnosis: an ICD-10 code (e.g. I21.9) and its text."""

    code = fields.String(required=True, validate=validate.Regexp(
        ICD10_RE, error="must be an ICD-10 code such as I10, E11.9 or S72.00"))
    text = fields.String(required=True, validate=validate.Length(min=1, max=200))


class ReferralInSchema(PathSchema):
    """A referral as the sending clinician writes it."""

    patient_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    direction = fields.Enum(Direction, required=True)
    urgency = fields.Enum(Urgency, load_default=Urgency.routine)
    receiving_institution = fields.String(required=True, validate=validate.Length(min=1, max=32))
    department = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=100))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    diagnoses = fields.List(fields.Nested(DiagnosisSchema), load_default=list, validate=validate.Length(max=20))
    clinical_summary = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_TEXT))
    records = fields.List(fields.String(validate=validate.Regexp(
        RECORD_RE, error="must be a reference like Observation/<id>")), load_default=list,
        validate=validate.Length(max=50))


class BackReferralSchema(ReferralInSchema):
    """The down-referral a hospital sends with the discharge: the patient is the one it registered on arrival."""

    class Meta:
        exclude = ("patient_id", "direction")


class AcceptSchema(PathSchema):
    """Accepting names when the patient is expected."""

    appointment_at = fields.AwareDateTime(required=True, default_timezone=None)
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class DeclineSchema(PathSchema):
    """Declining must say why, so the sender can look elsewhere."""

    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))

    @validates("reason")
    def _not_blank(self, value: str, **_: object) -> None:
        if not value.strip():
            raise ValidationError("must say why")


class NoteSchema(PathSchema):
    """Cancel and no-show may carry a note."""

    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class ArriveSchema(PathSchema):
    """The receiver's own local patient record, registered or found in its register, EMPI-linked."""

    patient_id = fields.String(required=True, validate=validate.Length(min=1, max=36))


class CompleteSchema(PathSchema):
    """The discharge summary and, after an upward referral, optionally the referral back down."""

    discharge_summary = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TEXT))
    back_referral = fields.Nested(BackReferralSchema, load_default=None, allow_none=True)


class ReferralQuerySchema(PathSchema):
    """Inbox filters."""

    class Meta:
        ordered = True

    box = fields.String(load_default="incoming", validate=validate.OneOf(("incoming", "outgoing")))
    status = fields.Enum(ReferralStatus)
    urgency = fields.Enum(Urgency)
    since = fields.AwareDateTime(default_timezone=None)
    until = fields.AwareDateTime(default_timezone=None)


class StepOutSchema(Schema):
    """One move of the referral."""

    from_status = fields.String(allow_none=True)
    to_status = fields.String()
    username = fields.String()
    role = fields.String()
    institution = fields.String()
    at = fields.DateTime()
    note = fields.String(allow_none=True)


class ReferralOutSchema(Schema):
    """A referral as sender and receiver see it."""

    id = fields.String()
    direction = fields.String()
    urgency = fields.String()
    status = fields.String()
    patient_id = fields.String()
    patient_tenant_code = fields.String()
    master_person_id = fields.String()
    sending_institution = fields.String()
    receiving_institution = fields.String()
    department = fields.String(allow_none=True)
    receiver_patient_id = fields.String(allow_none=True)
    reason = fields.String()
    diagnoses = fields.List(fields.Dict())
    clinical_summary = fields.String(allow_none=True)
    records = fields.List(fields.String())
    appointment_at = fields.DateTime(allow_none=True)
    discharge_summary = fields.String(allow_none=True)
    follow_up_of = fields.String(allow_none=True)
    back_referral_id = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    due_at = fields.DateTime()
    answered_at = fields.DateTime(allow_none=True)
    overdue = fields.Boolean()
    steps = fields.List(fields.Nested(StepOutSchema))


class ReferralCountSchema(Schema):
    """Incoming referrals waiting for an answer."""

    unanswered = fields.Integer()
    overdue = fields.Integer()



class NotificationQuerySchema(PathSchema):
    """Notification filters."""

    unread = fields.Boolean(load_default=False)


class NotificationOutSchema(Schema):
    """A notification: the referral's id and what happened, never the patient."""

    id = fields.String()
    kind = fields.String()
    referral_id = fields.String()
    role = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()
    read_at = fields.AwareDateTime(allow_none=True)


class WebhookInSchema(PathSchema):
    """Where the institution's own system wants its referral notifications."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=500))
    active = fields.Boolean(load_default=True)


class WebhookOutSchema(Schema):
    """The webhook as set; the secret is shown this once."""

    url = fields.String()
    active = fields.Boolean()
    secret = fields.String()
    updated_at = fields.AwareDateTime()
