"""`hie referrals`: overdue referrals, each tenant's answer deadlines, and departments' referral slots."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.db import utcnow
from hie.referral import capacity, services
from hie.referral.models import ReferralDeadline, Urgency
from hie.referral.views import institution_codes
from hie.tenants.models import Institution, Tenant


@click.group()
def referrals() -> None:
    """Two-way referrals."""


def _late(delay: timedelta) -> str:
    minutes = int(delay.total_seconds() // 60)
    return f"{minutes // 1440}d {minutes % 1440 // 60}h {minutes % 60}m" if minutes >= 1440 \
        else f"{minutes // 60}h {minutes % 60}m"


@referrals.command("overdue")
@click.option("--institution", "institution_code", help="Only referrals to this receiving institution (code).")
def referrals_overdue(institution_code: str | None) -> None:
    """List referrals still unanswered past their deadline, most overdue first."""
    from hie.platform.cli import make_app

    app = make_app()
    now = utcnow()
    with Session(app.extensions["hie.engines"].platform) as session:
        institution_id = None
        if institution_code is not None:
            institution_id = session.scalar(select(Institution.id).where(Institution.code == institution_code))
            if institution_id is None:
                raise click.ClickException(f"no institution {institution_code!r}")
        late = services.overdue(session, now, institution_id)
        codes = institution_codes(session, {i for r in late for i in (r.sender_institution_id,
                                                                      r.receiver_institution_id)})
        for referral in late:
            click.echo(f"{referral.id}  {referral.urgency.value:<9} {codes[referral.sender_institution_id]} -> "
                       f"{codes[referral.receiver_institution_id]}  due {referral.due_at:%Y-%m-%d %H:%M} UTC, "
                       f"{_late(now - referral.due_at)} late")
    click.echo(f"{len(late)} overdue referral(s)")


@referrals.command("deadline")
@click.argument("tenant_code")
@click.argument("urgency", type=click.Choice([u.value for u in Urgency]))
@click.argument("minutes", type=click.IntRange(1, 30 * 24 * 60))
def referrals_deadline(tenant_code: str, urgency: str, minutes: int) -> None:
    """Set how many minutes a tenant's institutions have to answer a referral of this urgency."""
    from hie.platform.cli import make_app

    app = make_app()
    with Session(app.extensions["hie.engines"].platform) as session, session.begin():
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.code == tenant_code))
        if tenant_id is None:
            raise click.ClickException(f"no tenant {tenant_code!r}")
        row = session.get(ReferralDeadline, (tenant_id, Urgency(urgency)))
        if row is None:
            session.add(ReferralDeadline(tenant_id=tenant_id, urgency=Urgency(urgency), minutes=minutes))
        else:
            row.minutes = minutes
    click.echo(f"{tenant_code}: {urgency} referrals must be answered within {minutes} minutes "
               f"(default {int(services.DEFAULT_DEADLINES[Urgency(urgency)].total_seconds() // 60)})")


SLOT_COLUMNS = ["institution_code", "department", "day", "capacity"]


def _slot_rows(path: Path, codes: dict[str, int]) -> tuple[list[tuple[int, int, str, date, int]], list[str]]:
    """The CSV's rows as (line, institution id, department, day, capacity), and every line's error."""
    rows, errors = [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if [cell.strip() for cell in header or []] != SLOT_COLUMNS:
            return [], [f"line 1: the header must be {','.join(SLOT_COLUMNS)}"]
        seen: set[tuple[str, str, date]] = set()
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(SLOT_COLUMNS):
                errors.append(f"line {line}: expected {len(SLOT_COLUMNS)} columns, got {len(record)}")
                continue
            code, department, raw_day, raw_capacity = (cell.strip() for cell in record)
            problems = []
            if code not in codes:
                problems.append(f"institution_code {code!r} is not an institution that receives referrals")
            if not 1 <= len(department) <= 100:
                problems.append("department must be 1 to 100 characters")
            try:
                day = date.fromisoformat(raw_day)
            except ValueError:
                problems.append(f"day {raw_day!r} is not a date like 2030-01-15")
                day = date.min
            if not raw_capacity.isascii() or not raw_capacity.isdigit() \
                    or int(raw_capacity) > capacity.MAX_CAPACITY:
                problems.append(f"capacity {raw_capacity!r} must be a whole number from 0 to {capacity.MAX_CAPACITY}")
            if (code, department, day) in seen:
                problems.append(f"{code} {department} {raw_day} is given twice")
            seen.add((code, department, day))
            if problems:
                errors.append(f"line {line}: {'; '.join(problems)}")
            else:
                rows.append((line, codes[code], department, day, int(raw_capacity)))
    return rows, errors


@referrals.command("slots")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def referrals_slots(csv_file: Path) -> None:
    """Set departments' referral slots from a CSV (institution_code,department,day,capacity); all or nothing."""
    from hie.platform.cli import make_app

    app = make_app()
    with app.app_context(), Session(app.extensions["hie.engines"].platform) as session, session.begin():
        codes = dict(session.execute(select(Institution.code, Institution.id).where(
            Institution.active.is_(True), Institution.level.in_(list(services.LEVEL_RANK)))).all())
        rows, errors = _slot_rows(csv_file, codes)
        for line, institution_id, department, day, seats in rows:
            try:
                capacity.publish(session, institution_id, department, day, seats)
            except capacity.SlotError as error:
                errors.append(f"line {line}: {error}")
        if errors:
            raise click.ClickException(f"{csv_file.name}: nothing imported\n" + "\n".join(errors))
    click.echo(f"{len(rows)} referral slot day(s) set from {csv_file.name}")


@referrals.command("remind")
def referrals_remind() -> None:
    """Remind receivers of overdue referrals, and past twice the deadline their tenant admins (each once)."""
    from hie.platform.cli import make_app
    from hie.referral.tasks import remind

    with make_app().app_context():
        reminders, escalations = remind()
    click.echo(f"{reminders} reminder(s), {escalations} escalation(s) stored")


@referrals.command("deliver")
def referrals_deliver() -> None:
    """POST the webhook deliveries that are due; failures wait for their next attempt (exponential backoff)."""
    from hie.platform.cli import make_app
    from hie.referral.tasks import deliver_due

    with make_app().app_context():
        delivered, failed = deliver_due()
    click.echo(f"{delivered} delivered, {failed} failed (retried later)")


def register(main: click.Group) -> None:
    """Attach `hie referrals` to the main command."""
    main.add_command(referrals)
