"""REST routes of the signed opinion: give a new version, read the latest or one version, list the versions, verify
a signature."""

from __future__ import annotations

import re
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from hie.consult import opinions
from hie.consult.api import blp
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.schemas import PathSchema

# ICD-10 as the referral module checks it: chapter letter (U is reserved), two digits or 2-digit + A/B, subdivision.
ICD10_RE = re.compile(r"^[A-TV-Z][0-9][0-9AB](\.[0-9A-TV-Z]{1,4})?$")
MAX_TEXT = 20000
MAX_VERSION = 2**31 - 1
REFER_FIELDS = ("refer_to", "department", "refer_urgency")


def _not_blank(value: str | None) -> None:
    if value is not None and not value.strip():
        raise ValidationError("must not be blank")


class OpinionDiagnosisSchema(PathSchema):
    """One diagnosis: an ICD-10 code (e.g. I21.9) and its text."""

    code = fields.String(required=True, validate=validate.Regexp(
        ICD10_RE, error="must be an ICD-10 code such as I10, E11.9 or S72.00"))
    text = fields.String(required=True, validate=[validate.Length(min=1, max=200), _not_blank])


class OpinionInSchema(PathSchema):
    """The consultant's structured opinion; refer_to, department and refer_urgency only with refer: true."""

    findings = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_TEXT), _not_blank])
    impression = fields.String(required=True, validate=[validate.Length(min=1, max=4000), _not_blank])
    diagnoses = fields.List(fields.Nested(OpinionDiagnosisSchema), load_default=list, validate=validate.Length(max=20))
    recommendations = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_TEXT))
    refer = fields.Boolean(load_default=False)
    refer_to = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    department = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=100))
    refer_urgency = fields.String(load_default=None, allow_none=True,
                                  validate=validate.OneOf(("routine", "urgent", "emergency")))

    @validates("recommendations")
    def _recommendations(self, value: str | None, **_: object) -> None:
        _not_blank(value)

    @validates_schema
    def _referral_fields(self, data: dict[str, Any], **_: object) -> None:
        if not data.get("refer"):
            given = {name: ["only with refer: true"] for name in REFER_FIELDS if data.get(name) is not None}
            if given:
                raise ValidationError(given)


class VersionQuerySchema(PathSchema):
    """Which version; the latest without it."""

    version = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_VERSION))


class SignatureOutSchema(Schema):
    """The signature and the key that checks it."""

    algorithm = fields.String()
    key_id = fields.Integer()
    public_key = fields.String()
    value = fields.String()
    canonicalisation = fields.String()


class OpinionVersionOutSchema(Schema):
    """One signed version in the list."""

    consultation_id = fields.String()
    version = fields.Integer()
    signed_at = fields.DateTime()
    signer = fields.Dict(allow_none=True)
    key_id = fields.Integer()
    impression = fields.String(allow_none=True)
    fhir_reference = fields.String(allow_none=True)


class OpinionOutSchema(OpinionVersionOutSchema):
    """A signed version as both institutions see it, with a draft referral when it recommends one."""

    kind = fields.String(allow_none=True)
    latest_version = fields.Integer()
    opinion = fields.Dict(allow_none=True)
    signature = fields.Nested(SignatureOutSchema)
    draft_referral = fields.Dict(allow_none=True)
    referral_note = fields.String(allow_none=True)


class VerifyOutSchema(Schema):
    """Whether the stored opinion still matches its signature, and what does not."""

    valid = fields.Boolean()
    consultation_id = fields.String()
    version = fields.Integer()
    signer = fields.Dict(allow_none=True)
    signed_by = fields.Integer()
    signed_at = fields.DateTime()
    key_id = fields.Integer()
    public_key = fields.String()
    algorithm = fields.String()
    canonicalisation = fields.String()
    problems = fields.List(fields.String())


@blp.route("/consultations/<string:consultation_id>/opinion")
class ConsultationOpinion(MethodView):
    """The signed opinion: each POST a new version."""

    decorators = [login_required]

    @blp.arguments(VersionQuerySchema, location="query")
    @blp.response(200, OpinionOutSchema)
    def get(self, query: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The latest signed opinion (or ?version=n), for the requesting and the consulting institution"""
        consultation, opinion = opinions.visible_opinion(require(Permission.patient_read), consultation_id,
                                                         query["version"])
        return opinions.view(consultation, opinion)

    @blp.arguments(OpinionInSchema)
    @blp.response(201, OpinionOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The consulting side signs its opinion as a new version; it goes to the patient's shared record and the
        consultation to opinion_given"""
        return opinions.view(*opinions.give(require(Permission.patient_write), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/opinion/versions")
class ConsultationOpinionVersions(MethodView):
    """Every signed version, newest first."""

    decorators = [login_required]

    @blp.response(200, OpinionVersionOutSchema(many=True))
    @blp.paginate()
    def get(self, consultation_id: str, pagination_parameters: Any) -> list[dict[str, Any]]:
        """The opinion's versions, newest first"""
        rows, total = opinions.versions(require(Permission.patient_read), consultation_id,
                                        pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/consultations/<string:consultation_id>/opinion/verify")
class ConsultationOpinionVerify(MethodView):
    """Check a version's signature against its stored content."""

    decorators = [login_required]

    @blp.arguments(VersionQuerySchema, location="query")
    @blp.response(200, VerifyOutSchema)
    def get(self, query: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """Recompute the canonical text of the latest (or ?version=n) opinion and check its Ed25519 signature with
        the signer's stored public key"""
        return opinions.verify(require(Permission.patient_read), consultation_id, query["version"])
