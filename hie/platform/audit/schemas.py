"""Audit trail queries and events as the auditor sees them."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE

WINDOW = validate.Range(min=EARLIEST_QUERY_DATE, max=LATEST_QUERY_DATE)


class AuditQuerySchema(Schema):
    """Filters of the audit trail."""

    patient = fields.String(validate=validate.Length(min=1, max=80))
    user = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "username"})
    action = fields.String(validate=validate.Length(min=1, max=32))
    outcome = fields.String(validate=validate.OneOf(
        ["success", "failure", "denied", "not_found", "locked", "error"]))
    since = fields.AwareDateTime(default_timezone=None, validate=WINDOW)
    until = fields.AwareDateTime(default_timezone=None, validate=WINDOW)

    @validates_schema
    def _window(self, data: dict, **_: object) -> None:
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("since must not be after until", field_name="since")


class AuditEventSchema(Schema):
    """One audit event, with its place in the chain."""

    seq = fields.Integer()
    occurred_at = fields.DateTime()
    user_id = fields.Integer(allow_none=True)
    username = fields.String(allow_none=True)
    role = fields.String(allow_none=True)
    institution_id = fields.Integer(allow_none=True)
    tenant_code = fields.String(allow_none=True)
    patient = fields.String(allow_none=True)
    action = fields.String()
    resource_type = fields.String(allow_none=True)
    resource_id = fields.String(allow_none=True)
    purpose = fields.String(allow_none=True)
    outcome = fields.String()
    break_glass = fields.Boolean()
    detail = fields.String(allow_none=True)
    source_ip = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    hash = fields.String()
