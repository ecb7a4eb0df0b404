"""Short-lived signed access tokens naming a login session, and opaque rotating refresh tokens."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

_ALGORITHM = "HS256"
_ISSUER = "hie"


class TokenError(Exception):
    """The token is expired, tampered, malformed or of the wrong kind."""


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: int
    session_id: str
    expires_at: int


def issue_access_token(secret: str, user_id: int, session_id: str, now: datetime, ttl: int) -> str:
    """HS256 JWT; the session id lets logout end it before it expires."""
    payload = {
        "iss": _ISSUER,
        "sub": str(user_id),
        "sid": session_id,
        "typ": "access",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl)).timestamp()),
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


def verify_access_token(secret: str, token: str) -> AccessClaims:
    """Check signature, expiry, issuer and kind; anything else is a TokenError."""
    try:
        payload = jwt.decode(
            token, secret, algorithms=[_ALGORITHM], issuer=_ISSUER,
            options={"require": ["exp", "iat", "sub", "sid", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("access token expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("access token invalid") from None
    if payload.get("typ") != "access":
        raise TokenError("not an access token")
    try:
        return AccessClaims(int(payload["sub"]), str(payload["sid"]), int(payload["exp"]))
    except (TypeError, ValueError):
        raise TokenError("access token invalid") from None


def new_refresh_token(session_id: str) -> tuple[str, str]:
    """A refresh token and the hash we keep of it."""
    secret = secrets.token_urlsafe(32)
    return f"{session_id}.{secret}", hash_refresh_secret(secret)


def split_refresh_token(token: str) -> tuple[str, str]:
    """Session id and secret part; TokenError when it cannot be one of ours."""
    session_id, _, secret = token.partition(".")
    if len(session_id) != 36 or len(secret) < 20:
        raise TokenError("refresh token invalid")
    return session_id, secret


def hash_refresh_secret(secret: str) -> str:
    """sha256 is enough: the secret is 256 random bits, not a password."""
    return hashlib.sha256(secret.encode()).hexdigest()
