"""Request and response bodies of the token endpoints."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class TokenRequestSchema(Schema):
    """Username and password."""

    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


class RefreshRequestSchema(Schema):
    """A refresh token from an earlier token response."""

    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=200))


class TokenResponseSchema(Schema):
    """OAuth2-style token response."""

    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    refresh_token = fields.String(required=True)


class MeSchema(Schema):
    """The caller as the platform sees them."""

    user_id = fields.Integer()
    username = fields.String()
    roles = fields.List(fields.String())
    permissions = fields.List(fields.String())
    institution_code = fields.String()
    tenant_code = fields.String()
    region_code = fields.String(allow_none=True)
    patient_id = fields.String(allow_none=True, metadata={
        "description": "a resident's own patient record (GET /api/v1/patients/{patient_id}); null for staff"})


class LoginAlertSchema(Schema):
    """Sustained failed logins against one account (NIST SP 800-63B throttling alert)."""

    id = fields.Integer()
    raised_at = fields.DateTime()
    user_id = fields.Integer()
    username = fields.String()
    institution_code = fields.String()
    failures = fields.Integer(metadata={"description": "failed logins within HIE_LOGIN_FAILURE_WINDOW"})
    source_addresses = fields.Integer(metadata={"description": "distinct source addresses they came from"})
