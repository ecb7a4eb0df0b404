"""Family-doctor figures for health administrators: contracts, coverage of the priority groups, follow-ups done on
time and the HEARTS control indicators, per team, institution, township, county and month, computed at query time
from the workflow tables, without names.

Definitions (docs/family_doctor.md and bench/README_family_doctor.md repeat them):

* The window is [since, until); months are local calendar months of the platform's time zone. Figures that describe
  a state (held contracts, coverage, HEARTS) are taken at the window's end, or, grouped by month, at the end of each
  month (the last month ends at until). Figures that count events (contracts signed, follow-ups due) count the
  events of the window, or of each month.
* A contract is in effect from the earlier of its signing and its first day (a paper contract entered late counts
  from the day it began; a renewal signed ahead of its term from its signing). It is held at an instant t when it was
  in effect before t (signed_at < t, or starts_on <= the local date of t - 1 microsecond), had not ended (ended_at is
  null or >= t) and its term runs on the day before t (ends_on >= local date of t - 1 microsecond). Renewal and
  transfer end one contract as the next is signed, so a person holds at most one at any instant.
* A contract's team, institution (the team's), township (the institution's region) and county (the region of the
  contract's tenant) are its groups; a contract is in the caller's scope when its county or its township is.
* contracts.active: persons holding a contract at the end. contracts.signed: contracts signed in the window.
* coverage of a priority group: persons holding a contract that lists the group, over the group's registered
  population (fd_populations) of the area in the latest year loaded up to the end's year. An area's population is its
  own row if loaded, else the sum of its child regions'. Only county and township groupings (and the total) have an
  area, so grouped by team or institution the population and share are null.
* follow_ups.due: follow-ups not cancelled whose due_on is a local day of the window that has ended (from the local
  date of since to the last day ending by until); done_on_time: those done (status done) before the end of their due
  day (done_at < local midnight after due_on; the zone's UTC offset at until is used for the whole window).
* HEARTS, per condition (hypertension: the packages that schedule hypertension follow-ups; diabetes likewise), at
  the end E: registered = persons holding at E a contract with the condition's package whose first contract with
  such a package was in effect before E - 3 months. A visit is a face-to-face measurement of the condition's measure:
  a done face-to-face follow-up of that condition with its measure (SBP and DBP; fasting glucose), or a staff reading
  (Vitals not self-reported, taken at a clinic or a home visit) with that measure, by any team. controlled = the
  registered whose last visit in [E - 3 months, E) was controlled (SBP < 140 and DBP < 90 mmHg; fasting glucose
  < 7.0 mmol/L; when several readings share that last instant, all must be); no_visit_3m = the registered with no
  visit in [E - 3 months, E); lost_to_follow_up = the registered with no visit in [E - 12 months, E). Each share is
  over registered (so the share of those still followed is controlled / (registered - lost_to_follow_up)).
* Small cells: a block of figures whose base (active or signed contracts, persons of the group, follow-ups due,
  registered persons) is 1 to 4 shows nulls with suppressed true.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from hie.family_doctor.models import (
    Condition,
    Contract,
    FollowUp,
    FollowUpStatus,
    Population,
    Setting,
    Team,
    Vitals,
)
from hie.family_doctor.services import catalogue
from hie.platform.figures import MIN_CELL, Window, default_window
from hie.tenants.models import Institution, Region, Tenant

GROUPS = ("team", "institution", "township", "county", "month")
RECENT_MONTHS, LOST_MONTHS = 3, 12
SBP_LIMIT, DBP_LIMIT, FPG_LIMIT = 140, 90, 7.0  # controlled below these (HEARTS; the Specification's tables)
BLOCKS = ("contracts", "coverage", "follow_ups", "hypertension", "diabetes")


def months_before(instant: datetime, months: int, zone: ZoneInfo) -> datetime:
    """The same local wall time `months` calendar months earlier (the day clamped to the month's length)."""
    local = instant.astimezone(zone)
    index = local.year * 12 + local.month - 1 - months
    year, month = index // 12, index % 12 + 1
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    return local.replace(year=year, month=month, day=min(local.day, last)).astimezone(UTC)


def month_ends(window: Window) -> list[tuple[str, datetime, datetime]]:
    """Each local calendar month the window touches: its label and its UTC start and end, clipped to the window."""
    local = window.since.astimezone(window.zone)
    year, month, start = local.year, local.month, window.since
    out: list[tuple[str, datetime, datetime]] = []
    while True:
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=window.zone).astimezone(UTC)
        out.append((f"{year:04d}-{month:02d}", start, min(following, window.until)))
        if following >= window.until:
            return out
        local_next = following.astimezone(window.zone)
        year, month, start = local_next.year, local_next.month, following


