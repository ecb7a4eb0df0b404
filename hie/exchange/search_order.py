"""Sort keys and keyset paging: (value, shard, id) orders every search, and a cursor resumes right after a key."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, cast, func, literal, or_, select, type_coerce
from sqlalchemy.types import TypeEngine

from hie.exchange.models import FhirResource, FhirToken
from hie.exchange.search_cursor import Cursor
from hie.exchange.search_index import FhirDate
from hie.exchange.search_params import Sort
from hie.platform.db import UTCDateTime
from hie.platform.limits import EARLIEST_QUERY_DATE

Key = tuple[Any, str, str]  # sort value, shard, id
NO_DATE = EARLIEST_QUERY_DATE  # a resource without the sorted date sorts as if at the index's earliest time
NO_CODE = ""


def constant(value: Any, type_: TypeEngine[Any], dialect: str) -> ColumnElement[Any]:
    """A typed constant for COALESCE: MariaDB would make COALESCE(datetime, '...') a string, so it is CAST there
    (SQLite's CAST to a date type would make it a number, so there it is only typed)."""
    bound = literal(value, type_)
    return cast(bound, type_) if dialect in ("mysql", "mariadb") else bound


def sort_expression(resource_type: str, sort: Sort, dialect: str) -> ColumnElement[Any]:
    """The sort value of a resource row, never NULL (so keyset comparisons hold): ascending takes a parameter's
    lowest value (a date range's start), descending its highest (a range's end)."""
    if sort.kind == "id":
        return FhirResource.id
    if sort.kind == "last_updated":
        return FhirResource.last_updated
    if sort.kind == "date":
        bound = func.max(FhirDate.high) if sort.descending else func.min(FhirDate.low)
        value = select(bound).where(FhirDate.resource_type == resource_type, FhirDate.resource_id == FhirResource.id,
                                    FhirDate.param == sort.name).scalar_subquery()
        return type_coerce(func.coalesce(value, constant(NO_DATE, UTCDateTime(), dialect)), UTCDateTime())
    code = func.max(FhirToken.code) if sort.descending else func.min(FhirToken.code)
    value = select(code).where(FhirToken.resource_type == resource_type, FhirToken.resource_id == FhirResource.id,
                               FhirToken.param == sort.name).scalar_subquery()
    return func.coalesce(value, NO_CODE)


def ordering(expression: ColumnElement[Any], id_column: Any, descending: bool) -> list[Any]:
    """ORDER BY value then id, in one direction."""
    return [expression.desc(), id_column.desc()] if descending else [expression, id_column]


def after(expression: ColumnElement[Any], id_column: Any, tenant: str, cursor: Cursor | None,
          descending: bool) -> ColumnElement[bool] | None:
    """The rows of one shard that come after the cursor in (value, shard, id) order (None: no cursor)."""
    if cursor is None:
        return None
    value = cursor.value
    beyond = expression < value if descending else expression > value
    if tenant == cursor.tenant:
        later_id = id_column < cursor.resource_id if descending else id_column > cursor.resource_id
        return or_(beyond, and_(expression == value, later_id))
    shard_later = tenant < cursor.tenant if descending else tenant > cursor.tenant
    return or_(beyond, expression == value) if shard_later else beyond


def comparable(value: Any) -> Any:
    """A sort value as Python compares it across shards: datetimes aware, dates as dates, codes as text."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=NO_DATE.tzinfo)
    return value if isinstance(value, datetime | date | str) else str(value)


def is_after(key: Key, cursor: Cursor | None, descending: bool) -> bool:
    """Python's version of after(), for keys already fetched."""
    if cursor is None:
        return True
    mark = (comparable(cursor.value), cursor.tenant, cursor.resource_id)
    return key < mark if descending else key > mark
