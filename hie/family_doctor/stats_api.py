"""GET /api/v1/stats/family-doctor: family-doctor figures for health administrators, their region only, no names."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields

from hie.family_doctor.api import blp
from hie.family_doctor.stats import GROUPS, family_doctor_figures
from hie.platform.access import Permission, region_subtree, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.figures import WindowQuerySchema, asked_window, group_by
from hie.platform.schemas import stats_reader


class FamilyDoctorStatsQuerySchema(WindowQuerySchema):
    """The window ([since, until), both with a time zone; states are taken at until) and what to group by."""

    group_by = group_by(GROUPS)


class ContractFiguresSchema(Schema):
    """Contracts of the group; null with suppressed true when either count is 1 to 4."""

    class Meta:
        ordered = True

    active = fields.Integer(allow_none=True, metadata={"description": "Persons holding a contract at the end"})
    signed = fields.Integer(allow_none=True, metadata={"description": "Contracts signed in the window"})
    suppressed = fields.Boolean()


class CoverageSchema(Schema):
    """Persons of one priority group holding a contract, over the group's registered population."""

    class Meta:
        ordered = True

    priority_group = fields.String()
    persons = fields.Integer(allow_none=True)
    population = fields.Integer(allow_none=True, metadata={
        "description": "Loaded by `hie family-doctor population import`; null by team or institution"})
    coverage = fields.Float(allow_none=True, metadata={"description": "persons / population"})
    suppressed = fields.Boolean()


class FollowUpFiguresSchema(Schema):
    """Follow-ups due on the window's ended days, and those done by the end of their due day."""

    class Meta:
        ordered = True

    due = fields.Integer(allow_none=True)
    done_on_time = fields.Integer(allow_none=True)
    on_time_share = fields.Float(allow_none=True, metadata={"description": "done_on_time / due"})
    suppressed = fields.Boolean()


class HeartsSchema(Schema):
    """HEARTS control indicators of one condition at the end; each share is over registered."""

    class Meta:
        ordered = True

    registered = fields.Integer(allow_none=True, metadata={
        "description": "Persons holding a contract with the condition's package, first signed over 3 months before"})
    controlled = fields.Integer(allow_none=True)
    controlled_share = fields.Float(allow_none=True)
    no_visit_3m = fields.Integer(allow_none=True)
    no_visit_3m_share = fields.Float(allow_none=True)
    lost_to_follow_up = fields.Integer(allow_none=True)
    lost_to_follow_up_share = fields.Float(allow_none=True)
    suppressed = fields.Boolean()


class FamilyDoctorFiguresSchema(Schema):
    """One group's figures (or the total's), block by block."""

    class Meta:
        ordered = True

    team = fields.String()
    team_name = fields.String()
    institution = fields.String()
    institution_name = fields.String()
    township = fields.String(allow_none=True, metadata={"description": "Region code of the team's institution"})
    township_name = fields.String(allow_none=True)
    county = fields.String(allow_none=True, metadata={"description": "Region code of the contract's tenant"})
    county_name = fields.String(allow_none=True)
    month = fields.String(metadata={"description": "YYYY-MM, in the platform's time zone"})
    contracts = fields.Nested(ContractFiguresSchema)
    coverage = fields.List(fields.Nested(CoverageSchema))
    follow_ups = fields.Nested(FollowUpFiguresSchema)
    hypertension = fields.Nested(HeartsSchema)
    diabetes = fields.Nested(HeartsSchema)


class FamilyDoctorStatsSchema(Schema):
    """The figures of the caller's region in the window, in total and per group."""

    class Meta:
        ordered = True

    since = fields.DateTime()
    until = fields.DateTime()
    group_by = fields.List(fields.String())
    min_cell = fields.Integer(metadata={"description": "Blocks whose base count is below this are suppressed"})
    total = fields.Nested(FamilyDoctorFiguresSchema)
    groups = fields.List(fields.Nested(FamilyDoctorFiguresSchema))


def _suppressed(figures: dict[str, Any]) -> int:
    return sum(bool(block.get("suppressed")) for group in figures["groups"]
               for block in (group["contracts"], group["follow_ups"], group["hypertension"], group["diabetes"],
                             *group["coverage"]))


@blp.route("/stats/family-doctor")
class FamilyDoctorStatistics(MethodView):
    """Aggregates for health administrators."""

    decorators = [stats_reader, login_required]

    @blp.arguments(FamilyDoctorStatsQuerySchema, location="query")
    @blp.response(200, FamilyDoctorStatsSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Contracts, coverage, follow-ups on time and HEARTS control of the caller's region, by team, institution,
        township, county and month"""
        identity = require(Permission.stats_read)
        window = asked_window(query, ZoneInfo(current_app.config["HIE"].timezone))
        session = platform_session()
        figures = family_doctor_figures(session, region_subtree(session, identity.region_code), window,
                                        query["group_by"])
        audit.record("read", resource_type="FamilyDoctorStatistics", purpose="health_management",
                     detail=f"since={window.since.isoformat()} until={window.until.isoformat()} "
                            f"group_by={','.join(figures['group_by'])} groups={len(figures['groups'])} "
                            f"suppressed={_suppressed(figures)}")
        return {"since": window.since, "until": window.until, **figures}
