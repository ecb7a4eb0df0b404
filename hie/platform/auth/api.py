"""Token endpoints: log in, refresh, log out, and who am I."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import ColumnElement, false, func, or_, select, true

from hie.platform.access import Permission, permissions_of, require
from hie.platform.auth import services
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import Identity, current_identity
from hie.platform.auth.models import LoginAlert, Role
from hie.platform.auth.schemas import (
    LoginAlertSchema,
    MeSchema,
    RefreshRequestSchema,
    TokenRequestSchema,
    TokenResponseSchema,
)
from hie.platform.db import keep_changes_on_error, platform_session
from hie.tenants.models import Institution

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Log in and out")


def _token_body(pair: services.TokenPair) -> dict[str, object]:
    return {
        "access_token": pair.access_token, "token_type": pair.token_type,
        "expires_in": pair.expires_in, "refresh_token": pair.refresh_token,
    }


@blp.route("/token")
class Token(MethodView):
    """Password login."""

    @blp.arguments(TokenRequestSchema)
    @blp.response(200, TokenResponseSchema)
    def post(self, body: dict[str, str]) -> dict[str, object]:
        """Exchange a username and password for an access and a refresh token"""
        try:
            pair = services.login(platform_session(), body["username"], body["password"], request.remote_addr)
        except services.LoginRefused as refused:
            keep_changes_on_error()
            headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
            abort(refused.status, message=refused.message, headers=headers)
        return _token_body(pair)


@blp.route("/refresh")
class Refresh(MethodView):
    """Refresh-token rotation."""

    @blp.arguments(RefreshRequestSchema)
    @blp.response(200, TokenResponseSchema)
    def post(self, body: dict[str, str]) -> dict[str, object]:
        """Exchange a refresh token for a new pair; the old refresh token stops working"""
        try:
            pair = services.refresh(platform_session(), body["refresh_token"], request.remote_addr)
        except services.LoginRefused as refused:
            keep_changes_on_error()
            abort(refused.status, message=refused.message)
        return _token_body(pair)


def _administered(identity: Identity) -> ColumnElement[bool]:
    """Institutions whose accounts the caller administers, as a condition (see access.ROLE_GRANTS)."""
    if Role.platform_admin in identity.roles:
        return true()
    scopes: list[ColumnElement[bool]] = []
    if Role.tenant_admin in identity.roles:
        scopes.append(Institution.tenant_id == identity.tenant_id)
    if Role.institution_admin in identity.roles:
        scopes.append(Institution.id == identity.institution_id)
    return or_(*scopes) if scopes else false()


@blp.route("/alerts")
class LoginAlerts(MethodView):
    """Sustained failed logins against accounts the caller administers."""

    decorators = [login_required]

    @blp.response(200, LoginAlertSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    def get(self, pagination_parameters: Any) -> list[dict[str, object]]:
        """Login alerts of the caller's institutions, newest first (institution, tenant and platform admins)"""
        identity = require(Permission.user_manage)
        session = platform_session()
        query = select(LoginAlert, Institution.code).join(Institution, Institution.id == LoginAlert.institution_id) \
            .where(_administered(identity))
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.execute(query.order_by(LoginAlert.raised_at.desc(), LoginAlert.id.desc())
                               .offset(pagination_parameters.first_item).limit(pagination_parameters.page_size))
        return [
            {"id": alert.id, "raised_at": alert.raised_at, "user_id": alert.user_id,
             "username": alert.user.username, "institution_code": code, "failures": alert.failures,
             "source_addresses": alert.source_addresses}
            for alert, code in rows
        ]


@blp.route("/logout")
class Logout(MethodView):
    """End a login."""

    decorators = [login_required]

    @blp.response(204)
    def post(self) -> None:
        """Revoke the caller's login session and every token issued under it"""
        services.logout(platform_session(), current_identity())


@blp.route("/me")
class Me(MethodView):
    """The caller."""

    decorators = [login_required]

    @blp.response(200, MeSchema)
    def get(self) -> dict[str, object]:
        """Who the access token belongs to, with roles and permissions"""
        identity = current_identity()
        return {
            "user_id": identity.user_id, "username": identity.username,
            "roles": sorted(r.value for r in identity.roles),
            "permissions": sorted(p.value for p in permissions_of(identity)),
            "institution_code": identity.institution_code, "tenant_code": identity.tenant_code,
            "region_code": identity.region_code, "patient_id": identity.patient_id,
        }
