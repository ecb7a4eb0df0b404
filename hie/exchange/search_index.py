"""What a stored resource is found by: token, reference and date rows of the standard parameters of its type."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Index, Integer, String, delete
from sqlalchemy.orm import Mapped, Session, mapped_column

from hie.exchange.models import FhirResource
from hie.exchange.resources import parse_date
from hie.exchange.search_catalogue import DATES, REFERENCES, TOKENS
from hie.platform.db import TenantBase, UTCDateTime
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE

MAX_CODE = 200  # FhirToken.system and .code
TEXT_SUFFIX = ":text"  # the token rows :text searches: a concept's text and displays, folded
DATE_RE = re.compile(
    r"^(?P<ymd>\d{4}(-\d{2}(-\d{2})?)?)"
    r"(T(?P<hm>\d{2}:\d{2})(?P<s>:\d{2}(?P<frac>\.\d{1,9})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?$", re.ASCII
)


class FhirDate(TenantBase):
    """Search index of date parameters: the range [low, high) each value names at its precision."""

    __tablename__ = "fhir_dates"
    __table_args__ = (
        Index("ix_fhir_dates_lookup", "resource_type", "param", "low", "high", "resource_id"),
        Index("ix_fhir_dates_resource", "resource_type", "resource_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(32))
    low: Mapped[datetime] = mapped_column(UTCDateTime)
    high: Mapped[datetime] = mapped_column(UTCDateTime)


def moment_range(value: str) -> tuple[datetime, datetime]:
    """The half-open range a FHIR date, dateTime or instant names at the precision written (ValueError if not one).
    Digits past microseconds are dropped: the range still covers them."""
    match = DATE_RE.match(value)
    if match is None:
        raise ValueError(value)
    frac = match["frac"] or ""
    low = parse_date(value.replace(frac, frac[:7]) if len(frac) > 7 else value)
    if frac:
        return low, low + timedelta(microseconds=10 ** max(7 - len(frac), 0))
    if match["s"]:
        return low, low + timedelta(seconds=1)
    if match["hm"]:
        return low, low + timedelta(minutes=1)
    if len(value) == 4:
        return low, low.replace(year=low.year + 1)
    if len(value) == 7:
        return low, low.replace(year=low.year + low.month // 12, month=low.month % 12 + 1)
    return low, low + timedelta(days=1)


def values_at(resource: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted element path, lists flattened at each step."""
    current = [resource]
    for part in path.split("."):
        following = []
        for item in current:
            value = item.get(part) if isinstance(item, dict) else None
            following += value if isinstance(value, list) else [] if value is None else [value]
        current = following
    yield from current


def fold(text: str) -> str:
    """Case, width and accent folded text, as :text and string searches compare it."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _token_rows(name: str, value: Any, implicit: str | None) -> Iterator[tuple[str, str | None, str]]:
    """(param, system, code) of one element value: CodeableConcept, Coding, Identifier, code or boolean."""
    if isinstance(value, bool):
        yield name, None, "true" if value else "false"
    elif isinstance(value, str):
        yield name, implicit, value
    elif isinstance(value, dict):
        codings = value.get("coding", [value] if "code" in value else [])
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield name, coding.get("system"), coding["code"]
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                yield name + TEXT_SUFFIX, None, fold(coding["display"])
        if isinstance(value.get("text"), str):
            yield name + TEXT_SUFFIX, None, fold(value["text"])
        if "value" in value and isinstance(value.get("value"), str):
            yield name, value.get("system"), value["value"]
        if isinstance(value.get("type"), dict) and isinstance(value["type"].get("text"), str):
            yield name + TEXT_SUFFIX, None, fold(value["type"]["text"])


def _reference(value: Any, targets: tuple[str, ...]) -> str | None:
    """A relative reference Type/id to one of the targets (versioned ones without their version)."""
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return None
    kind, _, rest = reference.partition("/")
    target_id = rest.split("/_history/")[0]
    return f"{kind}/{target_id}" if kind in targets and target_id and "/" not in target_id else None


def tokens(resource: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Token and reference rows (param, system, code) of a resource, each once, within the index's columns."""
    resource_type = resource["resourceType"]
    rows: dict[tuple[str, str | None, str], None] = {}
    for name, param in TOKENS.get(resource_type, {}).items():
        for path in param.paths:
            for value in values_at(resource, path):
                rows.update(dict.fromkeys(_token_rows(name, value, param.system)))
    for name, reference in REFERENCES.get(resource_type, {}).items():
        for path in reference.paths:
            for value in values_at(resource, path):
                target = _reference(value, reference.targets)
                if target is not None:
                    rows[(name, None, target)] = None
    return [(p, s[:MAX_CODE] if s else None, c[:MAX_CODE]) for p, s, c in rows if c]


def _range(value: Any) -> tuple[datetime, datetime] | None:
    """A date value or a Period as a range; an open Period end reaches the index's earliest or latest time."""
    if isinstance(value, str):
        try:
            return moment_range(value)
        except ValueError:
            return None
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = _range(value.get("start")) if value.get("start") else None
        end = _range(value.get("end")) if value.get("end") else None
        return (start[0] if start else EARLIEST_QUERY_DATE, end[1] if end else LATEST_QUERY_DATE)
    return None


def dates(resource: dict[str, Any]) -> list[tuple[str, datetime, datetime]]:
    """Date rows (param, low, high) of a resource."""
    rows: dict[tuple[str, datetime, datetime], None] = {}
    for name, paths in DATES.get(resource["resourceType"], {}).items():
        for path in paths:
            for value in values_at(resource, path):
                found = _range(value)
                if found is not None:
                    rows[(name, *found)] = None
    return list(rows)


def write_dates(session: Session, resource: dict[str, Any], row: FhirResource, new: bool) -> None:
    """Replace a resource's date rows (a new resource has none to delete)."""
    if not new:
        session.execute(delete(FhirDate).where(FhirDate.resource_type == row.resource_type,
                                               FhirDate.resource_id == row.id))
    session.add_all(FhirDate(resource_type=row.resource_type, resource_id=row.id, param=param, low=low, high=high)
                    for param, low, high in dates(resource))
