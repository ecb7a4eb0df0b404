"""GET /api/v1/stats/referrals: referral figures for health administrators, their region only, without names."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields

from hie.platform.access import Permission, region_subtree, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.figures import WindowQuerySchema, asked_window, group_by
from hie.platform.schemas import stats_reader
from hie.referral.api import blp
from hie.referral.stats import GROUPS, referral_figures


class StatsQuerySchema(WindowQuerySchema):
    """The window (made in [since, until), both with a time zone) and what to group by."""

    group_by = group_by(GROUPS)


class FiguresSchema(Schema):
    """One group's figures; all null, with suppressed true, when fewer than min_cell referrals fall in it."""

    class Meta:
        ordered = True

    direction = fields.String()
    urgency = fields.String()
    status = fields.String()
    sending_institution = fields.String()
    sending_institution_name = fields.String()
    receiving_institution = fields.String()
    receiving_institution_name = fields.String()
    county = fields.String(allow_none=True, metadata={"description": "Region code of the sending tenant"})
    county_name = fields.String(allow_none=True)
    month = fields.String(metadata={"description": "YYYY-MM, in the platform's time zone"})
    referrals = fields.Integer(allow_none=True)
    up = fields.Integer(allow_none=True)
    down = fields.Integer(allow_none=True)
    answered = fields.Integer(allow_none=True)
    accepted = fields.Integer(allow_none=True)
    declined = fields.Integer(allow_none=True)
    acceptance_rate = fields.Float(allow_none=True, metadata={"description": "accepted / answered"})
    median_minutes_to_answer = fields.Float(allow_none=True)
    median_minutes_to_arrival = fields.Float(allow_none=True)
    answered_within_deadline_share = fields.Float(allow_none=True, metadata={
        "description": "answered by due_at / (answered, or left unanswered past due_at)"})
    down_to_up_ratio = fields.Float(allow_none=True, metadata={"description": "down / up"})
    suppressed = fields.Boolean()


class ReferralStatsSchema(Schema):
    """The figures of the caller's region in the window, in total and per group."""

    class Meta:
        ordered = True

    since = fields.DateTime()
    until = fields.DateTime()
    group_by = fields.List(fields.String())
    min_cell = fields.Integer(metadata={"description": "Groups with fewer referrals are suppressed"})
    total = fields.Nested(FiguresSchema)
    groups = fields.List(fields.Nested(FiguresSchema))


@blp.route("/stats/referrals")
class ReferralStatistics(MethodView):
    """Aggregates for health administrators."""

    decorators = [stats_reader, login_required]

    @blp.arguments(StatsQuerySchema, location="query")
    @blp.response(200, ReferralStatsSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Referrals touching the caller's region by direction, urgency, state, institution, county and month"""
        identity = require(Permission.stats_read)
        window = asked_window(query, ZoneInfo(current_app.config["HIE"].timezone))
        session = platform_session()
        figures = referral_figures(session, region_subtree(session, identity.region_code), window,
                                   query["group_by"])
        suppressed = sum(group["suppressed"] for group in figures["groups"])
        audit.record("read", resource_type="ReferralStatistics", purpose="health_management",
                     detail=f"since={window.since.isoformat()} until={window.until.isoformat()} "
                            f"group_by={','.join(figures['group_by'])} groups={len(figures['groups'])} "
                            f"suppressed={suppressed}")
        return {"since": window.since, "until": window.until, **figures}
