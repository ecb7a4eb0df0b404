"""JSON that keeps every number exactly as its sender wrote it: FHIR decimals are precision-significant (4.50 is not
4.5, and -1.0E+245 is not a 246-digit integer), so the exchange stores and returns the sender's literal."""

from __future__ import annotations

import json
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any


class Number(Decimal):
    """A JSON number with a fraction or exponent (or -0): computes and compares as a Decimal, written as it came."""

    __slots__ = ("literal",)
    literal: str

    def __new__(cls, literal: str) -> Number:
        number = super().__new__(cls, literal)
        number.literal = literal
        return number

    def __reduce__(self) -> tuple[type[Number], tuple[str]]:
        return type(self), (self.literal,)

    def __copy__(self) -> Number:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Number:
        return self


def _integer(literal: str) -> int | Number:
    """Integers stay int (their text round-trips), except -0, whose sign Python's int would drop."""
    return Number(literal) if literal == "-0" else int(literal)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str | bytes) -> Any:
    """Parse JSON keeping each number's literal; NaN and Infinity (not JSON) and runaway nesting are a ValueError."""
    try:
        return json.loads(text, parse_float=Number, parse_int=_integer, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(encode_basestring(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(encode_basestring(key))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        out.append(_scalar(value))


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Number):
        return value.literal
    if isinstance(value, int | float):
        return json.dumps(value, allow_nan=False)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """Compact JSON with non-ASCII text as it is and each Number as its literal."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def dumps_bytes(value: Any) -> bytes:
    """dumps as UTF-8, for a response body."""
    return dumps(value).encode()
