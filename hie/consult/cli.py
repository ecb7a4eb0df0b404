"""`hie consult`: imaging and ECG reads past their turnaround deadline."""

from __future__ import annotations

from datetime import timedelta

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.consult import services
from hie.consult.views import institution_codes
from hie.platform.db import utcnow
from hie.tenants.models import Institution


@click.group()
def consult() -> None:
    """Remote consultation and remote reading."""


def _late(delay: timedelta) -> str:
    minutes = int(delay.total_seconds() // 60)
    return f"{minutes // 1440}d {minutes % 1440 // 60}h {minutes % 60}m" if minutes >= 1440 \
        else f"{minutes // 60}h {minutes % 60}m"


@consult.command("overdue")
@click.option("--institution", "institution_code", help="Only reads asked of this reading institution (code).")
def consult_overdue(institution_code: str | None) -> None:
    """List imaging and ECG reads still waiting for an opinion past their deadline, most overdue first."""
    from hie.platform.cli import make_app

    app = make_app()
    now = utcnow()
    with Session(app.extensions["hie.engines"].platform) as session:
        late = services.overdue_reads(session, now)
        if institution_code is not None:
            institution_id = session.scalar(select(Institution.id).where(Institution.code == institution_code))
            if institution_id is None:
                raise click.ClickException(f"no institution {institution_code!r}")
            late = [c for c in late if c.consultant_institution_id == institution_id]
        codes = institution_codes(session, {i for c in late for i in (c.requester_institution_id,
                                                                      c.consultant_institution_id)})
        for read in late:
            click.echo(f"{read.id}  {read.kind.value:<12} {read.urgency.value:<7} "
                       f"{codes[read.requester_institution_id]} -> {codes[read.consultant_institution_id]} "
                       f"{read.department}  due {read.due_at:%Y-%m-%d %H:%M} UTC, {_late(now - read.due_at)} late")
    click.echo(f"{len(late)} overdue read(s)")


def register(main: click.Group) -> None:
    """Attach `hie consult` to the main command."""
    main.add_command(consult)
