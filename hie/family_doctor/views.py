"""How teams, contracts and the package catalogue are shown: institutions and users by code and name, in few queries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.family_doctor.models import Contract, ContractStatus, Team, TeamArea, TeamMember
from hie.family_doctor.services import DEFAULT_TERM_DAYS, MAX_TERM_DAYS, catalogue
from hie.platform.auth.models import User
from hie.tenants.models import Institution


def catalogue_view() -> dict[str, Any]:
    """The service packages and priority groups, with the specification they follow."""
    known = catalogue()
    return {"source": known["source"],
            "packages": [{"code": code, **package} for code, package in known["packages"].items()],
            "priority_groups": [{"code": code, "name": name} for code, name in known["priority_groups"].items()],
            "default_term_days": DEFAULT_TERM_DAYS, "max_term_days": MAX_TERM_DAYS}


def _institutions(session: Session, ids: Iterable[int]) -> dict[int, Institution]:
    wanted = set(ids)
    if not wanted:
        return {}
    return {i.id: i for i in session.scalars(select(Institution).where(Institution.id.in_(wanted)))}


def _usernames(session: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(session.execute(select(User.id, User.username).where(User.id.in_(wanted))).all())


def team_views(session: Session, teams: list[Team]) -> list[dict[str, Any]]:
    """Teams with their institution, areas, members (by username, role and institution) and active contracts."""
    ids = [team.id for team in teams]
    if not ids:
        return []
    areas: dict[int, list[str]] = {i: [] for i in ids}
    for team_id, code in session.execute(select(TeamArea.team_id, TeamArea.region_code)
                                         .where(TeamArea.team_id.in_(ids)).order_by(TeamArea.region_code)):
        areas[team_id].append(code)
    rows = session.execute(select(TeamMember, User.username, User.institution_id)
                           .join(User, User.id == TeamMember.user_id).where(TeamMember.team_id.in_(ids))
                           .order_by(TeamMember.team_role, User.username)).all()
    institutions = _institutions(session, [t.institution_id for t in teams] + [row[2] for row in rows])
    members: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for member, username, institution_id in rows:
        members[member.team_id].append({"username": username, "team_role": member.team_role.value,
                                        "institution": institutions[institution_id].code,
                                        "joined_at": member.joined_at})
    counts = dict(session.execute(select(Contract.team_id, func.count()).where(
        Contract.team_id.in_(ids), Contract.status == ContractStatus.active).group_by(Contract.team_id)).all())
    return [{"code": team.code, "name": team.name, "institution": institutions[team.institution_id].code,
             "institution_name": institutions[team.institution_id].name,
             "tenant_code": institutions[team.institution_id].tenant.code, "active": team.active,
             "areas": areas[team.id], "members": members[team.id], "active_contracts": counts.get(team.id, 0),
             "created_at": team.created_at} for team in teams]


def contract_views(session: Session, contracts: list[Contract]) -> list[dict[str, Any]]:
    """Contracts with their team and institution by code, the users who signed and ended them, their successor."""
    if not contracts:
        return []
    teams = dict(session.execute(select(Team.id, Team.code).where(
        Team.id.in_({c.team_id for c in contracts}))).all())
    institutions = _institutions(session, {c.institution_id for c in contracts})
    users = _usernames(session, {i for c in contracts for i in (c.signed_by, c.ended_by)})
    successors = dict(session.execute(select(Contract.previous_id, Contract.id).where(
        Contract.previous_id.in_([c.id for c in contracts]))).all())
    return [{"id": c.id, "team": teams[c.team_id], "institution": institutions[c.institution_id].code,
             "patient_id": c.patient_id, "patient_tenant_code": c.tenant_code,
             "master_person_id": c.master_person_id, "packages": c.packages, "priority_groups": c.priority_groups,
             "region_code": c.region_code, "status": c.status.value, "starts_on": c.starts_on,
             "ends_on": c.ends_on, "signed_by": users.get(c.signed_by), "signed_at": c.signed_at,
             "ended_at": c.ended_at, "ended_by": users.get(c.ended_by) if c.ended_by else None,
             "end_reason": c.end_reason, "previous_id": c.previous_id, "next_id": successors.get(c.id)}
            for c in contracts]


def contract_view(session: Session, contract: Contract) -> dict[str, Any]:
    """One contract."""
    return contract_views(session, [contract])[0]
