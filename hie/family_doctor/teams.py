"""Team management: the teams of township and community health centres, the areas they serve and their members.

The rules live in functions over a Session that raise TeamError, so `hie family-doctor` and the API refuse alike;
the API's wrappers add who may manage which team (hie.platform.access.administers) and the audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from flask_smorest import abort
from sqlalchemy import Select, false, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.family_doctor.models import Team, TeamArea, TeamMember, TeamRole
from hie.family_doctor.services import TEAM_LEVELS, membership
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User, UserRole
from hie.platform.db import platform_session
from hie.tenants.models import Institution, InstitutionLevel, Region

RESOURCE = "FamilyDoctorTeam"


class TeamError(Exception):
    """A refused team change naming its field; the API answers it 422 (or 409 for a conflict), the CLI exits 1."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field} {message}")
        self.field, self.message, self.status = field, message, status


def team_institution(session: Session, code: str, may_manage: Callable[[Institution], bool]) -> Institution:
    """The township or community health centre a new team belongs to, if the caller manages it."""
    institution = session.scalar(select(Institution).where(Institution.code == code))
    if institution is None or not institution.active or not may_manage(institution):
        raise TeamError("institution", f"{code!r} is not an active institution you administer")
    if institution.level not in TEAM_LEVELS:
        raise TeamError("institution", f"{code} is a {institution.level.value}; family-doctor teams belong to "
                        "township or community health centres")
    return institution


def check_areas(session: Session, institution: Institution, areas: list[str]) -> list[str]:
    """The areas, each once, each a region of the region table within the institution's tenant's region."""
    areas = list(dict.fromkeys(areas))
    known = set(session.scalars(select(Region.code).where(Region.code.in_(areas)))) if areas else set()
    root = institution.tenant.region_code
    scope = access.region_subtree(session, root) if root and areas else None
    for index, code in enumerate(areas):
        if code not in known:
            raise TeamError(f"areas[{index}]", f"{code!r} is not in the region table")
        if scope is not None and code not in scope:
            raise TeamError(f"areas[{index}]", f"{code} lies outside the tenant's region {root}")
    return areas


def add_team(session: Session, code: str, name: str, institution: Institution, areas: list[str]) -> Team:
    """A new team with its areas; a code is used once in the region."""
    areas = check_areas(session, institution, areas)
    if session.scalar(select(Team.id).where(Team.code == code)) is not None:
        raise TeamError("code", f"{code} is already a team's code", 409)
    team = Team(code=code, name=name.strip(), institution_id=institution.id, active=True)
    try:
        with session.begin_nested():  # flushes what is pending first, so the team is added inside it
            session.add(team)
            session.flush()
    except IntegrityError:
        raise TeamError("code", f"{code} is already a team's code", 409) from None
    session.add_all(TeamArea(team_id=team.id, region_code=area) for area in areas)
    session.flush()
    return team


def _eligible(session: Session, team: Team, username: str) -> User:
    """An active clinical user of the team's institution, or a village doctor of a village clinic of its tenant."""
    home = session.get_one(Institution, team.institution_id)
    user = session.scalar(select(User).where(User.username == username))
    fits = user is not None and user.active and user.institution.active and (
        user.institution_id == home.id or (user.institution.level is InstitutionLevel.village_clinic
                                           and user.institution.tenant_id == home.tenant_id))
    if not fits:
        raise TeamError("username", f"{username!r} is not an active user of {home.code} or of a village clinic "
                        "of its tenant")
    roles = set(session.scalars(select(UserRole.role).where(UserRole.user_id == user.id)))  # type: ignore[union-attr]
    if not any(access.Permission.patient_read in access.ROLE_PERMISSIONS[role] for role in roles):
        raise TeamError("username", f"{username} holds no clinical role (clinician, family_doctor, specialist or "
                        "nurse) and could not read the residents' records")
    return user  # type: ignore[return-value]


def add_member(session: Session, team: Team, username: str, role: TeamRole) -> TeamMember:
    """A user joins the team (or changes their role in it); a user serves in one team, a team has one lead."""
    user = _eligible(session, team, username)
    current = session.get(TeamMember, user.id, with_for_update=True)
    if current is not None and current.team_id != team.id:
        other = session.get_one(Team, current.team_id)
        raise TeamError("username", f"{username} already serves in team {other.code}; remove them there first", 409)
    if role is TeamRole.lead_doctor:
        lead = session.scalar(select(User.username).join(TeamMember, TeamMember.user_id == User.id).where(
            TeamMember.team_id == team.id, TeamMember.team_role == TeamRole.lead_doctor, User.id != user.id))
        if lead is not None:
            raise TeamError("team_role", f"team {team.code} already has a lead doctor ({lead})", 409)
    if current is not None:
        current.team_role = role
        session.flush()
        return current
    member = TeamMember(user_id=user.id, team_id=team.id, team_role=role)
    try:
        with session.begin_nested():
            session.add(member)
            session.flush()
    except IntegrityError:
        raise TeamError("username", f"{username} joined another team meanwhile; remove them there first",
                        409) from None
    return member


