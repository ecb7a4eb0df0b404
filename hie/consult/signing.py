"""Signing opinions: one Ed25519 key per user, made on first use, its private half sealed under the key ring, and a
canonical serialisation so that a signature can be checked again, byte for byte, years later.

Canonical form (a subset of RFC 8785, JSON Canonicalization Scheme): objects with their keys sorted (every key here
is ASCII, so code-point order is JCS's UTF-16 order), no insignificant whitespace, strings NFC-normalised (Unicode
Normalization Form C) and written as UTF-8 without \\u escapes (except the control characters JSON requires),
integers, booleans and null only: floats are refused, since their text form is where JSON serialisers differ.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.consult.models import SigningKey
from hie.platform.auth.models import User
from hie.platform.crypto import keyring
from hie.platform.keys import SealedColumn, register_sealed_column

ALGORITHM = "Ed25519"
CANONICALISATION = "JCS (RFC 8785) subset: sorted keys, no whitespace, UTF-8, NFC strings, no floats"


def private_key_aad(user_id: int, public_key: str) -> str:
    """The associated data binding a sealed private key to its user and its public half (so to its row)."""
    return f"signing_keys/{user_id}/{public_key}/private"


register_sealed_column(SealedColumn(
    SigningKey.__table__,  # type: ignore[arg-type]
    "private_key_enc", lambda _tenant, row: private_key_aad(row["user_id"], row["public_key"]), platform=True))


def normalised(value: Any, where: str = "$") -> Any:
    """The value with every string (keys too) in NFC; anything but objects, arrays, strings, integers, booleans and
    null is refused, naming where."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {normalised(str(k)): normalised(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalised(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} has no canonical form here")


def canonical(document: dict[str, Any]) -> str:
    """The canonical text of a document (see the module docstring); its UTF-8 bytes are what is signed."""
    return json.dumps(normalised(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _private_key(key: SigningKey) -> Ed25519PrivateKey:
    raw = keyring().decrypt(key.private_key_enc, private_key_aad(key.user_id, key.public_key))
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw))


def key_for(session: Session, user_id: int, now: datetime) -> SigningKey:
    """The user's active key; the first signature makes one (only then is the user row locked, so two first
    signatures at once make one key while later ones wait on nothing)."""
    active = select(SigningKey).where(SigningKey.user_id == user_id, SigningKey.retired_at.is_(None)) \
        .order_by(SigningKey.id.desc()).limit(1)
    key = session.scalar(active)
    if key is not None:
        return key
    session.scalar(select(User.id).where(User.id == user_id).with_for_update())
    key = session.scalar(active.execution_options(populate_existing=True))
    if key is not None:
        return key
    private = Ed25519PrivateKey.generate()
    public = _b64(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    raw = _b64(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    key = SigningKey(user_id=user_id, public_key=public, created_at=now,
                     private_key_enc=keyring().encrypt(raw, private_key_aad(user_id, public)))
    session.add(key)
    session.flush()
    return key


def sign(key: SigningKey, text: str) -> str:
    """The base64 Ed25519 signature of the text's UTF-8 bytes with the key's private half."""
    return _b64(_private_key(key).sign(text.encode("utf-8")))


def verify(public_key: str, signature: str, text: str) -> bool:
    """Whether the signature over the text's UTF-8 bytes is the public key's; malformed keys or signatures are
    simply not valid."""
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True)).verify(
            base64.b64decode(signature, validate=True), text.encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True
