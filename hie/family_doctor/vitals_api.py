"""REST routes of vitals: one entry, an offline batch, a BP monitor's CSV export, a contract's readings, and a
resident's own home reading."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import select

from hie.exchange.outcome import FhirError
from hie.family_doctor import vitals, vitals_csv
from hie.family_doctor.api import blp
from hie.family_doctor.models import Alert, Setting, Vitals
from hie.family_doctor.services import require_member, visible_contract
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.schemas import PathSchema, field_paths

MAX_BATCH = 500
STAFF_SETTINGS = [Setting.clinic.value, Setting.home_visit.value]


def _reading(**kwargs: Any) -> fields.Float:
    return fields.Float(load_default=None, allow_none=True, allow_nan=False, **kwargs)


class ReadingsSchema(PathSchema):
    """The readings of one entry (at least one); bounds of what a body can measure are checked by the service."""

    systolic = _reading(metadata={"description": "mm[Hg]"})
    diastolic = _reading(metadata={"description": "mm[Hg], below the systolic"})
    heart_rate = _reading(metadata={"description": "/min"})
    fasting_glucose = _reading(metadata={"description": "mmol/L"})
    random_glucose = _reading(metadata={"description": "mmol/L"})
    weight = _reading(metadata={"description": "kg"})
    height = _reading(metadata={"description": "cm; BMI is computed from weight and this (or the last) height"})
    waist = _reading(metadata={"description": "cm"})
    spo2 = _reading(metadata={"description": "%"})
    temperature = _reading(metadata={"description": "Cel"})


class HomeReadingSchema(ReadingsSchema):
    """A resident's own reading from their device; it joins their active contract, if any."""

    client_id = fields.String(required=True, validate=validate.Length(min=1, max=vitals.MAX_CLIENT_ID),
                              metadata={"description": "the device's or app's id of the entry: a retry with the "
                                                       "same id stores nothing twice"})
    taken_at = fields.AwareDateTime(required=True, metadata={"description": "with its zone; not in the future"})


class EntrySchema(HomeReadingSchema):
    """One entry a team member records: a set of readings taken at one time for an active contract of the team."""

    contract_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    setting = fields.String(load_default=Setting.clinic.value, validate=validate.OneOf(STAFF_SETTINGS))


class _Loose(fields.Nested):
    """An entry as sent (documented as EntrySchema): each is checked on its own so that one bad entry does not
    refuse the batch."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        return value


class BatchInSchema(PathSchema):
    """A device's collected entries, uploaded at once; each is stored, found stored before, or refused."""

    entries = fields.List(_Loose(EntrySchema), required=True, validate=validate.Length(min=1, max=MAX_BATCH))


class ImportInSchema(PathSchema):
    """A BP monitor's CSV export, as text in JSON (see the route's description for the columns)."""

    csv = fields.String(required=True, validate=validate.Length(min=1, max=vitals_csv.MAX_TEXT))
    contract_id = fields.String(load_default=None, validate=validate.Length(min=1, max=36),
                                metadata={"description": "every row's contract, unless the CSV has a contract_id "
                                                         "column"})
    setting = fields.String(load_default=Setting.home_visit.value, validate=validate.OneOf(STAFF_SETTINGS))
    columns = fields.Dict(keys=fields.String(validate=validate.OneOf(vitals_csv.TARGETS)),
                          values=fields.String(validate=validate.Length(min=1, max=100)), load_default=None,
                          metadata={"description": "our column -> the export's header, where it names it "
                                                   "otherwise: {\"systolic\": \"SYS\"}"})


class ReadingsQuerySchema(PathSchema):
    """A window of readings: taken at or after since, before until."""

    since = fields.AwareDateTime(load_default=None)
    until = fields.AwareDateTime(load_default=None)

    @validates_schema
    def _window(self, data: dict[str, Any], **_: object) -> None:
        if data.get("since") and data.get("until") and data["until"] <= data["since"]:
            raise ValidationError({"until": ["must be after since"]})


class VitalsOutSchema(Schema):
    """A stored entry: its readings, BMI, the Observations written and the alerts raised."""

    id = fields.Integer()
    client_id = fields.String()
    contract_id = fields.String(allow_none=True)
    patient_id = fields.String()
    taken_at = fields.DateTime()
    setting = fields.String()
    self_reported = fields.Boolean()
    recorded_by = fields.Integer()
    systolic = fields.Float(allow_none=True)
    diastolic = fields.Float(allow_none=True)
    heart_rate = fields.Float(allow_none=True)
    fasting_glucose = fields.Float(allow_none=True)
    random_glucose = fields.Float(allow_none=True)
    weight = fields.Float(allow_none=True)
    height = fields.Float(allow_none=True)
    bmi = fields.Float(allow_none=True)
    waist = fields.Float(allow_none=True)
    spo2 = fields.Float(allow_none=True)
    temperature = fields.Float(allow_none=True)
    observations = fields.List(fields.String())
    alerts = fields.List(fields.String())
    created_at = fields.DateTime()


class EntryResultSchema(Schema):
    """What became of one entry, in the order sent."""

    line = fields.Integer(metadata={"description": "CSV imports: the line of the row"})
    client_id = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "created, duplicate or refused"})
    vitals_id = fields.Integer(allow_none=True)
    observations = fields.List(fields.String())
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class BatchOutSchema(Schema):
    """One result per entry, in order, and the counts."""

    created = fields.Integer()
    duplicate = fields.Integer()
    refused = fields.Integer()
    results = fields.List(fields.Nested(EntryResultSchema))


