"""Regions, tenants, the institution directory and account administration."""

from __future__ import annotations

from typing import Any, NoReturn

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from hie.platform import access
from hie.platform.access import Permission, require
from hie.platform.audit import services as audit
from hie.platform.auth import accounts
from hie.platform.auth import services as auth_services
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import platform_session, shard_session
from hie.tenants import services
from hie.tenants.models import Institution, Region, Tenant
from hie.tenants.schemas import (
    InstitutionQuerySchema,
    InstitutionSchema,
    RegionQuerySchema,
    RegionSchema,
    RegionUpdateSchema,
    TenantSchema,
    UserInSchema,
    UserOutSchema,
    UserUpdateSchema,
)

blp = Blueprint("tenants", __name__, url_prefix="/api/v1", description="Regions, tenants, institutions, accounts")


def _institution_out(institution: Institution) -> dict[str, Any]:
    return {
        "code": institution.code, "name": institution.name, "tenant_code": institution.tenant.code,
        "level": institution.level.value, "type": institution.type.value, "region_code": institution.region_code,
    }


@blp.route("/tenants")
class Tenants(MethodView):
    """The shard map."""

    decorators = [login_required]

    @blp.response(200, TenantSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List tenants and the database each lives in (platform administrators)"""
        require(Permission.tenant_manage)
        config = current_app.config["HIE"]
        tenants = platform_session().scalars(select(Tenant).order_by(Tenant.code)).all()
        return [
            {"code": t.code, "name": t.name, "region_code": t.region_code, "active": t.active,
             "database": make_url(services.resolved_url(config, t)).render_as_string(hide_password=True)}
            for t in tenants
        ]


def _region_out(region: Region) -> dict[str, Any]:
    return {"code": region.code, "name": region.name, "level": region.level.value, "parent_code": region.parent_code}


@blp.route("/regions")
class Regions(MethodView):
    """The administrative tree (GB/T 2260) that tenants, institutions and area scopes refer to."""

    decorators = [login_required]

    @blp.arguments(RegionQuerySchema, location="query")
    @blp.response(200, RegionSchema(many=True))
    @blp.paginate(page_size=100, max_page_size=1000)
    def get(self, filters: dict[str, str], pagination_parameters: Any) -> list[dict[str, Any]]:
        """List regions by code, optionally those directly under one (platform administrators)"""
        require(Permission.tenant_manage)
        query = select(Region)
        if "parent" in filters:
            query = query.where(Region.parent_code == filters["parent"])
        session = platform_session()
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.scalars(query.order_by(Region.code).offset(pagination_parameters.first_item)
                               .limit(pagination_parameters.page_size)).all()
        return [_region_out(row) for row in rows]

    @blp.arguments(RegionSchema)
    @blp.response(201, RegionSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a region under an existing parent (platform administrators)"""
        require(Permission.tenant_manage)
        try:
            region = services.add_region(platform_session(), body["code"], body["name"], body["level"],
                                         body["parent_code"])
        except services.RegionExists as exc:
            abort(409, message=str(exc))
        except services.TenancyError as exc:
            abort(422, message=str(exc))
        audit.record("create", resource_type="Region", resource_id=region.code)
        return _region_out(region)


@blp.route("/regions/<code>")
class RegionByCode(MethodView):
    """One region."""

    decorators = [login_required]

    @blp.response(200, RegionSchema)
    def get(self, code: str) -> dict[str, Any]:
        """One region by its GB/T 2260 code (platform administrators)"""
        require(Permission.tenant_manage)
        return _region_out(_region(code))

    @blp.arguments(RegionUpdateSchema)
    @blp.response(200, RegionSchema)
    def patch(self, body: dict[str, str], code: str) -> dict[str, Any]:
        """Rename a region; its code never changes (platform administrators)"""
        require(Permission.tenant_manage)
        region = _region(code)
        try:
            services.rename_region(region, body["name"])
        except services.TenancyError as exc:
            abort(422, message=str(exc))
        audit.record("update", resource_type="Region", resource_id=region.code)
        return _region_out(region)


def _region(code: str) -> Region:
    region = platform_session().get(Region, code) if len(code) <= 12 else None
    if region is None:
        abort(404, message="No such region.")
    return region


@blp.route("/institutions")
class Institutions(MethodView):
    """The directory every clinician refers into."""

    decorators = [login_required]

    @blp.arguments(InstitutionQuerySchema, location="query")
    @blp.response(200, InstitutionSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    def get(self, filters: dict[str, str], pagination_parameters: Any) -> list[dict[str, Any]]:
        """List member institutions, by tenant and level"""
        query = select(Institution).join(Tenant).where(Institution.active.is_(True))
        if "tenant" in filters:
            query = query.where(Tenant.code == filters["tenant"])
        if "level" in filters:
            query = query.where(Institution.level == filters["level"])
        session = platform_session()
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.scalars(query.order_by(Institution.code).offset(pagination_parameters.first_item)
                               .limit(pagination_parameters.page_size)).all()
        return [_institution_out(row) for row in rows]

    @blp.arguments(InstitutionSchema)
    @blp.response(201, InstitutionSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add an institution (tenant administrators in their own tenant)"""
        identity = require(Permission.institution_manage)
        if Role.platform_admin not in identity.roles and body["tenant_code"] != identity.tenant_code:
            _refuse_grant("Tenant administrators add institutions to their own tenant only.")
        try:
            institution = services.add_institution(
                platform_session(), body["code"], body["name"], body["tenant_code"], body["level"],
                body["region_code"], body["type"],
            )
        except services.TenancyError as exc:
            abort(422, message=str(exc))
        audit.record("create", resource_type="Institution", resource_id=institution.code)
        return _institution_out(institution)


def _refuse_grant(message: str) -> NoReturn:
    audit.record("authorize", outcome="denied", detail=message)
    abort(403, message=message)


@blp.route("/users")
class Users(MethodView):
    """Accounts."""

    decorators = [login_required]

    @blp.arguments(UserInSchema)
    @blp.response(201, UserOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an account (within the administrator's scope, with roles they may grant)"""
        identity = require(Permission.user_manage)
        session = platform_session()
        institution = session.scalar(select(Institution).where(Institution.code == body["institution_code"]))
        if institution is None or not access.administers(identity, institution):
            abort(422, message=f"Institution {body['institution_code']!r} is not one you administer.")
        try:
            roles = accounts.parse_roles(body["roles"])
        except accounts.AccountError as exc:
            abort(422, message=str(exc))
        if not access.may_grant(identity, institution, frozenset(roles)):
            _refuse_grant(f"You may not grant {', '.join(sorted(roles))} at {institution.code}.")
        try:
            user = accounts.add_user(
                session, body["username"], roles, body["institution_code"], body["password"],
                body["display_name"], body["department"], body["title"], body["licence_number"],
                body["patient_id"], shard_session(institution.tenant.code) if body["patient_id"] else None,
            )
        except accounts.AccountError as exc:
            abort(422, message=str(exc))
        audit.record("create", resource_type="User", resource_id=str(user.id))
        return _user_out(user)


@blp.route("/users/<int:user_id>")
class UserById(MethodView):
    """One account."""

    decorators = [login_required]

    @blp.response(200, UserOutSchema)
    def get(self, user_id: int) -> dict[str, Any]:
        """One account the administrator administers"""
        user = _administered_user(require(Permission.user_manage), user_id, "read")
        audit.record("read", resource_type="User", resource_id=str(user.id))
        return _user_out(user)

    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserOutSchema)
    def patch(self, body: dict[str, Any], user_id: int) -> dict[str, Any]:
        """Disable or re-enable an account, or change its roles; its logins re-resolve at once"""
        identity = require(Permission.user_manage)
        session = platform_session()
        user = _administered_user(identity, user_id, "update")
        if not body:
            abort(400, message="Send active and/or roles.")
        if not access.may_grant(identity, user.institution, frozenset(user.roles)):
            _refuse_grant("You may not change an account that holds roles you cannot grant.")
        try:
            roles = accounts.parse_roles(body["roles"]) if "roles" in body else None
            if roles is not None and not access.may_grant(identity, user.institution, frozenset(roles)):
                _refuse_grant(f"You may not grant {', '.join(sorted(roles))} at {user.institution.code}.")
            if roles is not None and user.id == identity.user_id and not set(roles) <= user.roles:
                _refuse_grant("You may not grant yourself roles; another administrator must.")
            accounts.update_user(session, user, body.get("active"), roles)
        except accounts.AccountError as exc:
            abort(422, message=str(exc))
        except accounts.AccountConflict as exc:
            audit.record("update", outcome="denied", resource_type="User", resource_id=str(user.id), detail=str(exc))
            abort(409, message=str(exc))
        auth_services.invalidate_user_sessions(session, user.id)
        audit.record("update", resource_type="User", resource_id=str(user.id))
        return _user_out(user)


def _administered_user(identity: Identity, user_id: int, action: str) -> User:
    """The account, if the caller administers its institution; otherwise 404, as if it did not exist."""
    user = platform_session().get(User, user_id)
    if user is None or not access.administers(identity, user.institution):
        audit.record(action, outcome="not_found", resource_type="User", resource_id=str(user_id))
        abort(404, message="No such account.")
    return user


def _user_out(user: User) -> dict[str, Any]:
    return {
        "id": user.id, "active": user.active, "username": user.username, "display_name": user.display_name,
        "roles": sorted(r.value for r in user.roles), "institution_code": user.institution.code,
        "department": user.department, "title": user.title, "licence_number": user.licence_number,
    }
