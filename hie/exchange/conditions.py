"""Search conditions shared by resource search and Patient search over the register."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select

from hie.exchange import store
from hie.exchange.models import FhirResource, FhirToken
from hie.exchange.search_params import DateFilter, TokenFilter

Found = tuple[str, FhirResource]  # a row and the shard it came from


def token_condition(resource_type: str, token: TokenFilter, id_column: Any = FhirResource.id) -> ColumnElement[bool]:
    """Resources with a coding matching any alternative: a semi-join on the (type, param, code, system) index."""
    alternatives = []
    sealed = resource_type == "Patient" and token.param == "identifier"
    for alternative in token.alternatives:
        code = store.patient_identifier_index(alternative.code) if sealed and alternative.code else alternative.code
        parts = [] if code is None else [FhirToken.code == code]
        if not alternative.any_system:
            parts.append(FhirToken.system.is_(None) if alternative.system is None
                         else FhirToken.system == alternative.system)
        alternatives.append(and_(*parts))
    return id_column.in_(select(FhirToken.resource_id).where(
        FhirToken.resource_type == resource_type, FhirToken.param == token.param, or_(*alternatives)))


def date_condition(date: DateFilter, column: Any = None, low: Any = None, high: Any = None) -> ColumnElement[bool]:
    """The prefix applied to the range [low, high) the value names; column and bounds default to the filter's."""
    if column is None:
        column = FhirResource.date if date.column == "date" else FhirResource.last_updated
    low, high = date.low if low is None else low, date.high if high is None else high
    return {
        "eq": and_(column >= low, column < high),
        "ne": or_(column < low, column >= high),
        "gt": column >= high,
        "lt": column < low,
        "ge": column >= low,
        "le": column < high,
    }[date.prefix]
