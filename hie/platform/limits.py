"""Bounds every request is held to, so that no input, however large, deep or odd, makes a 500 or ties up a worker."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from flask import request
from marshmallow import ValidationError, fields
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, UnsupportedMediaType
from werkzeug.routing import IntegerConverter, Map, PathConverter

MAX_ID = 10**18 - 1  # ids of up to 18 digits: each fits a signed 64-bit column
MAX_INT = 2**31 - 1  # the largest page, page size, count or offset: FHIR's integer, every database's INT
MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a request body
# The dates a query may name: every database compares them and every zone converts them (year 1 or 9999 overflow).
EARLIEST_QUERY_DATE = datetime(1000, 1, 1, tzinfo=UTC)
LATEST_QUERY_DATE = datetime(9999, 1, 1, tzinfo=UTC)
BODY_METHODS = ("POST", "PUT", "PATCH")
# The fields the EMPI matches on, at most as long as a registration or a PDQ query may give them.
DEMOGRAPHIC_MAX_LENGTHS = {"name": 100, "birth_date": 20, "id_type": 16, "id_number": 32, "phone": 20,
                           "address": 300}
_ASCII_INT = re.compile(r"[0-9]{1,19}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)  # possessive, to the end if unterminated: linear
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def ascii_int(raw: str, low: int = 0, high: int = MAX_INT) -> int | None:
    """The number written in ASCII digits 0-9 within [low, high], else None (never '٣', '²' or '+1')."""
    if not _ASCII_INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


class IdConverter(IntegerConverter):
    """`<int:...>` in every route: up to 18 ASCII digits (MAX_ID); anything else falls to the next route, or 404."""

    regex = r"[0-9]{1,18}"

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,
                 max: int | None = MAX_ID, signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, max, signed)


class AnyPathConverter(PathConverter):
    """`<path:...>` matching newlines too, so a path holding one still reaches its blueprint's catch-all route."""

    regex = "[^/](?s:.*?)"


class AsciiInteger(fields.Integer):
    """A marshmallow Integer that takes only ASCII digits from text (int('٣') would be 3)."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and not re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class PagingParser(FlaskParser):
    """flask-smorest's pagination parser, taking page and page_size only as ASCII digits up to MAX_INT."""

    def pre_load(self, location_data: Mapping[str, Any], *, schema: Any, req: Any, location: str) -> Mapping[str, Any]:
        """Refuse what the pagination schema would take (Unicode digits) or pass on to the database (huge pages)."""
        errors = {name: [f"Must be a whole number from 1 to {MAX_INT}, in digits 0-9."]
                  for name in ("page", "page_size")
                  if name in location_data and ascii_int(str(location_data[name]), 1) is None}
        if errors:
            raise ValidationError(errors)
        return location_data


def json_depth(body: bytes) -> int:
    """How deeply the objects and arrays of a JSON text nest, counted without parsing (the parser recurses)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(1 if byte in b"[{" else -1 for byte in brackets), default=0)


def _json_media_type(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def check_request_body() -> None:
    """Before any view: a body must be declared JSON (415) and nest at most MAX_JSON_DEPTH deep (400)."""
    if request.method not in BODY_METHODS:
        return
    body = request.get_data(cache=True)
    if not body:
        return
    if not _json_media_type(request.mimetype):
        raise UnsupportedMediaType(f"The body must be JSON (Content-Type application/json or application/*+json), "
                                   f"not {request.mimetype or 'undeclared'}.")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")


def overlong_demographic(values: Mapping[str, Any]) -> str | None:
    """The first demographic field longer than the EMPI matches on (DEMOGRAPHIC_MAX_LENGTHS), or None."""
    return next((name for name, limit in DEMOGRAPHIC_MAX_LENGTHS.items()
                 if isinstance(values.get(name), str) and len(values[name]) > limit), None)
