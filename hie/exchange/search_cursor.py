"""Opaque, tamper-checked paging cursors: the last entry's sort key, bound to the search it continues."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import date, datetime

from hie.exchange.outcome import FhirError
from hie.platform.crypto import keyring

CURSOR_PARAM = "_cursor"
MAX_CURSOR = 600  # characters: a cursor holds one sort value (at most a 200-character code), a shard and an id
_PURPOSE = "fhir.search.cursor"


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last entry of the page before: (value, shard, id); the next page starts after it."""

    value: datetime | date | str
    tenant: str
    resource_id: str


def query_digest(resource_type: str, echo: tuple[tuple[str, str], ...]) -> str:
    """What a cursor is bound to: the type and every parameter of the search but the cursor (order-independent)."""
    text = json.dumps([resource_type, sorted(echo)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _mac(body: str) -> str:
    return keyring().blind_index(_PURPOSE, body)


def encode(digest: str, cursor: Cursor) -> str:
    """base64url(JSON) + '.' + HMAC: readable by this server only as given, useless for any other search."""
    kind = "t" if isinstance(cursor.value, datetime) else "d" if isinstance(cursor.value, date) else "s"
    value = cursor.value if isinstance(cursor.value, str) else cursor.value.isoformat()
    payload = json.dumps({"q": digest, "k": kind, "v": value, "t": cursor.tenant,
                          "i": cursor.resource_id}, ensure_ascii=False, separators=(",", ":"))
    body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{body}.{_mac(body)}"


def _refused(message: str) -> FhirError:
    return FhirError(400, "invalid", f"{CURSOR_PARAM}: {message}; follow the Bundle's links from the first page.",
                     [CURSOR_PARAM])


def decode(digest: str, raw: str) -> Cursor:
    """The cursor of a next link of this very search; any change to it or to the search is a 400."""
    body, dot, mac = raw.partition(".")
    if len(raw) > MAX_CURSOR or not dot or not hmac.compare_digest(mac.encode(), _mac(body).encode()):
        raise _refused("not a cursor this server issued")
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        parse = {"t": datetime.fromisoformat, "d": date.fromisoformat, "s": str}[payload["k"]]
        value = parse(payload["v"])
        cursor = Cursor(value, str(payload["t"]), str(payload["i"]))
        same = payload["q"] == digest
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _refused("not a cursor this server issued") from None
    if not same:
        raise _refused("issued for another search (its parameters changed)")
    return cursor
