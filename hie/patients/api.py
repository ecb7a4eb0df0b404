"""REST API of the local patient register (the caller's own shard only)."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from hie.patients import services
from hie.patients.schemas import (
    PatientCountSchema,
    PatientInSchema,
    PatientOutSchema,
    PatientQuerySchema,
    PatientUpdateSchema,
)
from hie.patients.stats import counts_in
from hie.platform.access import (
    Basis,
    Permission,
    region_subtree,
    require,
    require_any,
    valid_break_glass_reason,
)
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.limits import ascii_int

blp = Blueprint("patients", __name__, url_prefix="/api/v1", description="Local patient register")

BREAK_GLASS_HEADER = "X-Break-Glass-Reason"


def _if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    version = ascii_int(raw.strip().removeprefix("W/").strip('"'), 1)
    if version is None:
        abort(400, message="If-Match must be the record's version number, e.g. \"3\".")
    return version


@blp.route("/patients")
class Patients(MethodView):
    """The caller's institution's patients, and those it is caring for."""

    decorators = [login_required]

    @blp.arguments(PatientQuerySchema, location="query")
    @blp.response(200, PatientOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, str], pagination_parameters: Any) -> list[dict]:
        """Search patient records by exact MRN, name, ID number or phone"""
        identity = require(Permission.patient_read)
        items, total = services.search(
            identity, filters, pagination_parameters.first_item, pagination_parameters.page_size
        )
        pagination_parameters.item_count = total
        return items

    @blp.arguments(PatientInSchema)
    @blp.response(201, PatientOutSchema)
    @blp.alt_response(200, schema=PatientOutSchema,
                      description="Already registered with these demographics: the existing record")
    def post(self, body: dict[str, Any]) -> dict[str, Any] | tuple[dict[str, Any], int]:
        """Register a local patient record at the caller's institution (again: idempotent)"""
        identity = require(Permission.patient_write)
        existing = services.already_registered(identity, body)
        if existing is not None:
            return services.view(identity, existing, Basis.own_institution), 200
        patient = services.register(identity, body)
        return services.view(identity, patient, Basis.own_institution)


@blp.route("/patients/<string:patient_id>")
class PatientById(MethodView):
    """One patient record."""

    decorators = [login_required]

    @blp.response(200, PatientOutSchema)
    def get(self, patient_id: str) -> dict[str, Any]:
        """Read a patient record (send X-Break-Glass-Reason to read in an emergency, flagged in the audit)"""
        identity = require_any(Permission.patient_read, Permission.own_record_read)
        reason = valid_break_glass_reason(request.headers.get(BREAK_GLASS_HEADER))
        return services.read(identity, patient_id, reason)

    @blp.arguments(PatientUpdateSchema(partial=True))
    @blp.response(200, PatientOutSchema)
    def patch(self, body: dict[str, Any], patient_id: str) -> dict[str, Any]:
        """Change a record of the caller's institution (If-Match: version guards against lost updates)"""
        identity = require(Permission.patient_write)
        if not body:
            abort(400, message="Send at least one field to change.")
        return services.update(identity, patient_id, body, _if_match())


@blp.route("/stats/patients")
class PatientCounts(MethodView):
    """Aggregates for health administrators."""

    decorators = [login_required]

    @blp.response(200, PatientCountSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Patient records per institution in the caller's region (numbers only, no names)"""
        identity = require(Permission.stats_read)
        session = platform_session()
        return counts_in(session, region_subtree(session, identity.region_code))
