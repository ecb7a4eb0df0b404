"""Consultation figures for health administrators: requests, answers, time to opinion and reads within their
turnaround deadline, per kind, urgency, department, institution, county and month, computed at query time, no names.

Definitions (bench/README_consult.md repeats them):

* The consultations counted are those requested (created_at) in the window [since, until); a month is the local
  calendar month of the request in the platform's time zone. Their outcome is taken as it stands when the figures
  are asked for (an opinion given after until still counts as given).
* Scope: a consultation is in the caller's region when the tenant of the requesting or of the consulting institution
  serves a region of the caller's subtree.
* Groups: kind; urgency; department (the specialty asked, as written in the request); the requesting and the
  consulting institution; county (the region of the requesting institution's tenant); month.
* requests: consultations requested. declined, cancelled: those now in that state.
* opinion_at is when the first version of the opinion was signed (later versions keep it). opinions: consultations
  with an opinion.
* answered: those with an opinion or declined; answered_share = answered / requests.
* median_minutes_to_opinion: the median over the group of the minutes from request to opinion_at.
* Reads are the imaging and ECG reads (kinds imaging_read and ecg_read), each with a turnaround deadline (due_at).
  reads_due: reads whose deadline has come: those with an opinion, and those without one whose due_at has passed
  while they still waited (not declined or cancelled before due_at). reads_within_deadline: reads whose
  opinion came by due_at (opinion_at <= due_at); reads_within_deadline_share = reads_within_deadline / reads_due.
* Small cells: a group (or the total) of 1 to 4 requests shows every figure null with suppressed true: a rare
  combination could point at one patient.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from hie.consult.models import Consultation, ConsultStatus, Kind
from hie.platform.db import utcnow
from hie.platform.figures import MIN_CELL, Window, counted, default_window, month_of
from hie.tenants.models import Institution, Region, Tenant

GROUPS = ("kind", "urgency", "department", "requester", "consultant", "county", "month")
READS = (Kind.imaging_read, Kind.ecg_read)
FIGURES = ("requests", "answered", "answered_share", "opinions", "median_minutes_to_opinion", "declined",
           "cancelled", "reads_due", "reads_within_deadline", "reads_within_deadline_share")
COUNTS = ("requests", "answered", "opinions", "declined", "cancelled", "reads_due", "reads_within_deadline")


class _Columns:
    """The joins every figure needs: both institutions with their tenants, and the county."""

    def __init__(self, window: Window) -> None:
        self.requester, self.consultant = aliased(Institution), aliased(Institution)
        self.requester_tenant, self.consultant_tenant = aliased(Tenant), aliased(Tenant)
        self.county = aliased(Region)
        self.keys: dict[str, tuple[ColumnElement[Any], ...]] = {
            "kind": (Consultation.kind,),
            "urgency": (Consultation.urgency,),
            "department": (Consultation.department,),
            "requester": (self.requester.code, self.requester.name),
            "consultant": (self.consultant.code, self.consultant.name),
            "county": (self.requester_tenant.region_code, self.county.name),
            "month": (month_of(Consultation.created_at, window),),
        }

    def scoped(self, query: Any, region_codes: set[str], window: Window) -> Any:
        """Joined, limited to the window, and to consultations whose either side serves one of the regions."""
        return (query.select_from(Consultation)
                .join(self.requester, self.requester.id == Consultation.requester_institution_id)
                .join(self.requester_tenant, self.requester_tenant.id == self.requester.tenant_id)
                .join(self.consultant, self.consultant.id == Consultation.consultant_institution_id)
                .join(self.consultant_tenant, self.consultant_tenant.id == self.consultant.tenant_id)
                .outerjoin(self.county, self.county.code == self.requester_tenant.region_code)
                .where(Consultation.created_at >= window.since, Consultation.created_at < window.until,
                       or_(self.requester_tenant.region_code.in_(region_codes),
                           self.consultant_tenant.region_code.in_(region_codes))))


def _read_columns(now: datetime) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """Reads whose deadline has come (an opinion, or still waiting past due_at) and those read by due_at."""
    read = and_(Consultation.kind.in_(READS), Consultation.due_at.is_not(None))
    given = Consultation.opinion_at.is_not(None)
    left = Consultation.status.in_((ConsultStatus.declined, ConsultStatus.cancelled))
    missed = and_(Consultation.opinion_at.is_(None), Consultation.due_at < now,
                  or_(~left, Consultation.updated_at > Consultation.due_at))
    return (counted(and_(read, or_(given, missed))),
            counted(and_(read, given, Consultation.opinion_at <= Consultation.due_at)))


def _group_key(row: Sequence[Any], width: int) -> tuple[Any, ...]:
    return tuple(value.value if hasattr(value, "value") else value for value in row[:width])


def _counts(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], region_codes: set[str],
            window: Window, now: datetime) -> dict[tuple[Any, ...], dict[str, int]]:
    """One GROUP BY query: requests, answers and reads per group."""
    given = Consultation.opinion_at.is_not(None)
    declined = Consultation.status == ConsultStatus.declined
    due, in_time = _read_columns(now)
    query = select(*keys, func.count(Consultation.id), counted(or_(given, declined)), counted(given),
                   counted(declined), counted(Consultation.status == ConsultStatus.cancelled), due, in_time)
    query = columns.scoped(query, region_codes, window)
    if keys:
        query = query.group_by(*keys)
    return {_group_key(row, len(keys)): dict(zip(COUNTS, (int(v or 0) for v in row[len(keys):]), strict=True))
            for row in session.execute(query).all()}


def _minutes(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], region_codes: set[str],
             window: Window) -> dict[tuple[Any, ...], list[float]]:
    """Minutes from request to opinion, per group, for medians taken in Python (portable SQL)."""
    query = select(*keys, Consultation.created_at, Consultation.opinion_at)
    query = columns.scoped(query, region_codes, window).where(Consultation.opinion_at.is_not(None))
    out: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for row in session.execute(query).all():
        made, opinion = row[len(keys):]
        out[_group_key(row, len(keys))].append((opinion - made).total_seconds() / 60)
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _figures(counts: dict[str, int], minutes: list[float]) -> dict[str, Any]:
    """The figures of one group, or only the flag when the group is a small cell."""
    if 0 < counts["requests"] < MIN_CELL:
        return {**dict.fromkeys(FIGURES), "suppressed": True}
    return {
        "requests": counts["requests"], "answered": counts["answered"],
        "answered_share": _share(counts["answered"], counts["requests"]), "opinions": counts["opinions"],
        "median_minutes_to_opinion": round(statistics.median(minutes), 1) if minutes else None,
        "declined": counts["declined"], "cancelled": counts["cancelled"],
        "reads_due": counts["reads_due"], "reads_within_deadline": counts["reads_within_deadline"],
        "reads_within_deadline_share": _share(counts["reads_within_deadline"], counts["reads_due"]),
        "suppressed": False,
    }


def _labels(group_by: Sequence[str], key: tuple[Any, ...]) -> dict[str, Any]:
    """A group's key as named fields: codes, with institution and county names beside them."""
    values, labels = iter(key), {}
    for name in group_by:
        if name in ("requester", "consultant"):
            field = "requesting_institution" if name == "requester" else "consulting_institution"
            labels[field], labels[f"{field}_name"] = next(values), next(values)
        elif name == "county":
            labels["county"], labels["county_name"] = next(values), next(values)
        else:
            labels[name] = next(values)
    return labels


