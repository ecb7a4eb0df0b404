"""Log lines carry the request id, so one request can be followed across API and worker logs; nothing forges one."""

from __future__ import annotations

import logging

from flask import g, has_app_context

_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
# C0, DEL, C1 and the Unicode line and paragraph separators: whatever a terminal or log reader may break a line on.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x2028: "\\u2028", 0x2029: "\\u2029"}
_CONTROL_BUT_NEWLINE = {code: escape for code, escape in _CONTROL.items() if code != 0x0A}


def printable(text: str) -> str:
    """Text with every control character escaped (a newline becomes \\x0a): it stays on one line."""
    return text.translate(_CONTROL)


class RequestIdFilter(logging.Filter):
    """Adds request_id ('-' outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_app_context() else "-"
        return True


class OneLineFormatter(logging.Formatter):
    """A record is one line whatever its message holds; traceback lines follow indented, so none starts a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        """The record's line with control characters escaped."""
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        """The traceback, indented, with control characters other than its line breaks escaped."""
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        """The stack, indented like a traceback."""
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + line.translate(_CONTROL_BUT_NEWLINE) for line in text.split("\n"))


def configure_logging(level: str) -> None:
    """One handler on the root logger at the configured level (HIE_LOG_LEVEL); idempotent."""
    root = logging.getLogger()
    if any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(OneLineFormatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
