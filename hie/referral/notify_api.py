"""Notifications of the caller's institution, and its referral webhook (routes on the referral blueprint)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.referral import notifications
from hie.referral.api import blp
from hie.referral.schemas import NotificationOutSchema, NotificationQuerySchema, WebhookInSchema, WebhookOutSchema


@blp.route("/notifications")
class Notifications(MethodView):
    """What happened to the referrals of the caller's institution, and what is overdue."""

    decorators = [login_required]

    @blp.arguments(NotificationQuerySchema, location="query")
    @blp.response(200, NotificationOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """The caller's notifications, newest first (unread=true: only those the caller has not read)"""
        identity = notifications.require_staff()
        rows, total = notifications.search(identity, filters["unread"], pagination_parameters.first_item,
                                           pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/notifications/<string:notification_id>/read")
class NotificationRead(MethodView):
    """Read state, per user."""

    decorators = [login_required]

    @blp.response(200, NotificationOutSchema)
    def post(self, notification_id: str) -> dict[str, Any]:
        """Mark one of the caller's notifications read; another institution's answers 404"""
        return notifications.mark_read(notifications.require_staff(), notification_id)


@blp.route("/referral-webhook")
class ReferralWebhook(MethodView):
    """The institution's own system, told of each notification by a signed POST."""

    decorators = [login_required]

    @blp.arguments(WebhookInSchema)
    @blp.response(200, WebhookOutSchema)
    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set the caller's institution's webhook URL (institution_admin); a new secret is returned this once"""
        return notifications.set_webhook(require(Permission.user_manage), body)
