"""Referral figures for health administrators: counts, rates and medians per group, computed at query time, no names."""

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

from hie.platform.db import utcnow
from hie.platform.figures import MIN_CELL, Window, counted, default_window, month_of
from hie.referral.models import Direction, Referral, ReferralStatus, ReferralStep
from hie.tenants.models import Institution, Region, Tenant

GROUPS = ("direction", "urgency", "status", "sender", "receiver", "county", "month")
FIGURES = ("referrals", "up", "down", "answered", "accepted", "declined", "acceptance_rate",
           "median_minutes_to_answer", "median_minutes_to_arrival", "answered_within_deadline_share",
           "down_to_up_ratio")


class _Columns:
    """The joins every figure needs: sending and receiving institution, each with its tenant."""

    def __init__(self, window: Window) -> None:
        self.sender, self.receiver = aliased(Institution), aliased(Institution)
        self.sender_tenant, self.receiver_tenant = aliased(Tenant), aliased(Tenant)
        self.county = aliased(Region)
        self.keys: dict[str, tuple[ColumnElement[Any], ...]] = {
            "direction": (Referral.direction,),
            "urgency": (Referral.urgency,),
            "status": (Referral.status,),
            "sender": (self.sender.code, self.sender.name),
            "receiver": (self.receiver.code, self.receiver.name),
            "county": (self.sender_tenant.region_code, self.county.name),
            "month": (month_of(Referral.created_at, window),),
        }

    def scoped(self, query: Any, region_codes: set[str], window: Window) -> Any:
        """Joined, limited to the window, and to referrals whose sender or receiver serves one of the regions."""
        return (query.select_from(Referral)
                .join(self.sender, self.sender.id == Referral.sender_institution_id)
                .join(self.sender_tenant, self.sender_tenant.id == self.sender.tenant_id)
                .join(self.receiver, self.receiver.id == Referral.receiver_institution_id)
                .join(self.receiver_tenant, self.receiver_tenant.id == self.receiver.tenant_id)
                .outerjoin(self.county, self.county.code == self.sender_tenant.region_code)
                .where(Referral.created_at >= window.since, Referral.created_at < window.until,
                       or_(self.sender_tenant.region_code.in_(region_codes),
                           self.receiver_tenant.region_code.in_(region_codes))))


def _deadline_columns(now: datetime) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """Referrals whose answer fell due (answered, or left unanswered past the deadline) and those answered in time."""
    answered = Referral.answered_at.is_not(None)
    missed_unanswered = and_(Referral.answered_at.is_(None), or_(
        and_(Referral.status == ReferralStatus.requested, Referral.due_at < now),
        and_(Referral.status == ReferralStatus.cancelled, Referral.due_at < Referral.updated_at)))
    return (counted(or_(answered, missed_unanswered)),
            counted(and_(answered, Referral.answered_at <= Referral.due_at)))


def _group_key(row: Sequence[Any], width: int) -> tuple[Any, ...]:
    return tuple(value.value if hasattr(value, "value") else value for value in row[:width])


def _counts(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], region_codes: set[str],
            window: Window, now: datetime) -> dict[tuple[Any, ...], dict[str, int]]:
    """One GROUP BY query: referrals, directions, answers and deadlines per group."""
    answered = Referral.answered_at.is_not(None)
    due, in_time = _deadline_columns(now)
    query = select(*keys, func.count(Referral.id),
                   counted(Referral.direction == Direction.up), counted(Referral.direction == Direction.down),
                   counted(answered), counted(and_(answered, Referral.status != ReferralStatus.declined)),
                   counted(Referral.status == ReferralStatus.declined), due, in_time)
    query = columns.scoped(query, region_codes, window)
    if keys:
        query = query.group_by(*keys)
    names = ("referrals", "up", "down", "answered", "accepted", "declined", "due", "in_time")
    return {_group_key(row, len(keys)): dict(zip(names, (int(v or 0) for v in row[len(keys):]), strict=True))
            for row in session.execute(query).all()}