def _last_day(instant: datetime, zone: ZoneInfo) -> date:
    """The local day just before an instant: the last day a state at that instant covers."""
    return (instant - timedelta(microseconds=1)).astimezone(zone).date()


class _Columns:
    """The joins every figure needs: a contract's team, institution, township and county, and the scope."""

    def __init__(self) -> None:
        self.township, self.county = aliased(Region), aliased(Region)
        self.keys: dict[str, tuple[ColumnElement[Any], ...]] = {
            "team": (Team.code, Team.name),
            "institution": (Institution.code, Institution.name),
            "township": (Institution.region_code, self.township.name),
            "county": (Tenant.region_code, self.county.name),
        }

    def joined(self, query: Select[Any], region_codes: set[str]) -> Select[Any]:
        """A query over contracts (already in FROM) with the group columns and limited to the scope."""
        return (query.join(Team, Team.id == Contract.team_id)
                .join(Institution, Institution.id == Team.institution_id)
                .join(Tenant, Tenant.code == Contract.tenant_code)
                .outerjoin(self.township, self.township.code == Institution.region_code)
                .outerjoin(self.county, self.county.code == Tenant.region_code)
                .where(or_(Tenant.region_code.in_(region_codes), Institution.region_code.in_(region_codes))))


def _in_effect_before(at: datetime, zone: ZoneInfo) -> ColumnElement[bool]:
    """A contract is in effect from the earlier of its signing and its first day: a paper contract entered late
    counts from the day it began, a renewal signed ahead of its term from its signing."""
    return or_(Contract.signed_at < at, Contract.starts_on <= _last_day(at, zone))


def _held(at: datetime, zone: ZoneInfo) -> ColumnElement[bool]:
    return and_(_in_effect_before(at, zone), or_(Contract.ended_at.is_(None), Contract.ended_at >= at),
                Contract.ends_on >= _last_day(at, zone))


def _lists(column: Any, code: str) -> ColumnElement[bool]:
    """A JSON list column holds this code: a LIKE on its text, the same SQL on SQLite and MariaDB."""
    return type_coerce(column, String).like(f'%"{code}"%')


def _with_package_of(condition: Condition) -> ColumnElement[bool]:
    packages = [code for code, package in catalogue()["packages"].items() if condition.value in package["conditions"]]
    return or_(*(_lists(Contract.packages, code) for code in packages))


def _counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _rows(session: Session, query: Select[Any], width: int, names: Sequence[str]) -> dict[tuple[Any, ...], dict]:
    return {tuple(row[:width]): dict(zip(names, (int(v or 0) for v in row[width:]), strict=True))
            for row in session.execute(query).all()}


def _state(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], codes: set[str], at: datetime,
           zone: ZoneInfo) -> dict[tuple[Any, ...], dict[str, int]]:
    """Persons holding a contract at `at`, in all and per priority group."""
    groups = list(catalogue()["priority_groups"])
    query = select(*keys, func.count(func.distinct(Contract.master_person_id)),
                   *(_counted(_lists(Contract.priority_groups, group)) for group in groups)).select_from(Contract)
    query = columns.joined(query, codes).where(_held(at, zone))
    if keys:
        query = query.group_by(*keys)
    return _rows(session, query, len(keys), ["active", *groups])


