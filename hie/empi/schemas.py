"""Bodies of the EMPI endpoints."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from hie.empi.fields import ID18
from hie.empi.normalize import normalize_phone, parse_date, parse_resident_id
from hie.platform.limits import AsciiInteger

GRADES = ("certain", "probable", "possible")


class LocalRecordRefSchema(Schema):
    """One local identifier of a master person."""

    institution_code = fields.String()
    tenant_code = fields.String()
    local_id = fields.String()


class CrossReferenceQuerySchema(Schema):
    """PIX query: a local id at the caller's own institution."""

    local_id = fields.String(required=True, validate=validate.Length(min=1, max=64))


class CrossReferenceSchema(Schema):
    """PIX answer: the master person, its local ids the caller may read, and how many others it has."""

    master_person_id = fields.String()
    identifiers = fields.List(fields.Nested(LocalRecordRefSchema))
    other_records = fields.Integer(metadata={"description": "local records the caller may not read"})


class DemographicQuerySchema(Schema):
    """PDQ query: any demographics; the matcher decides who fits."""

    name = fields.String(validate=validate.Length(min=1, max=100))
    sex = fields.String(validate=validate.OneOf(["M", "F", "U"]))
    birth_date = fields.String(validate=validate.Length(min=6, max=20))
    id_number = fields.String(validate=validate.Length(min=6, max=32))
    phone = fields.String(validate=validate.Length(min=7, max=20))
    address = fields.String(validate=validate.Length(min=2, max=300))
    count = AsciiInteger(load_default=10, validate=validate.Range(min=1, max=50))

    @validates("birth_date")
    def _birth_date(self, value: str, **_: object) -> None:
        if parse_date(value) is None:
            raise ValidationError("not a date; use YYYY-MM-DD, YYYYMMDD, YYYY/M/D or YYYY年M月D日")

    @validates("phone")
    def _phone(self, value: str, **_: object) -> None:
        if normalize_phone(value) is None:
            raise ValidationError("not a phone number")

    @validates("id_number")
    def _id_number(self, value: str, **_: object) -> None:
        parsed = parse_resident_id(value)
        if parsed is None or not ID18.fullmatch(parsed.number):
            raise ValidationError("not a resident ID number (15 or 18 digits, the last may be X)")


class PersonMatchSchema(Schema):
    """One master person that fits a demographic query: its id and records only where the caller may read one."""

    master_person_id = fields.String(allow_none=True, metadata={
        "description": "null when the caller may read none of the person's records"})
    score = fields.Float()
    weight = fields.Float()
    grade = fields.String()
    identifiers = fields.List(fields.Nested(LocalRecordRefSchema))
    other_records = fields.Integer(metadata={"description": "local records the caller may not read"})


class DemographicsSchema(Schema):
    """A record's demographics as the steward compares them."""

    name = fields.String(allow_none=True)
    sex = fields.String(allow_none=True)
    birth_date = fields.String(allow_none=True)
    id_number = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    address = fields.String(allow_none=True)


class ReviewRecordSchema(Schema):
    """One side of a review."""

    record_id = fields.String()
    master_person_id = fields.String()
    institution_code = fields.String()
    local_id = fields.String()
    demographics = fields.Nested(DemographicsSchema)


class ReviewSchema(Schema):
    """A possible match, both records side by side."""

    id = fields.Integer()
    status = fields.String()
    weight = fields.Float()
    levels = fields.Dict(keys=fields.String(), values=fields.String())
    veto = fields.String(allow_none=True)
    record = fields.Nested(ReviewRecordSchema)
    candidate = fields.Nested(ReviewRecordSchema)


class ReviewDecisionSchema(Schema):
    """A steward's decision on a possible match."""

    decision = fields.String(required=True, validate=validate.OneOf(["link", "not_a_match"]))


class MergeSchema(Schema):
    """Merge the person in the path into this one."""

    into = fields.String(required=True, validate=validate.Length(equal=36))


class PersonEventSchema(Schema):
    """One entry of a master person's history."""

    id = fields.Integer()
    action = fields.String()
    person_id = fields.String()
    other_person_id = fields.String(allow_none=True)
    record_ids = fields.List(fields.String())
    undone_by = fields.Integer(allow_none=True)
    user_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()


class PersonSchema(Schema):
    """A master person with its local identifiers."""

    master_person_id = fields.String()
    status = fields.String()
    merged_into = fields.String(allow_none=True)
    identifiers = fields.List(fields.Nested(LocalRecordRefSchema))
