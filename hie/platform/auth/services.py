"""Login (throttled), refresh, logout and the per-request resolution of an access token to an Identity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from flask import current_app
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from hie.platform.audit import services as audit
from hie.platform.auth import throttle, tokens
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import AuthSession, User, UserRole
from hie.platform.auth.passwords import (
    LOGIN_SLOT_WAIT,
    HashingBusy,
    hash_password,
    verify_password,
)
from hie.platform.cache import Cache
from hie.platform.db import new_id, utcnow
from hie.tenants.models import Institution, Tenant

_DUMMY_HASH: dict[str, str] = {}


class LoginRefused(Exception):
    """Why a login or refresh did not succeed; status is what the client gets."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenPair:
    """What the token endpoint returns."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


def identity_cache_key(session_id: str) -> str:
    """Cache key of a login session's resolved identity."""
    return f"identity:{session_id}"


def _cache() -> Cache:
    return current_app.extensions["hie.cache"]


def _issue(session: Session, user: User, source_ip: str | None, family_id: str | None = None) -> TokenPair:
    config = current_app.config["HIE"]
    now = utcnow()
    session_id = new_id()
    refresh_token, refresh_hash = tokens.new_refresh_token(session_id)
    session.add(AuthSession(
        id=session_id, family_id=family_id or session_id, user_id=user.id, refresh_hash=refresh_hash, issued_at=now,
        expires_at=now + timedelta(seconds=config.refresh_token_ttl), source_ip=source_ip,
    ))
    access = tokens.issue_access_token(config.secret_key, user.id, session_id, now, config.access_token_ttl)
    return TokenPair(access, refresh_token, config.access_token_ttl)


def _actor(user: User | None, username: str) -> dict[str, object]:
    if user is None:
        return {"username": username[:64]}
    return {
        "user_id": user.id, "username": user.username, "institution_id": user.institution_id,
        "role": ",".join(sorted(r.value for r in user.roles)), "tenant_code": user.institution.tenant.code,
    }


def _refuse(session: Session, user: User | None, actor: dict[str, object], index: str, source_ip: str,
            now: datetime, why: str) -> NoReturn:
    """Count the failure for (username, address), alert on sustained guessing, audit it, answer 401."""
    wait = throttle.count_failure(session, index, source_ip, now)
    audit.record("login", "failure", detail=f"{why}; next attempt from this address in {wait} s" if wait else why,
                 actor=actor)
    throttle.alert_if_sustained(session, user, index, now, actor)
    raise LoginRefused(401, "Wrong username or password.")


def _throttled(actor: dict[str, object], wait: int, why: str) -> LoginRefused:
    audit.record("login", "denied", detail=f"{why}; retry after {wait} s", actor=actor)
    return LoginRefused(429, "Too many failed logins for this username from this address; try again later.",
                        retry_after=wait)


def _busy(actor: dict[str, object], busy: HashingBusy) -> LoginRefused:
    """No hashing slot or login budget: refused at once, nothing hashed and no failure counted, so a flood cannot
    queue up CPU."""
    audit.record("login", "denied", detail=f"{busy}; retry after {busy.retry_after} s", actor=actor)
    return LoginRefused(429, "Too many logins at once; try again in a moment.", retry_after=busy.retry_after)


def _password_matches(user: User | None, password: str) -> bool:
    """Unknown names are checked against a dummy hash (in a slot too), so they take as long as known ones."""
    if user is None:
        if "hash" not in _DUMMY_HASH:
            _DUMMY_HASH["hash"] = hash_password("not-a-real-password-1", wait=LOGIN_SLOT_WAIT)
        verify_password(_DUMMY_HASH["hash"], password)
        return False
    return verify_password(user.password_hash, password)


def login(session: Session, username: str, password: str, source_ip: str | None) -> TokenPair:
    """Check the password with throttling per (username, address), the same for unknown names; audit every attempt."""
    name = username.lower()
    source = (source_ip or "")[:45]
    index = throttle.username_index(name)
    now = utcnow()
    user = session.scalar(select(User).where(User.username == name))
    if user is not None and user.username != name:
        user = None  # a case- or accent-insensitive collation matched another spelling
    actor = _actor(user, username)
    wait = throttle.retry_after(session, index, source, now)
    if wait is not None:
        raise _throttled(actor, wait, "throttled after repeated failed logins")
    try:
        matches = _password_matches(user, password)
    except HashingBusy as busy:
        raise _busy(actor, busy) from None
    if user is None:
        _refuse(session, None, actor, index, source, now, "unknown user")
    if not matches:
        _refuse(session, user, actor, index, source, now, "wrong password")
    if not user.active or not user.institution.active:
        _refuse(session, user, actor, index, source, now, "account disabled")
    wait = throttle.clear(session, index, source, now)
    if wait is not None:
        raise _throttled(actor, wait, "throttled by a concurrent failed login")
    pair = _issue(session, user, source_ip)
    audit.record("login", "success", actor=actor)
    return pair