def _visits(condition: Condition, since: datetime, until: datetime) -> Any:
    """Every face-to-face measurement of the condition's measure in [since, until), with whether it was controlled."""
    if condition is Condition.hypertension:
        vitals_ok = and_(Vitals.systolic < SBP_LIMIT, Vitals.diastolic < DBP_LIMIT)
        vitals_has = and_(Vitals.systolic.is_not(None), Vitals.diastolic.is_not(None))
        form_ok = and_(FollowUp.systolic < SBP_LIMIT, FollowUp.diastolic < DBP_LIMIT)
        form_has = and_(FollowUp.systolic.is_not(None), FollowUp.diastolic.is_not(None))
    else:
        vitals_ok, vitals_has = Vitals.fasting_glucose < FPG_LIMIT, Vitals.fasting_glucose.is_not(None)
        form_ok, form_has = FollowUp.fasting_glucose < FPG_LIMIT, FollowUp.fasting_glucose.is_not(None)
    readings = select(Vitals.master_person_id.label("person"), Vitals.taken_at.label("at"),
                      case((vitals_ok, 1), else_=0).label("ok")).where(
        Vitals.self_reported.is_(False), Vitals.setting != Setting.self_device, vitals_has,
        Vitals.taken_at >= since, Vitals.taken_at < until)
    forms = select(FollowUp.master_person_id, FollowUp.done_at, case((form_ok, 1), else_=0)).where(
        FollowUp.condition == condition, FollowUp.status == FollowUpStatus.done, FollowUp.face_to_face.is_(True),
        form_has, FollowUp.done_at >= since, FollowUp.done_at < until)
    return union_all(readings, forms).cte(f"visits_{condition.value}")


def _hearts(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], codes: set[str], at: datetime,
            zone: ZoneInfo, condition: Condition) -> dict[tuple[Any, ...], dict[str, int]]:
    """Registered, controlled, no visit in 3 months and lost to follow-up, per group, at `at`."""
    recent, lost = months_before(at, RECENT_MONTHS, zone), months_before(at, LOST_MONTHS, zone)
    package = _with_package_of(condition)
    visits = _visits(condition, lost, at)
    seen = (select(visits.c.person, func.max(case((visits.c.at >= recent, visits.c.at))).label("last"))
            .group_by(visits.c.person).subquery("seen"))
    last = (select(visits.c.person, func.min(visits.c.ok).label("ok"))
            .join(seen, and_(seen.c.person == visits.c.person, seen.c.last == visits.c.at))
            .group_by(visits.c.person).subquery("last_visit"))
    first = select(Contract.master_person_id).where(package, _in_effect_before(recent, zone))
    query = select(*keys, func.count(Contract.master_person_id), _counted(last.c.ok == 1),
                   _counted(seen.c.last.is_(None)), _counted(seen.c.person.is_(None))).select_from(Contract)
    query = (columns.joined(query, codes)
             .outerjoin(seen, seen.c.person == Contract.master_person_id)
             .outerjoin(last, last.c.person == Contract.master_person_id)
             .where(_held(at, zone), package, Contract.master_person_id.in_(first)))
    if keys:
        query = query.group_by(*keys)
    return _rows(session, query, len(keys), ["registered", "controlled", "no_visit_3m", "lost_to_follow_up"])


def _month_of(column: Any, window: Window, dates: bool) -> ColumnElement[str]:
    """The local month of an instant (or a local date) as a CASE over the month bounds: portable SQL."""
    months = month_ends(window)
    if len(months) == 1:
        return literal(months[0][0])
    bound = (lambda end: end.astimezone(window.zone).date()) if dates else (lambda end: end)
    return case(*((column < bound(end), label) for label, _start, end in months[:-1]), else_=literal(months[-1][0]))


