"""REST API of referrals: send, list, read, and one endpoint per move."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.referral import services, views
from hie.referral.schemas import (
    AcceptSchema,
    ArriveSchema,
    CompleteSchema,
    DeclineSchema,
    NoteSchema,
    ReferralCountSchema,
    ReferralInSchema,
    ReferralOutSchema,
    ReferralQuerySchema,
)

blp = Blueprint("referrals", __name__, url_prefix="/api/v1", description="Two-way referrals between institutions")


def _shown(referral: Any) -> dict[str, Any]:
    return views.full_view(platform_session(), referral)


@blp.route("/referrals")
class Referrals(MethodView):
    """The caller's institution's referrals, in and out."""

    decorators = [login_required]

    @blp.arguments(ReferralQuerySchema, location="query")
    @blp.response(200, ReferralOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """Incoming (default) or outgoing referrals, newest first, by state, urgency and date made"""
        identity = require(Permission.patient_read)
        rows, total = services.search(identity, filters, pagination_parameters.first_item,
                                      pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return views.list_view(platform_session(), rows)

    @blp.arguments(ReferralInSchema)
    @blp.response(201, ReferralOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Refer a patient of the caller's institution up, down or laterally"""
        identity = require(Permission.patient_write)
        return _shown(services.create(identity, body))


@blp.route("/referrals/count")
class ReferralCount(MethodView):
    """What waits in the inbox."""

    decorators = [login_required]

    @blp.response(200, ReferralCountSchema)
    def get(self) -> dict[str, int]:
        """Incoming referrals not yet answered, and how many of them are past their deadline"""
        return services.unanswered(require(Permission.patient_read))


@blp.route("/referrals/<string:referral_id>")
class ReferralById(MethodView):
    """One referral with its steps."""

    decorators = [login_required]

    @blp.response(200, ReferralOutSchema)
    def get(self, referral_id: str) -> dict[str, Any]:
        """Read a referral the caller's institution sends or receives"""
        return _shown(services.get_visible(require(Permission.patient_read), referral_id))


@blp.route("/referrals/<string:referral_id>/accept")
class ReferralAccept(MethodView):
    """requested -> accepted."""

    decorators = [login_required]

    @blp.arguments(AcceptSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """The receiver accepts, with an appointment time"""
        return _shown(services.accept(require(Permission.patient_write), referral_id, body))


@blp.route("/referrals/<string:referral_id>/decline")
class ReferralDecline(MethodView):
    """requested -> declined."""

    decorators = [login_required]

    @blp.arguments(DeclineSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """The receiver declines, saying why"""
        return _shown(services.decline(require(Permission.patient_write), referral_id, body))


@blp.route("/referrals/<string:referral_id>/arrive")
class ReferralArrive(MethodView):
    """accepted -> arrived."""

    decorators = [login_required]

    @blp.arguments(ArriveSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """The patient arrived: the receiver names its own EMPI-linked record of them"""
        return _shown(services.arrive(require(Permission.patient_write), referral_id, body))


@blp.route("/referrals/<string:referral_id>/complete")
class ReferralComplete(MethodView):
    """arrived -> completed."""

    decorators = [login_required]

    @blp.arguments(CompleteSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """Discharge with a summary; after an upward referral, optionally refer back down (back_referral)"""
        referral, _back = services.complete(require(Permission.patient_write), referral_id, body)
        return _shown(referral)


@blp.route("/referrals/<string:referral_id>/cancel")
class ReferralCancel(MethodView):
    """requested or accepted -> cancelled."""

    decorators = [login_required]

    @blp.arguments(NoteSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """The sender withdraws the referral before the patient arrives"""
        return _shown(services.cancel(require(Permission.patient_write), referral_id, body))


@blp.route("/referrals/<string:referral_id>/no-show")
class ReferralNoShow(MethodView):
    """accepted -> no_show."""

    decorators = [login_required]

    @blp.arguments(NoteSchema)
    @blp.response(200, ReferralOutSchema)
    def post(self, body: dict[str, Any], referral_id: str) -> dict[str, Any]:
        """The receiver records that the patient did not come"""
        return _shown(services.no_show(require(Permission.patient_write), referral_id, body))