def refresh(session: Session, refresh_token: str, source_ip: str | None) -> TokenPair:
    """Rotate: the old refresh token dies; presenting a dead one ends the whole login (theft)."""
    try:
        session_id, secret = tokens.split_refresh_token(refresh_token)
    except tokens.TokenError:
        raise LoginRefused(401, "Refresh token invalid.") from None
    auth_session = session.get(AuthSession, session_id, with_for_update=True)
    now = utcnow()
    if auth_session is None or auth_session.expires_at <= now:
        raise LoginRefused(401, "Refresh token invalid or expired.")
    user = session.get(User, auth_session.user_id)
    assert user is not None
    if auth_session.revoked_at is not None or auth_session.refresh_hash != tokens.hash_refresh_secret(secret):
        _revoke_family(session, auth_session.family_id, now)
        audit.record("token_refresh", "denied", detail="spent or forged refresh token; login revoked",
                     actor=_actor(user, user.username))
        raise LoginRefused(401, "Refresh token invalid.")
    if not user.active:
        raise LoginRefused(401, "Refresh token invalid.")
    auth_session.revoked_at = now
    _cache().invalidate(identity_cache_key(session_id))
    pair = _issue(session, user, source_ip, auth_session.family_id)
    audit.record("token_refresh", "success", actor=_actor(user, user.username))
    return pair


def _revoke_family(session: Session, family_id: str, now: datetime) -> None:
    """End every session of one login (the chain of refresh rotations), e.g. when a spent token returns."""
    live = session.scalars(select(AuthSession.id).where(
        AuthSession.family_id == family_id, AuthSession.revoked_at.is_(None))).all()
    session.execute(update(AuthSession).where(AuthSession.id.in_(live)).values(revoked_at=now)
                    .execution_options(synchronize_session=False))
    _cache().invalidate(*(identity_cache_key(sid) for sid in live))


def logout(session: Session, identity: Identity) -> None:
    """Revoke the caller's login: its access and refresh tokens stop working at once."""
    auth_session = session.get(AuthSession, identity.session_id)
    if auth_session is not None and auth_session.revoked_at is None:
        auth_session.revoked_at = utcnow()
    _cache().invalidate(identity_cache_key(identity.session_id))
    audit.record("logout", "success")


_IDENTITY_QUERY = (
    select(
        AuthSession.revoked_at, User.id, User.username, User.active, User.patient_id, User.institution_id,
        Institution.code, Tenant.id, Tenant.code, Tenant.region_code, UserRole.role,
    )
    .join(User, User.id == AuthSession.user_id)
    .join(Institution, Institution.id == User.institution_id)
    .join(Tenant, Tenant.id == Institution.tenant_id)
    .join(UserRole, UserRole.user_id == User.id)
    .where(AuthSession.id == bindparam("session_id"))
)


def _load_identity(session: Session, claims: tokens.AccessClaims) -> Identity | None:
    """One prebuilt Core query (a row per role): this runs on every request that misses the cache."""
    rows = session.execute(_IDENTITY_QUERY, {"session_id": claims.session_id}).all()
    if not rows:
        return None
    revoked_at, user_id, username, active, patient_id, institution_id, institution_code, tenant_id, \
        tenant_code, region_code, _role = rows[0]
    if revoked_at is not None or user_id != claims.user_id or not active:
        return None
    return Identity(
        user_id=user_id, username=username, roles=frozenset(row.role for row in rows),
        institution_id=institution_id, institution_code=institution_code, tenant_id=tenant_id,
        tenant_code=tenant_code, region_code=region_code, session_id=claims.session_id, patient_id=patient_id,
    )


def resolve(session: Session, token: str) -> Identity:
    """Verify the token, then the session (cached in Redis when configured, dropped on logout)."""
    claims = tokens.verify_access_token(current_app.config["HIE"].secret_key, token)
    cache = _cache()
    cached = cache.get(identity_cache_key(claims.session_id))
    if cached is not None:
        identity = Identity.from_cache(cached)
        if identity.user_id == claims.user_id:
            return identity
    identity = _load_identity(session, claims)
    if identity is None:
        raise tokens.TokenError("login session ended")
    ttl = max(1, min(cache.default_ttl, claims.expires_at - int(utcnow().timestamp())))
    cache.set(identity_cache_key(claims.session_id), identity.to_cache(), ttl)
    return identity


def invalidate_user_sessions(session: Session, user_id: int) -> None:
    """After a user's roles or status change, make every cached identity of theirs re-resolve."""
    session_ids = session.scalars(
        select(AuthSession.id).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    ).all()
    _cache().invalidate(*(identity_cache_key(sid) for sid in session_ids))