def _day_after(session: Session, due_on: Any, zone: ZoneInfo, at: datetime) -> ColumnElement[Any]:
    """The UTC instant the local day after due_on begins, with the zone's offset at `at` (SQLite and MariaDB)."""
    offset = at.astimezone(zone).utcoffset() or timedelta(0)
    minutes = 24 * 60 - int(offset.total_seconds() // 60)
    if session.get_bind().dialect.name == "sqlite":
        return func.datetime(due_on, f"{minutes:+d} minutes")
    return func.timestampadd(literal_column("MINUTE"), minutes, due_on)


def _events(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], codes: set[str], window: Window,
            by_month: bool) -> tuple[dict[tuple[Any, ...], dict[str, int]], dict[tuple[Any, ...], dict[str, int]]]:
    """Contracts signed, and follow-ups due and done on time, in the window (per month when grouped by month)."""
    signed_keys = [*keys, _month_of(Contract.signed_at, window, False)] if by_month else keys
    signed = select(*signed_keys, func.count(Contract.id)).select_from(Contract)
    signed = columns.joined(signed, codes).where(Contract.signed_at >= window.since,
                                                 Contract.signed_at < window.until)
    first_day = window.since.astimezone(window.zone).date()
    last_day = window.until.astimezone(window.zone).date() - timedelta(days=1)
    due_keys = [*keys, _month_of(FollowUp.due_on, window, True)] if by_month else keys
    on_time = and_(FollowUp.status == FollowUpStatus.done,
                   FollowUp.done_at < _day_after(session, FollowUp.due_on, window.zone, window.until))
    due = (select(*due_keys, func.count(FollowUp.id), _counted(on_time)).select_from(FollowUp)
           .join(Contract, Contract.id == FollowUp.contract_id))
    due = columns.joined(due, codes).where(FollowUp.status != FollowUpStatus.cancelled,
                                           FollowUp.due_on >= first_day, FollowUp.due_on <= last_day)
    if signed_keys:
        signed, due = signed.group_by(*signed_keys), due.group_by(*due_keys)
    return (_rows(session, signed, len(signed_keys), ["signed"]),
            _rows(session, due, len(due_keys), ["due", "done_on_time"]))


class _Populations:
    """Registered populations by region and priority group for one year: own row, else the children's sum."""

    def __init__(self, session: Session, year: int) -> None:
        latest = (select(Population.region_code, Population.priority_group, func.max(Population.year).label("year"))
                  .where(Population.year <= year).group_by(Population.region_code, Population.priority_group)
                  .subquery())
        rows = session.execute(select(Population.region_code, Population.priority_group, Population.persons).join(
            latest, and_(latest.c.region_code == Population.region_code,
                         latest.c.priority_group == Population.priority_group, latest.c.year == Population.year)))
        self.own = {(code, group): persons for code, group, persons in rows}
        self.children: dict[str, list[str]] = defaultdict(list)
        if self.own:
            for code, parent in session.execute(select(Region.code, Region.parent_code)).all():
                if parent is not None:
                    self.children[parent].append(code)

    def of(self, code: str | None, group: str, depth: int = 0) -> int | None:
        """The population of a region for the group, or None when nothing under it is loaded."""
        if code is None or depth > 8:
            return None
        if (code, group) in self.own:
            return self.own[(code, group)]
        parts = [self.of(child, group, depth + 1) for child in self.children.get(code, ())]
        known = [part for part in parts if part is not None]
        return sum(known) if known else None

    def total(self, roots: Iterable[str], group: str) -> int | None:
        parts = [p for p in (self.of(code, group) for code in roots) if p is not None]
        return sum(parts) if parts else None


def _share(part: int, whole: int | None) -> float | None:
    return round(part / whole, 4) if whole else None


def _small(*counts: int) -> bool:
    return any(0 < count < MIN_CELL for count in counts)


def _blocks(state: dict[str, int], signed: int, due: dict[str, int], hearts: dict[Condition, dict[str, int]],
            population: Any) -> dict[str, Any]:
    """One group's figures; a block whose base is a small cell shows nulls and suppressed true."""
    active = state.get("active", 0)
    contracts: dict[str, Any] = {"active": active, "signed": signed, "suppressed": False}
    if _small(active, signed):
        contracts = {"active": None, "signed": None, "suppressed": True}
    coverage = []
    for group in catalogue()["priority_groups"]:
        persons, base = state.get(group, 0), population(group)
        hidden = _small(persons)
        coverage.append({"priority_group": group, "persons": None if hidden else persons, "population": base,
                         "coverage": None if hidden else _share(persons, base), "suppressed": hidden})
    count, in_time = due.get("due", 0), due.get("done_on_time", 0)
    follow_ups: dict[str, Any] = {"due": count, "done_on_time": in_time, "on_time_share": _share(in_time, count),
                                  "suppressed": False}
    if _small(count):
        follow_ups = {**dict.fromkeys(follow_ups), "suppressed": True}
    out: dict[str, Any] = {"contracts": contracts, "coverage": coverage, "follow_ups": follow_ups}
    for condition in Condition:
        figures = hearts.get(condition, {})
        registered = figures.get("registered", 0)
        block: dict[str, Any] = {"registered": registered, "suppressed": False}
        for name in ("controlled", "no_visit_3m", "lost_to_follow_up"):
            block[name], block[f"{name}_share"] = figures.get(name, 0), _share(figures.get(name, 0), registered)
        if _small(registered):
            block = {**dict.fromkeys(block), "suppressed": True}
        out[condition.value] = block
    return out


