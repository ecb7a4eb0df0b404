"""Encryption at rest: AES-GCM with key ids and row-bound associated data, HMAC blind indexes, argon2id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from hie.platform.config import ConfigError

log = logging.getLogger(__name__)

_SEPARATOR = "$"
_RELOAD_INTERVAL = 1.0
_MYSQL_UNKNOWN_DATABASE = 1049


class DecryptionError(Exception):
    """A ciphertext does not open here: wrong key, wrong row, or tampered."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyMaterial:
    """One loaded version of the key ring file."""

    active: str
    data_keys: dict[str, bytes]
    index_key: bytes
    audit_key: bytes


def _new_kid() -> str:
    return datetime.now(UTC).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(2)


def _parse(path: Path, raw: str) -> KeyMaterial:
    try:
        doc = json.loads(raw)
        keys = {kid: _unb64(value) for kid, value in doc["keys"].items()}
        material = KeyMaterial(doc["active"], keys, _unb64(doc["index_key"]), _unb64(doc["audit_key"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"HIE_KEYRING_FILE {path} is not a valid key ring: {exc}") from None
    if material.active not in keys:
        raise ConfigError(f"HIE_KEYRING_FILE {path}: active key {material.active!r} is not in the ring")
    for kid, key in (*keys.items(), ("index_key", material.index_key), ("audit_key", material.audit_key)):
        if len(key) != 32 or _SEPARATOR in kid:
            raise ConfigError(f"HIE_KEYRING_FILE {path}: key {kid!r} must be 32 bytes, base64url")
    return material


def _serialise(material: KeyMaterial) -> str:
    return json.dumps(
        {
            "active": material.active,
            "keys": {kid: _b64(key) for kid, key in material.data_keys.items()},
            "index_key": _b64(material.index_key),
            "audit_key": _b64(material.audit_key),
        },
        indent=2,
    )


def _write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class KeyRing:
    """The data keys, read from a file that every process re-reads when it changes (rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime = 0.0
        self._checked = 0.0
        self._material = self._load()

    @staticmethod
    def create(path: Path) -> None:
        """Write a fresh ring: one data key, a blind-index key and an audit-chain key."""
        kid = _new_kid()
        material = KeyMaterial(kid, {kid: AESGCM.generate_key(256)}, os.urandom(32), os.urandom(32))
        _write_atomically(path, _serialise(material))
        log.info("created key ring %s with data key %s", path, kid)

    def _load(self) -> KeyMaterial:
        if not self.path.exists():
            raise ConfigError(f"HIE_KEYRING_FILE {self.path} does not exist")
        try:
            stat = self.path.stat()
            material = _parse(self.path, self.path.read_text())
        except OSError as exc:
            raise ConfigError(f"HIE_KEYRING_FILE {self.path} cannot be read: {exc}") from None
        self._mtime = stat.st_mtime
        self._checked = time.monotonic()
        return material

    def material(self, force: bool = False) -> KeyMaterial:
        """The current keys, re-read at most once a second when the file has changed."""
        now = time.monotonic()
        if force or now - self._checked > _RELOAD_INTERVAL:
            with self._lock:
                self._checked = now
                try:
                    changed = self.path.stat().st_mtime != self._mtime
                except OSError:
                    changed = False
                if changed or force:
                    self._material = self._load()
        return self._material

    @property
    def active_kid(self) -> str:
        """The key new ciphertexts are made with."""
        return self.material().active

    def encrypt(self, plaintext: str, aad: str) -> str:
        """kid$nonce+ciphertext; the associated data binds it to one row, column and tenant."""
        material = self.material()
        nonce = os.urandom(12)
        sealed = AESGCM(material.data_keys[material.active]).encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{material.active}{_SEPARATOR}{_b64(nonce + sealed)}"

    def decrypt(self, token: str, aad: str) -> str:
        """Open a ciphertext made for exactly this associated data, under any key in the ring."""
        kid, _, body = token.partition(_SEPARATOR)
        if not body:
            raise DecryptionError(f"unknown data key {kid!r}")
        return self._open(kid, _unb64(body), aad).decode()

    def encrypt_bytes(self, plaintext: bytes, aad: str) -> bytes:
        """Binary form of encrypt (kid$nonce+ciphertext, no base64) for large cached blobs."""
        material = self.material()
        nonce = os.urandom(12)
        sealed = AESGCM(material.data_keys[material.active]).encrypt(nonce, plaintext, aad.encode())
        return material.active.encode() + _SEPARATOR.encode() + nonce + sealed

    def decrypt_bytes(self, token: bytes, aad: str) -> bytes:
        """Open what encrypt_bytes sealed for exactly this associated data."""
        kid, _, raw = token.partition(_SEPARATOR.encode())
        return self._open(kid.decode(errors="replace"), raw, aad)

    def _open(self, kid: str, raw: bytes, aad: str) -> bytes:
        material = self.material()
        if kid not in material.data_keys:
            material = self.material(force=True)
        key = material.data_keys.get(kid)
        if key is None or len(raw) < 12:
            raise DecryptionError(f"unknown data key {kid!r}")
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], aad.encode())
        except InvalidTag:
            raise DecryptionError("ciphertext does not belong to this row or was altered") from None

    def key_id_of(self, token: str) -> str:
        """Which key made a ciphertext, for re-encryption sweeps."""
        return token.partition(_SEPARATOR)[0]

    def blind_index(self, purpose: str, value: str) -> str:
        """Keyed hash for equality lookups; the purpose keeps one field's index useless for another."""
        digest = hmac.new(self.material().index_key, f"{purpose}\x00{value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def audit_mac(self, payload: bytes) -> str:
        """HMAC for the audit chain, so rewriting the whole chain needs a key the database never holds."""
        return hmac.new(self.material().audit_key, payload, hashlib.sha256).hexdigest()

    def add_data_key(self) -> str:
        """Add a new data key and make it active; old keys stay so old ciphertexts still open."""
        with self._lock:
            current = self._load()
            kid = _new_kid()
            keys = dict(current.data_keys)
            keys[kid] = AESGCM.generate_key(256)
            _write_atomically(
                self.path, _serialise(KeyMaterial(kid, keys, current.index_key, current.audit_key))
            )
        self.material(force=True)
        return kid


def _platform_initialised(engine: Engine) -> bool:
    """Whether the platform database exists with a schema (and so with data sealed under some ring)."""
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and (not database or not Path(database).exists()):
        return False
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        if getattr(exc.orig, "args", (None,))[0] == _MYSQL_UNKNOWN_DATABASE:
            return False
        raise ConfigError(f"HIE_KEYRING_FILE is missing and the platform database cannot be checked: "
                          f"{str(exc).splitlines()[0]}") from None


def open_keyring(path: Path, platform: Engine) -> KeyRing:
    """The ring at path; a missing one is created only on first initialisation, when the platform is empty."""
    if not path.exists():
        if _platform_initialised(platform):
            raise ConfigError(f"HIE_KEYRING_FILE {path} does not exist, but the platform database is already "
                              "initialised; point HIE_KEYRING_FILE at its key ring (a new ring is made only "
                              "by the first `hie init`)")
        KeyRing.create(path)
    return KeyRing(path)


def keyring() -> KeyRing:
    """The app's key ring."""
    from flask import current_app

    return current_app.extensions["hie.keyring"]
