"""Password hashing with argon2id; cost set by configuration so tests can run cheaply."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

MIN_PASSWORD_LENGTH = 10


def _hasher() -> PasswordHasher:
    config = current_app.config["HIE"]
    return PasswordHasher(time_cost=config.argon2_time_cost, memory_cost=config.argon2_memory_kib)


def hash_password(password: str) -> str:
    """argon2id hash with a fresh salt."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time check; a malformed stored hash counts as a mismatch."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if password.isdigit() or password.isalpha():
        return "must mix letters with digits or symbols"
    return None
