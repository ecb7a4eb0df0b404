"""What every module's REST schemas share: refusals that name each field by its path, and the statistics guard."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from marshmallow import Schema, ValidationError

from hie.platform.access import Permission, require


def field_paths(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as one entry per field, lists indexed as FHIRPath and the services write them:
    records[1], diagnoses[0].code."""
    if isinstance(messages, dict):
        out: dict[str, list[str]] = {}
        for key, value in messages.items():
            path = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else str(key)
            out.update(field_paths(value, path))
        return out
    if isinstance(messages, list) and all(isinstance(message, str) for message in messages):
        return {prefix or "_schema": messages}
    if isinstance(messages, list):
        return field_paths(dict(enumerate(messages)), prefix)
    return {prefix or "_schema": [str(messages)]}


class PathSchema(Schema):
    """Refusals name each field by its path, as the services' own refusals do: diagnoses[0].code, packages[1]."""

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        """Re-raise with the messages keyed by field path."""
        raise ValidationError(field_paths(error.messages)) from None


def stats_reader(view: Callable[..., Any]) -> Callable[..., Any]:
    """The permission before the query string: a caller without stats:read learns nothing from a 422."""
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        require(Permission.stats_read)
        return view(*args, **kwargs)
    return guarded
