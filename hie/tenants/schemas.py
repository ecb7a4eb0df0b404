"""Bodies of the tenancy and directory endpoints."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from hie.platform.auth.models import Role
from hie.tenants.models import InstitutionLevel, InstitutionType, RegionLevel

_REGION_CODE = validate.Regexp(r"^[0-9]{6}([0-9]{3}([0-9]{3})?)?$", error="Not a GB/T 2260 code (6, 9 or 12 digits).")


class TenantSchema(Schema):
    """A tenant and where its shard lives (the URL is shown without password)."""

    code = fields.String()
    name = fields.String()
    region_code = fields.String(allow_none=True)
    database = fields.String()
    active = fields.Boolean()


class InstitutionQuerySchema(Schema):
    """Directory filters."""

    tenant = fields.String(validate=validate.Length(max=32))
    level = fields.String(validate=validate.OneOf([lv.value for lv in InstitutionLevel]))


class InstitutionSchema(Schema):
    """A member institution in the directory."""

    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_\-]{1,32}$"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    tenant_code = fields.String(required=True, validate=validate.Length(min=2, max=32))
    level = fields.String(required=True, validate=validate.OneOf([lv.value for lv in InstitutionLevel]))
    type = fields.String(load_default=InstitutionType.general_hospital.value,
                         validate=validate.OneOf([t.value for t in InstitutionType]))
    region_code = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=12))


class UserInSchema(Schema):
    """A new account."""

    username = fields.String(required=True, validate=validate.Length(min=3, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))
    roles = fields.List(fields.String(validate=validate.OneOf([r.value for r in Role])), required=True,
                        validate=validate.Length(min=1))
    institution_code = fields.String(required=True, validate=validate.Length(min=1, max=32))
    display_name = fields.String(load_default=None, validate=validate.Length(max=100))
    department = fields.String(load_default=None, validate=validate.Length(max=100))
    title = fields.String(load_default=None, validate=validate.Length(max=100))
    licence_number = fields.String(load_default=None, validate=validate.Length(max=64))
    patient_id = fields.String(load_default=None, validate=validate.Length(equal=36))


class UserOutSchema(Schema):
    """An account without its secrets."""

    id = fields.Integer()
    active = fields.Boolean()
    username = fields.String()
    display_name = fields.String()
    roles = fields.List(fields.String())
    institution_code = fields.String()
    department = fields.String(allow_none=True)
    title = fields.String(allow_none=True)
    licence_number = fields.String(allow_none=True)


class UserUpdateSchema(Schema):
    """What an administrator may change on an account."""

    active = fields.Boolean()
    roles = fields.List(fields.String(validate=validate.OneOf([r.value for r in Role])),
                        validate=validate.Length(min=1))


class RegionSchema(Schema):
    """A node of the administrative tree (GB/T 2260 code; 9 and 12 digits below the county)."""

    code = fields.String(required=True, validate=_REGION_CODE)
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    level = fields.String(load_default=None, allow_none=True,
                          validate=validate.OneOf([lv.value for lv in RegionLevel]),
                          metadata={"description": "default: what the code says (PP0000 province, PPCC00 city, ...)"})
    parent_code = fields.String(load_default=None, allow_none=True, validate=_REGION_CODE)


class RegionQuerySchema(Schema):
    """Region list filters."""

    parent = fields.String(validate=_REGION_CODE, metadata={"description": "only the regions directly under it"})


class RegionUpdateSchema(Schema):
    """What may change on a region: its name (the code is what everything refers to)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
