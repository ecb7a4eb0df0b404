"""A NormalizedRecord as plain JSON, sealed beside the raw demographics, so candidates need no re-normalising."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hie.empi.normalize import Address, NormalizedRecord

_DATES = ("birth_date", "id_birth_date")


def to_json(record: NormalizedRecord) -> dict[str, Any]:
    """JSON-safe dict of the normalised fields (issues are not kept)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(NormalizedRecord):
        if field.name == "issues":
            continue
        value = getattr(record, field.name)
        if isinstance(value, dt.date):
            value = value.isoformat()
        elif isinstance(value, Address):
            value = dataclasses.asdict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def from_json(data: dict[str, Any]) -> NormalizedRecord:
    """Inverse of to_json."""
    values = dict(data)
    for name in _DATES:
        if values.get(name):
            values[name] = dt.date.fromisoformat(values[name])
    if values.get("address"):
        values["address"] = Address(**values["address"])
    values["given_syllables"] = tuple(values.get("given_syllables") or ())
    return NormalizedRecord(**values)
