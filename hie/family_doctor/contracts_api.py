"""REST routes of teams, the package catalogue and contracts (/api/v1/family-doctor/...)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from hie.family_doctor import services, teams, views
from hie.family_doctor.api import blp
from hie.family_doctor.schemas import (
    CatalogueOutSchema,
    ContractInSchema,
    ContractOutSchema,
    ContractQuerySchema,
    MemberInSchema,
    RenewSchema,
    TeamInSchema,
    TeamOutSchema,
    TerminateSchema,
    TransferSchema,
)
from hie.platform.access import Permission, require, require_any
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session


def _team(team: Any) -> dict[str, Any]:
    return views.team_views(platform_session(), [team])[0]


def _contract(contract: Any) -> dict[str, Any]:
    return views.contract_view(platform_session(), contract)


@blp.route("/family-doctor/packages")
class Packages(MethodView):
    """The service packages and priority groups."""

    decorators = [login_required]

    @blp.response(200, CatalogueOutSchema)
    def get(self) -> dict[str, Any]:
        """The packages a resident may sign for (services, follow-ups a year) and the priority groups"""
        return views.catalogue_view()


@blp.route("/family-doctor/teams")
class Teams(MethodView):
    """Family-doctor teams of township and community health centres."""

    decorators = [login_required]

    @blp.response(200, TeamOutSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters: Any) -> list[dict[str, Any]]:
        """Teams of the institutions the caller administers, and the team the caller serves in"""
        identity = require_any(Permission.user_manage, Permission.patient_read)
        rows, total = teams.search(identity, pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return views.team_views(platform_session(), rows)

    @blp.arguments(TeamInSchema)
    @blp.response(201, TeamOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set up a team of a township or community health centre the caller administers"""
        return _team(teams.create(require(Permission.user_manage), body))


@blp.route("/family-doctor/teams/<string:code>")
class TeamByCode(MethodView):
    """One team."""

    decorators = [login_required]

    @blp.response(200, TeamOutSchema)
    def get(self, code: str) -> dict[str, Any]:
        """A team the caller administers or serves in"""
        return _team(teams.visible_team(require_any(Permission.user_manage, Permission.patient_read), code))


@blp.route("/family-doctor/teams/<string:code>/members")
class TeamMembers(MethodView):
    """Joining a team."""

    decorators = [login_required]

    @blp.arguments(MemberInSchema)
    @blp.response(201, TeamOutSchema)
    def post(self, body: dict[str, Any], code: str) -> dict[str, Any]:
        """A clinical user of the team's institution, or a village doctor of its tenant, joins with a team role"""
        return _team(teams.join(require(Permission.user_manage), code, body))


@blp.route("/family-doctor/teams/<string:code>/members/<string:username>")
class TeamMemberByName(MethodView):
    """Leaving a team."""

    decorators = [login_required]

    @blp.response(204)
    def delete(self, code: str, username: str) -> None:
        """The user leaves the team"""
        teams.leave(require(Permission.user_manage), code, username)


@blp.route("/family-doctor/contracts")
class Contracts(MethodView):
    """The caller's team's contracts."""

    decorators = [login_required]

    @blp.arguments(ContractQuerySchema, location="query")
    @blp.response(200, ContractOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """The team's contracts, newest first, by status, package, priority group or expiring within some days"""
        rows, total = services.search(require(Permission.patient_read), filters, pagination_parameters.first_item,
                                      pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return views.contract_views(platform_session(), rows)

    @blp.arguments(ContractInSchema)
    @blp.response(201, ContractOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """A resident signs with the caller's team (one active contract per person)"""
        return _contract(services.sign(require(Permission.patient_write), body))


@blp.route("/family-doctor/contracts/<string:contract_id>")
class ContractById(MethodView):
    """One contract."""

    decorators = [login_required]

    @blp.response(200, ContractOutSchema)
    def get(self, contract_id: str) -> dict[str, Any]:
        """A contract of the caller's team or institution"""
        return _contract(services.read(require(Permission.patient_read), contract_id))


@blp.route("/family-doctor/contracts/<string:contract_id>/renew")
class ContractRenew(MethodView):
    """active -> renewed, and a new active contract."""

    decorators = [login_required]

    @blp.arguments(RenewSchema)
    @blp.response(201, ContractOutSchema)
    def post(self, body: dict[str, Any], contract_id: str) -> dict[str, Any]:
        """A new term with the same team (the answer is the new contract; previous_id names the old one)"""
        return _contract(services.renew(require(Permission.patient_write), contract_id, body))


@blp.route("/family-doctor/contracts/<string:contract_id>/terminate")
class ContractTerminate(MethodView):
    """active -> terminated."""

    decorators = [login_required]

    @blp.arguments(TerminateSchema)
    @blp.response(200, ContractOutSchema)
    def post(self, body: dict[str, Any], contract_id: str) -> dict[str, Any]:
        """End the contract before its term, saying why; the team's access ends at once"""
        return _contract(services.terminate(require(Permission.patient_write), contract_id, body))


@blp.route("/family-doctor/contracts/<string:contract_id>/transfer")
class ContractTransfer(MethodView):
    """active -> transferred, and a new active contract with the other team."""

    decorators = [login_required]

    @blp.arguments(TransferSchema)
    @blp.response(201, ContractOutSchema)
    def post(self, body: dict[str, Any], contract_id: str) -> dict[str, Any]:
        """Move the resident to another team, which must hold a record of them (the answer is the new contract)"""
        return _contract(services.transfer(require(Permission.patient_write), contract_id, body))
