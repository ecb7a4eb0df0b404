"""`hie family-doctor`: set up teams and their members, and expire contracts whose term has ended."""

from __future__ import annotations

import click
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.family_doctor import services, teams
from hie.family_doctor.models import Team, TeamArea, TeamMember, TeamRole
from hie.tenants.models import Institution


@click.group("family-doctor")
def family_doctor() -> None:
    """Family-doctor teams and contracts."""


@family_doctor.group("teams")
def teams_group() -> None:
    """Family-doctor teams."""


@family_doctor.group("members")
def members_group() -> None:
    """Team members."""


@family_doctor.group("contracts")
def contracts_group() -> None:
    """Contracts."""


def _app() -> Flask:
    from hie.platform.cli import make_app

    return make_app()


def _team(session: Session, code: str) -> Team:
    team = session.scalar(select(Team).where(Team.code == code))
    if team is None:
        raise click.ClickException(f"no team {code!r}")
    return team


@teams_group.command("add")
@click.argument("code")
@click.option("--name", required=True, help="The team's name, e.g. 屯里镇家庭医生一组.")
@click.option("--institution", "institution_code", required=True,
              help="Code of the township or community health centre it belongs to.")
@click.option("--area", "areas", multiple=True, help="A region code the team serves (repeat for several).")
def teams_add(code: str, name: str, institution_code: str, areas: tuple[str, ...]) -> None:
    """Add a team of a township or community health centre, serving the given areas."""
    app = _app()
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        try:
            institution = teams.team_institution(session, institution_code, lambda _institution: True)
            team = teams.add_team(session, code, name, institution, list(areas))
        except teams.TeamError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"team {team.code} of {institution.code} serving {', '.join(areas) or 'no area yet'}")


@teams_group.command("list")
@click.option("--institution", "institution_code", help="Only the teams of this institution (code).")
def teams_list(institution_code: str | None) -> None:
    """List the teams: code, institution, members, areas and name."""
    app = _app()
    with Session(app.extensions["hie.engines"].platform) as session:
        query = select(Team, Institution.code).join(Institution, Institution.id == Team.institution_id)
        if institution_code is not None:
            query = query.where(Institution.code == institution_code)
        rows = session.execute(query.order_by(Team.code)).all()
        members = dict(session.execute(select(TeamMember.team_id, func.count()).group_by(TeamMember.team_id)).all())
        areas: dict[int, list[str]] = {}
        for team_id, region in session.execute(select(TeamArea.team_id, TeamArea.region_code)
                                               .order_by(TeamArea.region_code)):
            areas.setdefault(team_id, []).append(region)
        for team, code in rows:
            click.echo(f"{team.code}  {code}  {members.get(team.id, 0)} member(s)  "
                       f"areas {','.join(areas.get(team.id, [])) or '-'}  {team.name}")
    click.echo(f"{len(rows)} team(s)")


@members_group.command("add")
@click.argument("team_code", metavar="TEAM")
@click.argument("username")
@click.argument("role", type=click.Choice([role.value for role in TeamRole]))
def members_add(team_code: str, username: str, role: str) -> None:
    """Put a user in a team with a team role (or change their role in it)."""
    app = _app()
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        try:
            teams.add_member(session, _team(session, team_code), username, TeamRole(role))
        except teams.TeamError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"{username} serves in team {team_code} as {role}")


@members_group.command("remove")
@click.argument("team_code", metavar="TEAM")
@click.argument("username")
def members_remove(team_code: str, username: str) -> None:
    """Take a user out of a team."""
    app = _app()
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        if not teams.remove_member(session, _team(session, team_code), username):
            raise click.ClickException(f"{username} is not a member of team {team_code}")
    click.echo(f"{username} left team {team_code}")


@contracts_group.command("expire")
def contracts_expire() -> None:
    """Mark active contracts whose last day has passed as expired, dropping their scheduled follow-ups."""
    app = _app()
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        count = services.expire_due(session)
    click.echo(f"{count} contract(s) expired")


def register(main: click.Group) -> None:
    """Attach `hie family-doctor` (teams, members, contracts, population, vitals) to the main command."""
    from hie.family_doctor.population_cli import register_population
    from hie.family_doctor.vitals_csv import register_vitals

    if "population" not in family_doctor.commands:
        register_population(family_doctor)
        register_vitals(family_doctor)
    main.add_command(family_doctor)
