"""What every module's figures for administrators share: the window they cover, its query parameters, and the
small-cell rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import ValidationError, fields, validate, validates_schema
from sqlalchemy import ColumnElement, case, func, literal
from webargs.fields import DelimitedList

from hie.platform.db import utcnow
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE
from hie.platform.schemas import PathSchema

MIN_CELL = 5  # a group counting 1 to 4 persons or events shows no figures: a rare combination could point at one
MAX_WINDOW = timedelta(days=5 * 366)
WHEN = validate.Range(min=EARLIEST_QUERY_DATE, max=LATEST_QUERY_DATE)


@dataclass(frozen=True)
class Window:
    """The figures' window: events in [since, until), states at until, months in the region's own time zone."""

    since: datetime
    until: datetime
    zone: ZoneInfo


def default_window(zone: ZoneInfo, now: datetime | None = None) -> Window:
    """The twelve calendar months up to now: the current month and the eleven before it."""
    until = now or utcnow()
    local = until.astimezone(zone)
    months = local.year * 12 + local.month - 1 - 11
    since = datetime(months // 12, months % 12 + 1, 1, tzinfo=zone)
    return Window(since.astimezone(UTC), until.astimezone(UTC), zone)


def month_starts(window: Window) -> list[tuple[str, datetime]]:
    """Each local calendar month the window touches, with the UTC instant its next month begins."""
    local = window.since.astimezone(window.zone)
    year, month = local.year, local.month
    out: list[tuple[str, datetime]] = []
    while True:
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=window.zone)
        out.append((f"{year:04d}-{month:02d}", following.astimezone(UTC)))
        if following >= window.until:
            return out
        year, month = following.year, following.month


def month_of(column: Any, window: Window) -> ColumnElement[str]:
    """The local month (YYYY-MM) of a UTC timestamp column inside the window, as a CASE over UTC bounds: the same SQL
    on SQLite and MariaDB, no time-zone tables needed."""
    months = month_starts(window)
    if len(months) == 1:
        return literal(months[0][0])
    return case(*((column < end, label) for label, end in months[:-1]), else_=literal(months[-1][0]))


def counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """How many rows of a group meet the condition."""
    return func.sum(case((condition, 1), else_=0))


def asked_window(query: dict[str, Any], zone: ZoneInfo) -> Window:
    """The window a WindowQuerySchema asked for, defaults filled in."""
    window = default_window(zone, query.get("until"))
    if query.get("since") is not None:
        window = Window(query["since"].astimezone(UTC), window.until, zone)
    return window


def group_by(groups: tuple[str, ...]) -> DelimitedList:
    """The group_by parameter: comma-separated, any of these."""
    return DelimitedList(fields.String(validate=validate.OneOf(groups)), load_default=list,
                         validate=validate.Length(max=len(groups)),
                         metadata={"description": f"Comma-separated, any of {', '.join(groups)}"})


class WindowQuerySchema(PathSchema):
    """The window: [since, until), both with a time zone, at most five years long."""

    class Meta:
        ordered = True

    since = fields.AwareDateTime(default_timezone=None, validate=WHEN, metadata={
        "description": "Default: the start of the local month eleven months before until"})
    until = fields.AwareDateTime(default_timezone=None, validate=WHEN, metadata={"description": "Default: now"})

    @validates_schema
    def _window(self, data: dict[str, Any], **_kwargs: Any) -> None:
        since, until = data.get("since"), data.get("until") or utcnow()
        if since is not None and since >= until:
            raise ValidationError("must be before until (or now)", "since")
        if since is not None and until - since > MAX_WINDOW:
            raise ValidationError("must be at most five years before until", "since")