def remove_member(session: Session, team: Team, username: str) -> bool:
    """The user leaves the team; False if they were not in it."""
    row = session.execute(select(TeamMember).join(User, User.id == TeamMember.user_id).where(
        User.username == username, TeamMember.team_id == team.id)).scalar_one_or_none()
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


# --- the API's side: who manages and sees which team, and the audit ---

def _refused(error: TeamError, action: str, resource_id: str | None) -> NoReturn:
    audit.record(action, "failure", resource_type=RESOURCE, resource_id=resource_id, detail=str(error)[:500])
    abort(error.status, message=f"{error.field} {error.message}.", errors={"json": {error.field: [error.message]}})


def _team(session: Session, code: str) -> tuple[Team, Institution] | None:
    row = session.execute(select(Team, Institution).join(Institution, Institution.id == Team.institution_id)
                          .where(Team.code == code)).first() if len(code) <= 40 else None
    return (row[0], row[1]) if row else None


def _not_found(action: str, code: str, found: bool) -> NoReturn:
    audit.record(action, "denied" if found else "not_found", resource_type=RESOURCE, resource_id=code[:80])
    abort(404, message="No such team.")


def visible_team(identity: Identity, code: str) -> Team:
    """A team the caller administers or serves in; any other code answers 404, audited."""
    session = platform_session()
    found = _team(session, code)
    if found is None or not (access.administers(identity, found[1]) or (
            (mine := membership(session, identity.user_id)) is not None and mine[0].id == found[0].id)):
        _not_found("read", code, found is not None)
    return found[0]  # type: ignore[index]


def managed_team(identity: Identity, code: str) -> Team:
    """A team of an institution the caller administers; any other code answers 404, audited."""
    found = _team(platform_session(), code)
    if found is None or not access.administers(identity, found[1]):
        _not_found("update", code, found is not None)
    return found[0]  # type: ignore[index]


def create(identity: Identity, body: dict[str, Any]) -> Team:
    """An administrator sets up a team of an institution they administer."""
    session = platform_session()
    try:
        institution = team_institution(session, body["institution"],
                                       lambda institution: access.administers(identity, institution))
        team = add_team(session, body["code"], body["name"], institution, body["areas"])
    except TeamError as error:
        _refused(error, "create", body["code"])
    audit.record("create", resource_type=RESOURCE, resource_id=team.code,
                 detail=f"team of {institution.code}, areas {','.join(body['areas']) or '-'}"[:500])
    return team


def join(identity: Identity, code: str, body: dict[str, Any]) -> Team:
    """A user joins a team the caller administers."""
    team = managed_team(identity, code)
    try:
        add_member(platform_session(), team, body["username"], body["team_role"])
    except TeamError as error:
        _refused(error, "update", team.code)
    audit.record("update", resource_type=RESOURCE, resource_id=team.code,
                 detail=f"member {body['username']} as {body['team_role'].value}")
    return team


def leave(identity: Identity, code: str, username: str) -> None:
    """A user leaves a team the caller administers; someone not in it answers 404."""
    team = managed_team(identity, code)
    if not remove_member(platform_session(), team, username):
        audit.record("update", "not_found", resource_type=RESOURCE, resource_id=team.code,
                     detail=f"no member {username[:64]}")
        abort(404, message=f"{username[:64]} is not a member of team {team.code}.")
    audit.record("update", resource_type=RESOURCE, resource_id=team.code, detail=f"member {username} removed")


def _listed(identity: Identity) -> Select[tuple[Team]]:
    """Teams of the institutions the caller administers, and the team they serve in."""
    scopes = []
    for role in identity.roles:
        if role is Role.platform_admin:
            scopes.append(Team.id.is_not(None))
        elif role is Role.tenant_admin:
            scopes.append(Institution.tenant_id == identity.tenant_id)
        elif role is Role.institution_admin:
            scopes.append(Team.institution_id == identity.institution_id)
    mine = membership(platform_session(), identity.user_id)
    if mine is not None:
        scopes.append(Team.id == mine[0].id)
    return select(Team).join(Institution, Institution.id == Team.institution_id).where(or_(false(), *scopes))


def search(identity: Identity, offset: int, limit: int) -> tuple[list[Team], int]:
    """One page of the teams the caller may see, by code."""
    session = platform_session()
    query = _listed(identity)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Team.code).offset(offset).limit(limit))), total
