"""Bodies of the local patient register."""

from __future__ import annotations

from datetime import date, timedelta

from marshmallow import Schema, ValidationError, fields, validate, validates

from hie.platform.standards import StandardError, normalise_phone, normalise_resident_id

SEXES = ("M", "F", "U")
EARLIEST_BIRTH = date(1800, 1, 1)


class PatientInSchema(Schema):
    """A local patient record as an institution registers it."""

    mrn = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9\-_.]{1,64}$",
                        error="must be 1-64 letters, digits, '-', '_' or '.'"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    sex = fields.String(load_default="U", validate=validate.OneOf(SEXES))
    birth_date = fields.Date(allow_none=True, load_default=None)
    id_number = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=32))
    phone = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=20))
    address = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=300))

    @validates("birth_date")
    def _birth_date(self, value: date | None, **_: object) -> None:
        if value is not None and not EARLIEST_BIRTH <= value <= date.today() + timedelta(days=1):
            raise ValidationError(f"must lie between {EARLIEST_BIRTH} and today")

    @validates("id_number")
    def _id_number(self, value: str | None, **_: object) -> None:
        if value is not None:
            if not value.isascii():
                raise ValidationError("resident ID number must be written in digits 0-9 and X")
            try:
                normalise_resident_id(value)
            except StandardError as exc:
                raise ValidationError(f"resident ID number {exc}") from None

    @validates("phone")
    def _phone(self, value: str | None, **_: object) -> None:
        if value is not None:
            if not value.isascii():
                raise ValidationError("phone must be written in digits 0-9")
            try:
                normalise_phone(value)
            except StandardError as exc:
                raise ValidationError(f"phone {exc}") from None


class PatientUpdateSchema(PatientInSchema):
    """Partial update; mrn cannot change (it is the institution's key for the record)."""

    class Meta:
        exclude = ("mrn",)


class PatientOutSchema(Schema):
    """A patient record with identifiers unsealed for a caller entitled to see them."""

    id = fields.String()
    master_person_id = fields.String(allow_none=True)
    tenant_code = fields.String()
    institution_id = fields.Integer()
    mrn = fields.String()
    name = fields.String()
    sex = fields.String()
    birth_date = fields.Date(allow_none=True)
    id_number = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    version = fields.Integer()
    access_basis = fields.String()


class PatientQuerySchema(Schema):
    """Equality search by blind index; plaintext never reaches the database."""

    class Meta:
        ordered = True

    mrn = fields.String(validate=validate.Length(min=1, max=64))
    name = fields.String(validate=validate.Length(min=1, max=100))
    id_number = fields.String(validate=validate.Length(min=15, max=18))
    phone = fields.String(validate=validate.Length(min=7, max=20))


class PatientCountSchema(Schema):
    """Patients per institution: a number, never a name."""

    tenant_code = fields.String()
    institution_code = fields.String()
    institution_name = fields.String()
    level = fields.String()
    patients = fields.Integer()