def _labels(group_by: Sequence[str], key: tuple[Any, ...]) -> dict[str, Any]:
    """A group's key as named fields: codes with names beside them, and the month (always last)."""
    values, labels = iter(key), {}
    for name in group_by:
        labels[name] = next(values)
        if name != "month":
            labels[f"{name}_name"] = next(values)
    return labels


def _roots(session: Session, codes: set[str]) -> list[str]:
    """The top regions of a scope: those whose parent is outside it."""
    parents = dict(session.execute(select(Region.code, Region.parent_code).where(Region.code.in_(codes))).all())
    return sorted(code for code, parent in parents.items() if parent not in codes)


def _gather(session: Session, columns: _Columns, group_by: list[str], codes: set[str],
            window: Window) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every query's counts per group key (the month, when grouped by it, is the key's last part)."""
    keys = [column for name in group_by if name != "month" for column in columns.keys[name]]
    by_month = "month" in group_by
    ends = [(label, end) for label, _start, end in month_ends(window)] if by_month else [(None, window.until)]
    found: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: {"state": {}, "signed": 0, "due": {},
                                                                       "hearts": {}})
    for label, end in ends:
        suffix = (label,) if label is not None else ()
        for key, counts in _state(session, columns, keys, codes, end, window.zone).items():
            found[(*key, *suffix)]["state"] = counts
        for condition in Condition:
            for key, counts in _hearts(session, columns, keys, codes, end, window.zone, condition).items():
                found[(*key, *suffix)]["hearts"][condition] = counts
    signed, due = _events(session, columns, keys, codes, window, by_month)
    for key, counts in signed.items():
        found[key]["signed"] = counts["signed"]
    for key, counts in due.items():
        found[key]["due"] = counts
    return found


def family_doctor_figures(session: Session, region_codes: set[str], window: Window | None = None,
                          group_by: Sequence[str] = (), now: datetime | None = None) -> dict[str, Any]:
    """The region's family-doctor figures, in total and per group (definitions in this module's docstring)."""
    if window is None:
        zone = ZoneInfo(current_app.config["HIE"].timezone) if has_app_context() else ZoneInfo("UTC")
        window = default_window(zone, now)
    group_by = [name for name in GROUPS if name in group_by]
    codes = set(region_codes)
    result: dict[str, Any] = {"group_by": group_by, "min_cell": MIN_CELL}
    if not codes:
        return {**result, "total": _blocks({}, 0, {}, {}, lambda _group: None), "groups": []}
    columns = _Columns()
    populations = _Populations(session, _last_day(window.until, window.zone).year)
    roots = _roots(session, codes)
    overall = _gather(session, columns, [], codes, window).get((), {"state": {}, "signed": 0, "due": {}, "hearts": {}})
    total = _blocks(overall["state"], overall["signed"], overall["due"], overall["hearts"],
                    lambda group: populations.total(roots, group))
    pairs = [name for name in group_by if name != "month"]
    area = None if {"team", "institution"} & set(pairs) else next(
        (name for name in ("township", "county") if name in pairs), None)
    groups = []
    if group_by:
        found = _gather(session, columns, group_by, codes, window)
        for key in sorted(found, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            code = key[2 * pairs.index(area)] if area is not None else None
            counts = found[key]
            groups.append({**_labels(group_by, key), **_blocks(
                counts["state"], counts["signed"], counts["due"], counts["hearts"],
                lambda group, code=code: populations.of(code, group) if area is not None else None)})
    return {**result, "total": total, "groups": groups}
