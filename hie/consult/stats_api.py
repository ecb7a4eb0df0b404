"""GET /api/v1/stats/consultations: consultation and read figures for health administrators, their region only,
without names."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields

from hie.consult.api import blp
from hie.consult.stats import GROUPS, consult_figures
from hie.platform.access import Permission, region_subtree, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.figures import WindowQuerySchema, asked_window, group_by
from hie.platform.schemas import stats_reader


class ConsultStatsQuerySchema(WindowQuerySchema):
    """The window (requested in [since, until), both with a time zone) and what to group by."""

    group_by = group_by(GROUPS)


class ConsultFiguresSchema(Schema):
    """One group's figures; all null, with suppressed true, when fewer than min_cell requests fall in it."""

    class Meta:
        ordered = True

    kind = fields.String()
    urgency = fields.String()
    department = fields.String(metadata={"description": "The specialty asked, as written in the request"})
    requesting_institution = fields.String()
    requesting_institution_name = fields.String()
    consulting_institution = fields.String()
    consulting_institution_name = fields.String()
    county = fields.String(allow_none=True, metadata={"description": "Region code of the requesting tenant"})
    county_name = fields.String(allow_none=True)
    month = fields.String(metadata={"description": "YYYY-MM of the request, in the platform's time zone"})
    requests = fields.Integer(allow_none=True)
    answered = fields.Integer(allow_none=True, metadata={"description": "With an opinion, or declined"})
    answered_share = fields.Float(allow_none=True, metadata={"description": "answered / requests"})
    opinions = fields.Integer(allow_none=True, metadata={"description": "With a first opinion"})
    median_minutes_to_opinion = fields.Float(allow_none=True, metadata={
        "description": "Median minutes from request to first opinion"})
    declined = fields.Integer(allow_none=True)
    cancelled = fields.Integer(allow_none=True)
    reads_due = fields.Integer(allow_none=True, metadata={
        "description": "Imaging and ECG reads with an opinion, or still waiting past their deadline"})
    reads_within_deadline = fields.Integer(allow_none=True, metadata={
        "description": "Reads whose first opinion came by their deadline"})
    reads_within_deadline_share = fields.Float(allow_none=True, metadata={
        "description": "reads_within_deadline / reads_due"})
    suppressed = fields.Boolean()


class ConsultStatsSchema(Schema):
    """The figures of the caller's region in the window, in total and per group."""

    class Meta:
        ordered = True

    since = fields.DateTime()
    until = fields.DateTime()
    group_by = fields.List(fields.String())
    min_cell = fields.Integer(metadata={"description": "Groups with fewer requests are suppressed"})
    total = fields.Nested(ConsultFiguresSchema)
    groups = fields.List(fields.Nested(ConsultFiguresSchema))


@blp.route("/stats/consultations")
class ConsultationStatistics(MethodView):
    """Aggregates for health administrators."""

    decorators = [stats_reader, login_required]

    @blp.arguments(ConsultStatsQuerySchema, location="query")
    @blp.response(200, ConsultStatsSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Consultations and reads touching the caller's region by kind, urgency, department, institution, county
        and month"""
        identity = require(Permission.stats_read)
        window = asked_window(query, ZoneInfo(current_app.config["HIE"].timezone))
        session = platform_session()
        figures = consult_figures(session, region_subtree(session, identity.region_code), window, query["group_by"])
        suppressed = sum(group["suppressed"] for group in figures["groups"])
        audit.record("read", resource_type="ConsultationStatistics", purpose="health_management",
                     detail=f"since={window.since.isoformat()} until={window.until.isoformat()} "
                            f"group_by={','.join(figures['group_by'])} groups={len(figures['groups'])} "
                            f"suppressed={suppressed}")
        return {"since": window.since, "until": window.until, **figures}
