"""Search conditions shared by resource search and Patient search over the register."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select

from hie.exchange import store
from hie.exchange.models import FhirResource, FhirToken
from hie.exchange.search_index import TEXT_SUFFIX, FhirDate
from hie.exchange.search_params import DateFilter, Token, TokenFilter

Found = tuple[str, FhirResource]  # a row and the shard it came from


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _alternative(resource_type: str, param: str, alternative: Token, text: bool) -> ColumnElement[bool]:
    if text:  # words of the folded text: the text starts with the value, or a word of it does
        prefix = _like_prefix(alternative.code or "")
        return or_(FhirToken.code.like(prefix, escape="\\"), FhirToken.code.like("% " + prefix, escape="\\"))
    sealed = resource_type == "Patient" and param == "identifier"
    code = store.patient_identifier_index(alternative.code) if sealed and alternative.code else alternative.code
    parts = [] if code is None else [FhirToken.code == code]
    if not alternative.any_system:
        system = alternative.system
        parts.append(FhirToken.system.is_(None) if system is None else FhirToken.system == system)
    return and_(*parts)


def token_condition(resource_type: str, token: TokenFilter, id_column: Any = FhirResource.id) -> ColumnElement[bool]:
    """Resources with a coding matching any alternative: a semi-join on the (type, param, code, system) index;
    :not is its complement (resources without such a coding, including those without the element)."""
    text = token.modifier == "text"
    matching = select(FhirToken.resource_id).where(
        FhirToken.resource_type == resource_type, FhirToken.param == token.param + (TEXT_SUFFIX if text else ""),
        or_(*(_alternative(resource_type, token.param, alternative, text) for alternative in token.alternatives)))
    return id_column.not_in(matching) if token.modifier == "not" else id_column.in_(matching)


def range_condition(prefix: str, low_column: Any, high_column: Any, low: Any, high: Any) -> ColumnElement[bool]:
    """FHIR's date prefixes between a stored range [low_column, high_column) and the searched range [low, high)."""
    return {
        "eq": and_(low_column >= low, high_column <= high),
        "ne": or_(low_column < low, high_column > high),
        "gt": high_column > high,
        "lt": low_column < low,
        "ge": high_column > low,
        "le": low_column < high,
    }[prefix]


def date_condition(date: DateFilter, column: Any = None, low: Any = None, high: Any = None) -> ColumnElement[bool]:
    """The prefix applied to the range [low, high) the value names against a column holding instants (e.g.
    last_updated); column and bounds default to the filter's."""
    if column is None:
        column = FhirResource.last_updated
    low, high = date.low if low is None else low, date.high if high is None else high
    return {
        "eq": and_(column >= low, column < high),
        "ne": or_(column < low, column >= high),
        "gt": column >= high,
        "lt": column < low,
        "ge": column >= low,
        "le": column < high,
    }[date.prefix]


def indexed_date_condition(resource_type: str, date: DateFilter) -> ColumnElement[bool]:
    """Resources with a value of the date parameter whose range meets the prefix (a semi-join on the date index)."""
    return FhirResource.id.in_(select(FhirDate.resource_id).where(
        FhirDate.resource_type == resource_type, FhirDate.param == date.column,
        range_condition(date.prefix, FhirDate.low, FhirDate.high, date.low, date.high)))


def ids_condition(ids: tuple[str, ...] | None, column: Any = FhirResource.id) -> ColumnElement[bool] | None:
    """_id: one of the ids (an empty intersection of several _id parameters matches nothing)."""
    if ids is None:
        return None
    return column.in_(ids) if ids else false()
