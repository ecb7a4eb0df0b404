"""A blood-pressure monitor's CSV export as vitals entries: the REST import and `hie family-doctor vitals import`.

Rows become entries of one batch; a row without a client_id gets one made from its contract, time and values, so
importing the same export again stores nothing twice."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import click
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.exchange.resources import local_zone
from hie.family_doctor import vitals
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.scripted import identity_of, in_request

MAX_ROWS = 500
MAX_TEXT = 1_000_000
# Our column -> the headers exports use for it (compared without case, spaces, and a unit in brackets).
ALIASES: dict[str, tuple[str, ...]] = {
    "client_id": ("client_id", "clientid", "record_id", "recordid", "id"),
    "contract_id": ("contract_id", "contractid", "contract"),
    "taken_at": ("taken_at", "takenat", "datetime", "date_time", "measured_at", "measuredat", "timestamp",
                 "测量时间"),
    "date": ("date", "measurement_date", "日期", "测量日期"),
    "time": ("time", "measurement_time", "时间"),
    "systolic": ("systolic", "sys", "sbp", "systolic_pressure", "收缩压", "高压"),
    "diastolic": ("diastolic", "dia", "dbp", "diastolic_pressure", "舒张压", "低压"),
    "heart_rate": ("heart_rate", "heartrate", "pulse", "pul", "pr", "hr", "脉搏", "心率"),
}
TARGETS = tuple(ALIASES)
READINGS = ("systolic", "diastolic", "heart_rate")
_UNIT = re.compile(r"[(（\[].*?[)）\]]")
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d")
_TIME_FORMATS = ("%H:%M:%S", "%H:%M")


class CsvRefused(Exception):
    """The file as a whole cannot be read (no usable header, too many rows)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Row:
    """One data row: its line, the entry made of it, and what could not be read."""

    line: int
    entry: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)


def _key(header: str) -> str:
    return re.sub(r"[\s\-/]+", "_", _UNIT.sub("", header.replace("\ufeff", "")).strip().casefold()).strip("_")


def _columns(header: list[str], mapping: dict[str, str] | None) -> dict[str, int]:
    """Our column -> its index in the export, from the mapping given or the aliases."""
    keys = [_key(name) for name in header]
    found: dict[str, int] = {}
    for target, aliases in ALIASES.items():
        wanted = [_key(mapping[target])] if mapping and target in mapping else list(aliases)
        index = next((keys.index(name) for name in wanted if name in keys), None)
        if index is not None:
            found[target] = index
        elif mapping and target in mapping:
            raise CsvRefused(f"has no column {mapping[target]!r} (columns: {target})")
    if not any(name in found for name in READINGS):
        raise CsvRefused("names no systolic, diastolic or pulse column in its first line")
    if "taken_at" not in found and "date" not in found:
        raise CsvRefused("names no taken_at (or date and time) column in its first line")
    return found


def _parse_day(text: str) -> date | None:
    for pattern in _DATE_FORMATS:
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    return None


def _parse_clock(text: str) -> time | None:
    for pattern in _TIME_FORMATS:
        try:
            return datetime.strptime(text, pattern).time()
        except ValueError:
            continue
    return None


def _when(cells: dict[str, str]) -> tuple[datetime | None, str | None]:
    """The row's time: one ISO 8601 column, or date and time columns; without a zone, the platform's zone."""
    if cells.get("taken_at"):
        try:
            when = datetime.fromisoformat(cells["taken_at"].replace("/", "-"))
        except ValueError:
            return None, "taken_at"
    else:
        day = _parse_day(cells.get("date", ""))
        clock = _parse_clock(cells.get("time", "")) if cells.get("time") else time(0)
        if day is None:
            return None, "date"
        if clock is None:
            return None, "time"
        when = datetime.combine(day, clock)
    return (when if when.tzinfo else when.replace(tzinfo=local_zone())), None


