"""Commands for regions, tenants, institutions, accounts and the demo region."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.auth import accounts
from hie.platform.db import session_scope
from hie.tenants import services
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, Region, Tenant


def _app():  # noqa: ANN202
    from hie.platform.cli import make_app

    return make_app()


@click.group()
def regions() -> None:
    """The administrative tree (GB/T 2260 codes)."""


@regions.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def regions_import(file: Path) -> None:
    """Add or update regions from a CSV: code, name, optional parent_code and level (or kind).

    Without parent_code a region lies under the region its code names (141002 under 141000) when that
    is in the file or the database. Re-running changes nothing; any bad line imports nothing.
    """
    app = _app()
    try:
        with session_scope(app.extensions["hie.engines"].platform) as session:
            report = services.import_regions(session, file.read_bytes())
    except services.TenancyError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    click.echo(f"regions: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")


@regions.command("list")
def regions_list() -> None:
    """Print the region tree's rows: code, name, level, parent code."""
    app = _app()
    with Session(app.extensions["hie.engines"].platform) as session:
        for region in session.scalars(select(Region).order_by(Region.code)):
            click.echo(f"{region.code}\t{region.name}\t{region.level.value}\t{region.parent_code or '-'}")


@click.group()
def tenants() -> None:
    """Tenants and the shard map."""


@tenants.command("add")
@click.argument("code")
@click.option("--name", required=True)
@click.option("--region", "region_code", default=None, help="GB/T 2260 code of the tenant's region")
@click.option("--db-url", default=None, help="Shard URL; default from HIE_TENANT_DB_URL_TEMPLATE")
def tenants_add(code: str, name: str, region_code: str | None, db_url: str | None) -> None:
    """Add a tenant, create its database and migrate it."""
    app = _app()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        try:
            with session_scope(engines.platform) as session:
                tenant = services.add_tenant(session, app.config["HIE"], code, name, region_code, db_url)
                services.provision(engines, tenant)
        except services.TenancyError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(f"could not create the database of tenant {code!r}: {first_line}") from None
    click.echo(f"tenant {code} provisioned")


@tenants.command("list")
def tenants_list() -> None:
    """Print the shard map."""
    from sqlalchemy.engine import make_url

    app = _app()
    with Session(app.extensions["hie.engines"].platform) as session:
        rows = session.scalars(select(Tenant).order_by(Tenant.code)).all()
        for tenant in rows:
            url = make_url(services.resolved_url(app.config["HIE"], tenant)).render_as_string(hide_password=True)
            click.echo(f"{tenant.code}\t{tenant.name}\t{tenant.region_code or '-'}\t{url}")


@click.group()
def institutions() -> None:
    """Member institutions."""


@institutions.command("add")
@click.argument("code")
@click.option("--name", required=True)
@click.option("--tenant", "tenant_code", required=True)
@click.option("--level", required=True, type=click.Choice([lv.value for lv in InstitutionLevel]))
@click.option("--type", "type_", default=InstitutionType.general_hospital.value,
              type=click.Choice([t.value for t in InstitutionType]))
@click.option("--region", "region_code", default=None)
def institutions_add(code: str, name: str, tenant_code: str, level: str, type_: str,
                     region_code: str | None) -> None:
    """Register an institution under a tenant."""
    app = _app()
    try:
        with session_scope(app.extensions["hie.engines"].platform) as session:
            services.add_institution(session, code, name, tenant_code, level, region_code, type_)
    except services.TenancyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"institution {code} added to tenant {tenant_code}")


@click.group()
def users() -> None:
    """Accounts."""


@users.command("add")
@click.argument("username")
@click.option("--role", "roles", multiple=True, required=True, help="Repeat for several roles.")
@click.option("--institution", "institution_code", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--display-name", default=None)
@click.option("--department", default=None)
@click.option("--title", default=None)
@click.option("--licence-number", default=None)
@click.option("--patient-id", default=None, help="For residents: their patient record id.")
def users_add(username: str, roles: tuple[str, ...], institution_code: str, password_stdin: bool,
              display_name: str | None, department: str | None, title: str | None,
              licence_number: str | None, patient_id: str | None) -> None:
    """Create an account; the password comes from standard input, never the command line."""
    if not password_stdin:
        raise click.UsageError("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    app = _app()
    with app.app_context():
        try:
            engines = app.extensions["hie.engines"]
            with session_scope(engines.platform) as session, ExitStack() as stack:
                institution = session.scalar(select(Institution).where(Institution.code == institution_code))
                shard = None
                if patient_id and institution is not None:
                    shard = stack.enter_context(services.tenant_session(engines, institution.tenant))
                accounts.add_user(session, username, accounts.parse_roles(list(roles)), institution_code,
                                  password, display_name, department, title, licence_number, patient_id, shard)
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"user {username} added")


@click.command()
def demo() -> None:
    """Build (or complete) the Linfen demo region; re-running changes nothing."""
    from hie.tenants.demo import build_demo

    app = _app()
    with app.app_context():
        build_demo(app, echo=click.echo)


def register(main: click.Group) -> None:
    """Attach this module's commands to `hie`."""
    for command in (regions, tenants, institutions, users, demo):
        main.add_command(command)
