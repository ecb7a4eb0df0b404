"""Bodies of the family-doctor team and contract API; each refusal names the field (packages[1], members[0])."""

from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, validate, validates

from hie.family_doctor.models import ContractStatus, TeamRole
from hie.family_doctor.services import MAX_TERM_DAYS, catalogue
from hie.platform.schemas import PathSchema

TEAM_CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9\-]{1,39}$")
REGION_CODE_RE = re.compile(r"^[0-9]{6}([0-9]{3}){0,2}$")
MAX_AREAS = 200


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


class TeamInSchema(PathSchema):
    """A new team of a township or community health centre and the villages or communities it serves."""

    code = fields.String(required=True, validate=validate.Regexp(
        TEAM_CODE_RE, error="must be 2 to 40 capital letters, digits or hyphens, like YAODU-T1-A"))
    name = fields.String(required=True, validate=[validate.Length(min=1, max=200), _not_blank])
    institution = fields.String(required=True, validate=validate.Length(min=1, max=32))
    areas = fields.List(fields.String(validate=validate.Regexp(
        REGION_CODE_RE, error="must be a GB/T 2260 region code of 6, 9 or 12 digits")),
        load_default=list, validate=validate.Length(max=MAX_AREAS))


class MemberInSchema(PathSchema):
    """A platform user joining the team, with what they do in it."""

    username = fields.String(required=True, validate=validate.Length(min=1, max=80))
    team_role = fields.Enum(TeamRole, required=True)


class MemberOutSchema(Schema):
    """A member as the team shows them."""

    username = fields.String()
    team_role = fields.String()
    institution = fields.String()
    joined_at = fields.AwareDateTime()


class TeamOutSchema(Schema):
    """A team with its institution, areas and members."""

    code = fields.String()
    name = fields.String()
    institution = fields.String()
    institution_name = fields.String()
    tenant_code = fields.String()
    active = fields.Boolean()
    areas = fields.List(fields.String())
    members = fields.List(fields.Nested(MemberOutSchema))
    active_contracts = fields.Integer()
    created_at = fields.AwareDateTime()


class PackageOutSchema(Schema):
    """One service package of the catalogue."""

    code = fields.String()
    name = fields.String()
    services = fields.List(fields.String())
    follow_ups_per_year = fields.Integer()
    conditions = fields.List(fields.String())
    groups = fields.List(fields.String())


class PriorityGroupOutSchema(Schema):
    """One priority group."""

    code = fields.String()
    name = fields.String()


class CatalogueOutSchema(Schema):
    """The packages a resident may sign for and the priority groups they may belong to, with the source."""

    source = fields.String()
    packages = fields.List(fields.Nested(PackageOutSchema))
    priority_groups = fields.List(fields.Nested(PriorityGroupOutSchema))
    default_term_days = fields.Integer()
    max_term_days = fields.Integer()


def _codes(kind: str) -> list[str]:
    return list(catalogue()[kind])


class ContractInSchema(PathSchema):
    """A resident signing with the caller's team: their local patient record, packages, groups and term."""

    patient_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    packages = fields.List(fields.String(validate=validate.Length(min=1, max=40)), required=True,
                           validate=validate.Length(min=1, max=len(_codes("packages"))))
    priority_groups = fields.List(fields.String(validate=validate.Length(min=1, max=40)), load_default=list,
                                  validate=validate.Length(max=len(_codes("priority_groups"))))
    starts_on = fields.Date(load_default=None, allow_none=True)
    term_days = fields.Integer(load_default=None, allow_none=True, strict=True,
                               validate=validate.Range(min=1, max=MAX_TERM_DAYS))
    region_code = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(
        REGION_CODE_RE, error="must be a GB/T 2260 region code of 6, 9 or 12 digits"))


class RenewSchema(PathSchema):
    """A renewal keeps the packages and groups unless new ones are given."""

    packages = fields.List(fields.String(validate=validate.Length(min=1, max=40)), load_default=None,
                           allow_none=True, validate=validate.Length(min=1, max=len(_codes("packages"))))
    priority_groups = fields.List(fields.String(validate=validate.Length(min=1, max=40)), load_default=None,
                                  allow_none=True, validate=validate.Length(max=len(_codes("priority_groups"))))
    term_days = fields.Integer(load_default=None, allow_none=True, strict=True,
                               validate=validate.Range(min=1, max=MAX_TERM_DAYS))


class TerminateSchema(PathSchema):
    """Ending a contract early must say why."""

    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))

    @validates("reason")
    def _reason(self, value: str, **_: object) -> None:
        _not_blank(value)


class TransferSchema(PathSchema):
    """Moving the resident to another team (by its code), why, and where they now live."""

    team = fields.String(required=True, validate=validate.Regexp(
        TEAM_CODE_RE, error="must be a team code"))
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    region_code = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(
        REGION_CODE_RE, error="must be a GB/T 2260 region code of 6, 9 or 12 digits"))


class ContractQuerySchema(PathSchema):
    """Filters of the team's contract list."""

    class Meta:
        ordered = True

    status = fields.Enum(ContractStatus)
    package = fields.String(validate=validate.OneOf(_codes("packages")))
    priority_group = fields.String(validate=validate.OneOf(_codes("priority_groups")))
    expiring_within_days = fields.Integer(validate=validate.Range(min=0, max=MAX_TERM_DAYS))


class ContractOutSchema(Schema):
    """A contract as its team sees it."""

    id = fields.String()
    team = fields.String()
    institution = fields.String()
    patient_id = fields.String()
    patient_tenant_code = fields.String()
    master_person_id = fields.String()
    packages = fields.List(fields.String())
    priority_groups = fields.List(fields.String())
    region_code = fields.String(allow_none=True)
    status = fields.String()
    starts_on = fields.Date()
    ends_on = fields.Date()
    signed_by = fields.String(allow_none=True)
    signed_at = fields.AwareDateTime()
    ended_at = fields.AwareDateTime(allow_none=True)
    ended_by = fields.String(allow_none=True)
    end_reason = fields.String(allow_none=True)
    previous_id = fields.String(allow_none=True)
    next_id = fields.String(allow_none=True)