def _durations(session: Session, columns: _Columns, keys: list[ColumnElement[Any]], region_codes: set[str],
               window: Window) -> dict[tuple[Any, ...], tuple[list[float], list[float]]]:
    """Minutes from referral to answer and to arrival, per group, for medians taken in Python (portable SQL)."""
    arrivals = (select(ReferralStep.referral_id, func.min(ReferralStep.at).label("at"))
                .where(ReferralStep.to_status == ReferralStatus.arrived)
                .group_by(ReferralStep.referral_id).subquery())
    query = select(*keys, Referral.created_at, Referral.answered_at, arrivals.c.at)
    query = columns.scoped(query, region_codes, window).outerjoin(arrivals, arrivals.c.referral_id == Referral.id)
    query = query.where(or_(Referral.answered_at.is_not(None), arrivals.c.at.is_not(None)))
    out: dict[tuple[Any, ...], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in session.execute(query).all():
        made, answered, arrived = row[len(keys):]
        to_answer, to_arrival = out[_group_key(row, len(keys))]
        if answered is not None:
            to_answer.append((answered - made).total_seconds() / 60)
        if arrived is not None:
            to_arrival.append((arrived - made).total_seconds() / 60)
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _median(minutes: list[float]) -> float | None:
    return round(statistics.median(minutes), 1) if minutes else None


def _figures(counts: dict[str, int], durations: tuple[list[float], list[float]]) -> dict[str, Any]:
    """The figures of one group, or only the flag when the group is a small cell."""
    if 0 < counts["referrals"] < MIN_CELL:
        return {**dict.fromkeys(FIGURES), "suppressed": True}
    return {
        "referrals": counts["referrals"], "up": counts["up"], "down": counts["down"],
        "answered": counts["answered"], "accepted": counts["accepted"], "declined": counts["declined"],
        "acceptance_rate": _share(counts["accepted"], counts["answered"]),
        "median_minutes_to_answer": _median(durations[0]),
        "median_minutes_to_arrival": _median(durations[1]),
        "answered_within_deadline_share": _share(counts["in_time"], counts["due"]),
        "down_to_up_ratio": _share(counts["down"], counts["up"]),
        "suppressed": False,
    }


def _labels(group_by: Sequence[str], key: tuple[Any, ...]) -> dict[str, Any]:
    """A group's key as named fields: codes, with institution and county names beside them."""
    values, labels = iter(key), {}
    for name in group_by:
        if name in ("sender", "receiver"):
            field = "sending_institution" if name == "sender" else "receiving_institution"
            labels[field], labels[f"{field}_name"] = next(values), next(values)
        elif name == "county":
            labels["county"], labels["county_name"] = next(values), next(values)
        else:
            labels[name] = next(values)
    return labels


def referral_figures(session: Session, region_codes: set[str], window: Window | None = None,
                     group_by: Sequence[str] = (), now: datetime | None = None) -> dict[str, Any]:
    """The region's referral figures, in total and per group; small cells are shown as null with a flag."""
    now = now or utcnow()
    if window is None:
        zone = ZoneInfo(current_app.config["HIE"].timezone) if has_app_context() else ZoneInfo("UTC")
        window = default_window(zone, now)
    group_by = [name for name in GROUPS if name in group_by]
    columns = _Columns(window)
    keys = [column for name in group_by for column in columns.keys[name]]
    empty = {"referrals": 0, "up": 0, "down": 0, "answered": 0, "accepted": 0, "declined": 0, "due": 0, "in_time": 0}
    if not region_codes:
        return {"group_by": group_by, "min_cell": MIN_CELL, "total": _figures(empty, ([], [])), "groups": []}
    total = _counts(session, columns, [], region_codes, window, now).get((), empty)
    groups = []
    if keys:
        durations = _durations(session, columns, keys, region_codes, window)
        counted = _counts(session, columns, keys, region_codes, window, now)
        for key in sorted(counted, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            groups.append({**_labels(group_by, key), **_figures(counted[key], durations[key])})
    overall = _durations(session, columns, [], region_codes, window).get((), ([], []))
    return {"group_by": group_by, "min_cell": MIN_CELL, "total": _figures(total, overall), "groups": groups}
