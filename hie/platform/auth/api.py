"""Token endpoints: log in, refresh, log out, and who am I."""

from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from hie.platform.access import permissions_of
from hie.platform.auth import services
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import current_identity
from hie.platform.auth.schemas import MeSchema, RefreshRequestSchema, TokenRequestSchema, TokenResponseSchema
from hie.platform.db import keep_changes_on_error, platform_session

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
            abort(refused.status, message=refused.message)
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
            "region_code": identity.region_code,
        }
