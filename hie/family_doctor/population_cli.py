"""`hie family-doctor population import CSV`: the registered population of each priority group per region and year,
the denominator of coverage in the figures."""

from __future__ import annotations

import csv
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.family_doctor.models import Population
from hie.family_doctor.services import catalogue
from hie.tenants.models import Region

COLUMNS = ["region_code", "priority_group", "year", "persons"]


def _rows(path: Path, regions: set[str]) -> tuple[dict[tuple[str, str, int], int], list[str]]:
    """The file's rows keyed by (region, group, year), and its errors by line; a later row of a key wins."""
    groups = catalogue()["priority_groups"]
    rows: dict[tuple[str, str, int], int] = {}
    errors: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != COLUMNS:
            raise click.ClickException(f"the header must be {','.join(COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            region, group = (row.get("region_code") or "").strip(), (row.get("priority_group") or "").strip()
            year, persons = (row.get("year") or "").strip(), (row.get("persons") or "").strip()
            if None in row or len(row) != len(COLUMNS):
                errors.append(f"line {line}: expected {len(COLUMNS)} fields")
            elif region not in regions:
                errors.append(f"line {line}: region_code {region!r} is not a known region")
            elif group not in groups:
                errors.append(f"line {line}: priority_group {group!r} is not one of {', '.join(groups)}")
            elif not (year.isascii() and year.isdigit() and 1900 <= int(year) <= 2200):
                errors.append(f"line {line}: year {year!r} is not a year from 1900 to 2200")
            elif not (persons.isascii() and persons.isdigit() and len(persons) <= 9):
                errors.append(f"line {line}: persons {persons!r} is not a whole number below 10^9")
            else:
                rows[(region, group, int(year))] = int(persons)
    return rows, errors


def register_population(group: click.Group) -> None:
    """Add `population import` to the module's command group."""

    @group.group("population")
    def population() -> None:
        """Registered populations of the priority groups (coverage's denominator)."""

    @population.command("import")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    def population_import(path: Path) -> None:
        """Load a CSV of region_code,priority_group,year,persons; all rows or none (errors listed by line)."""
        from hie.platform.cli import make_app

        app = make_app()
        with Session(app.extensions["hie.engines"].platform) as session, session.begin():
            regions = set(session.scalars(select(Region.code)).all())
            rows, errors = _rows(path, regions)
            if errors:
                for error in errors[:50]:
                    click.echo(error, err=True)
                raise click.ClickException(f"{len(errors)} bad row(s); nothing loaded")
            for (region, priority_group, year), persons in rows.items():
                found = session.get(Population, (region, priority_group, year))
                if found is None:
                    session.add(Population(region_code=region, priority_group=priority_group, year=year,
                                           persons=persons))
                else:
                    found.persons = persons
        click.echo(f"{len(rows)} population row(s) loaded")