def consult_figures(session: Session, region_codes: set[str], window: Window | None = None,
                    group_by: Sequence[str] = (), now: datetime | None = None) -> dict[str, Any]:
    """The region's consultation figures, in total and per group (definitions in this module's docstring)."""
    now = now or utcnow()
    if window is None:
        zone = ZoneInfo(current_app.config["HIE"].timezone) if has_app_context() else ZoneInfo("UTC")
        window = default_window(zone, now)
    group_by = [name for name in GROUPS if name in group_by]
    result: dict[str, Any] = {"group_by": group_by, "min_cell": MIN_CELL}
    empty = dict.fromkeys(COUNTS, 0)
    if not region_codes:
        return {**result, "total": _figures(empty, []), "groups": []}
    columns = _Columns(window)
    keys = [column for name in group_by for column in columns.keys[name]]
    counted = _counts(session, columns, keys, set(region_codes), window, now)
    minutes = _minutes(session, columns, keys, set(region_codes), window)
    # the groups partition the consultations, so the total is their sum: two queries whatever the grouping
    total = {name: sum(counts[name] for counts in counted.values()) for name in COUNTS}
    groups = [{**_labels(group_by, key), **_figures(counted[key], minutes.get(key, []))}
              for key in sorted(counted, key=lambda k: tuple("" if v is None else str(v) for v in k))] if keys else []
    return {**result, "total": _figures(total, [m for values in minutes.values() for m in values]), "groups": groups}