def _client_id(contract_id: str | None, when: datetime | None, values: dict[str, Any]) -> str:
    """The same row of the same export always gets the same id."""
    basis = "|".join([contract_id or "", when.isoformat() if when else "",
                      *(f"{values.get(name)}" for name in READINGS)])
    return "csv-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def _row(line: int, cells: dict[str, str], contract_id: str | None, setting: str) -> Row:
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for name in READINGS:
        text = cells.get(name, "")
        if not text:
            continue
        try:
            values[name] = float(text)
        except ValueError:
            errors[name] = [f"{text[:20]!r} is not a number"]
    when, bad = _when(cells)
    if bad:
        errors[bad] = ["is not a date and time this import reads (ISO 8601, or YYYY-MM-DD and HH:MM)"]
    contract = cells.get("contract_id") or contract_id
    if not contract:
        errors["contract_id"] = ["is required (a contract_id column, or the import's contract_id)"]
    entry = {"client_id": cells.get("client_id") or _client_id(contract, when, values), "contract_id": contract,
             "taken_at": when, "setting": setting, **values}
    return Row(line, entry, errors)


def parse(text: str, mapping: dict[str, str] | None, contract_id: str | None, setting: str) -> list[Row]:
    """The export's data rows as entries; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader, None)
        if header is None:
            raise CsvRefused("is empty")
        columns = _columns(header, mapping)
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) == MAX_ROWS:
                raise CsvRefused(f"has more than {MAX_ROWS} rows; split it")
            named = {target: cells[index].strip() for target, index in columns.items() if index < len(cells)}
            rows.append(_row(reader.line_num, named, contract_id, setting))
    except csv.Error as exc:
        raise CsvRefused(f"line {reader.line_num}: {exc}") from None
    return rows


def record_rows(identity: Identity, rows: list[Row]) -> list[dict[str, Any]]:
    """Each row as a batch entry, answered in order with its line."""
    results = []
    known = vitals.stored_entries(identity, [row.entry["client_id"] for row in rows])
    for row in rows:
        if row.errors:
            result = vitals.refused(row.entry["client_id"], row.errors)
        else:
            result = vitals.outcome(identity, row.entry, known)
        results.append({"line": row.line, **result})
    return results


def import_file(app: Flask, path: Path, username: str, contract_id: str | None, setting: str) -> list[dict[str, Any]]:
    """One unit of work, as a request's: the rows stored, the audit written after the commit."""
    from hie.family_doctor.services import require_member

    with Session(app.extensions["hie.engines"].platform) as session:
        if session.scalar(select(User.id).where(User.username == username, User.active.is_(True))) is None:
            raise click.ClickException(f"no active user {username!r}")
        identity = identity_of(session, username, "cli-vitals-import")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None

    def work() -> list[dict[str, Any]]:
        require_member(identity, "create")
        return record_rows(identity, parse(text, None, contract_id, setting))

    return in_request(app, identity, work, "/api/v1/family-doctor/vitals:import")


def register_vitals(group: click.Group) -> None:
    """Attach `vitals import` to `hie family-doctor`."""

    @group.group("vitals")
    def vitals_group() -> None:
        """Vitals recorded by family-doctor teams."""

    @vitals_group.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--user", "username", required=True, help="The team member the readings are recorded by.")
    @click.option("--contract", "contract_id", help="Every row's contract, unless the file has a contract_id column.")
    @click.option("--setting", type=click.Choice(["clinic", "home_visit"]), default="home_visit", show_default=True)
    def vitals_import(file: Path, username: str, contract_id: str | None, setting: str) -> None:
        """Import a blood-pressure monitor's CSV export (columns as for POST /api/v1/family-doctor/vitals:import);
        rows stored before are reported as duplicates."""
        from werkzeug.exceptions import HTTPException

        from hie.platform.cli import make_app

        try:
            results = import_file(make_app(), file, username, contract_id, setting)
        except CsvRefused as exc:
            raise click.ClickException(f"{file}: {exc.message}") from None
        except HTTPException as exc:
            raise click.ClickException(getattr(exc, "data", {}).get("message") or str(exc)) from None
        for result in results:
            if result["status"] == "refused":
                reasons = "; ".join(f"{name} {' '.join(messages)}" for name, messages in result["errors"].items())
                click.echo(f"line {result['line']}: refused: {reasons}")
        counts = {status: sum(1 for r in results if r["status"] == status)
                  for status in ("created", "duplicate", "refused")}
        click.echo(f"{counts['created']} created, {counts['duplicate']} duplicate, {counts['refused']} refused")
        if counts["refused"]:
            raise SystemExit(1)