def _shown(rows: list[Vitals]) -> list[dict[str, Any]]:
    alerts: dict[int, list[str]] = defaultdict(list)
    if rows:
        for vitals_id, message in platform_session().execute(
                select(Alert.vitals_id, Alert.message).where(Alert.vitals_id.in_([r.id for r in rows]))
                .order_by(Alert.id)):
            alerts[vitals_id].append(message)
    return [{**{name: getattr(row, name) for name in (*vitals.FIELDS, "bmi", "id", "client_id", "contract_id",
                                                        "patient_id", "taken_at", "self_reported", "created_at")},
             "setting": row.setting.value, "recorded_by": row.user_id, "observations": list(row.observations),
             "alerts": alerts[row.id]} for row in rows]


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {status: sum(1 for r in results if r["status"] == status) for status in ("created", "duplicate",
                                                                                       "refused")}
    return {**counts, "results": results}


def _one(entry: dict[str, Any], self_reported: bool) -> tuple[dict[str, Any], int]:
    identity = require(Permission.own_record_read if self_reported else Permission.patient_write)
    try:
        row, created = vitals.record_entry(identity, entry, self_reported=self_reported)
    except vitals.EntryRefused as exc:
        abort(422, message=f"{exc.field} {exc.message}.", errors={"json": exc.errors})
    except FhirError as exc:
        abort(422, message=exc.diagnostics, errors={"json": {(exc.expression or ["entry"])[0]: [exc.diagnostics]}})
    return _shown([row])[0], 201 if created else 200


@blp.route("/family-doctor/vitals")
class VitalsEntry(MethodView):
    """One entry of readings."""

    decorators = [login_required]

    @blp.arguments(EntrySchema)
    @blp.response(201, VitalsOutSchema)
    @blp.alt_response(200, schema=VitalsOutSchema, description="Stored before under this client_id: nothing new")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Record readings for an active contract of the caller's team; impossible values are refused naming the
        field, alarming ones are stored and alerted"""
        return _one(body, False)


@blp.route("/family-doctor/vitals:batch")
class VitalsBatch(MethodView):
    """Offline uploads."""

    decorators = [login_required]

    @blp.arguments(BatchInSchema)
    @blp.response(200, BatchOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Upload a device's entries (at most 500); each is stored once per client_id (a retried upload stores
        nothing twice), and answered in order as created, duplicate or refused with the fields at fault"""
        identity = require(Permission.patient_write)
        require_member(identity, "create")
        schema, results = EntrySchema(), []
        known = vitals.stored_entries(identity, [raw.get("client_id") for raw in body["entries"]])
        for raw in body["entries"]:
            try:
                entry = schema.load(raw)
            except ValidationError as exc:
                results.append(vitals.refused(raw.get("client_id"), field_paths(exc.messages)))
                continue
            results.append(vitals.outcome(identity, entry, known))
        return _summary(results)


@blp.route("/family-doctor/vitals:import")
class VitalsImport(MethodView):
    """A BP monitor's export."""

    decorators = [login_required]

    @blp.arguments(ImportInSchema)
    @blp.response(200, BatchOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Import a blood-pressure monitor's CSV export, sent as JSON: {"csv": "<the file's text>",
        "contract_id": "<every row's contract>", "setting": "home_visit", "columns": {"systolic": "SYS"}}.

        The first line names the columns, matched without case or a unit in brackets ("Systolic (mmHg)"):
        date and time (or one taken_at column; ISO 8601, a time without zone is in the platform's zone),
        systolic / SYS / 收缩压, diastolic / DIA / 舒张压, pulse / heart_rate / 脉搏, and optionally contract_id
        and client_id. A row without a client_id gets one made from its contract, time and values, so importing
        the same file again stores nothing twice. At most 500 rows; each is answered like a batch entry, with its
        line."""
        identity = require(Permission.patient_write)
        require_member(identity, "create")
        try:
            rows = vitals_csv.parse(body["csv"], body.get("columns"), body.get("contract_id"), body["setting"])
        except vitals_csv.CsvRefused as exc:
            vitals.audit_import_refused(exc.message)
            abort(422, message=f"csv {exc.message}.", errors={"json": {"csv": [exc.message]}})
        return _summary(vitals_csv.record_rows(identity, rows))


@blp.route("/family-doctor/contracts/<string:contract_id>/vitals")
class ContractVitals(MethodView):
    """The team's view of a resident's readings."""

    decorators = [login_required]

    @blp.arguments(ReadingsQuerySchema, location="query")
    @blp.response(200, VitalsOutSchema(many=True))
    @blp.paginate()
    def get(self, window: dict[str, Any], contract_id: str, pagination_parameters: Any) -> list[dict[str, Any]]:
        """The resident's readings, newest first, within since and until"""
        identity = require(Permission.patient_read)
        contract = visible_contract(identity, contract_id)
        rows, total = vitals.readings(identity, contract, window.get("since"), window.get("until"),
                                      pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return _shown(rows)


@blp.route("/me/vitals")
class MyVitals(MethodView):
    """A resident's own home readings."""

    decorators = [login_required]

    @blp.arguments(HomeReadingSchema)
    @blp.response(201, VitalsOutSchema)
    @blp.alt_response(200, schema=VitalsOutSchema, description="Stored before under this client_id: nothing new")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Record a reading from the resident's own device, marked self-reported; it joins their active contract,
        and an alarming value alerts their team"""
        return _one(body, True)
