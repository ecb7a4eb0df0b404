"""Login, tokens, refresh, logout and login throttling, as a client sees them."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import AuthSession, LoginThrottle
from hie.platform.auth.tokens import issue_access_token
from hie.platform.db import utcnow
from tests.conftest import PASSWORD, login


def _token(client, username="yaodu.doctor", password=PASSWORD):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def _login_events(platform_db, username):
    return platform_db.scalars(
        select(AuditEvent).where(AuditEvent.action == "login", AuditEvent.username == username)
        .order_by(AuditEvent.seq)
    ).all()


def test_login_returns_bearer_tokens_and_is_audited(client, platform_db):
    response = _token(client)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["access_token"] and body["refresh_token"]
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.get_json()["tenant_code"] == "yaodu"
    assert "patient:read" in me.get_json()["permissions"]
    events = _login_events(platform_db, "yaodu.doctor")
    assert [(e.outcome, e.tenant_code) for e in events] == [("success", "yaodu")]


def test_wrong_password_is_refused_and_audited(client, platform_db):
    response = _token(client, password="Not-the-password-1")
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert "access_token" not in response.get_json()
    assert [e.outcome for e in _login_events(platform_db, "yaodu.doctor")] == ["failure"]
    assert platform_db.scalar(select(AuthSession).limit(1)) is None


def test_unknown_user_gets_the_same_answer_and_is_audited(client, platform_db):
    response = _token(client, username="nobody.here")
    assert response.status_code == 401
    assert response.get_json()["detail"] == "Wrong username or password."
    assert [e.detail for e in _login_events(platform_db, "nobody.here")] == ["unknown user"]


def test_repeated_failures_throttle_even_the_right_password_from_that_address(client, platform_db):
    for _ in range(4):
        assert _token(client, password="Wrong-password-9").status_code == 401
    throttled = _token(client)
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert [e.outcome for e in _login_events(platform_db, "yaodu.doctor")] == ["failure"] * 4 + ["denied"]
    assert platform_db.scalar(select(AuthSession).limit(1)) is None


def test_throttle_expires_and_a_good_login_clears_it(client, platform_db):
    for _ in range(4):
        assert _token(client, password="Wrong-password-9").status_code == 401
    platform_db.execute(update(LoginThrottle).values(blocked_until=utcnow() - timedelta(seconds=1)))
    platform_db.commit()
    assert _token(client).status_code == 200
    platform_db.rollback()
    assert platform_db.scalar(select(LoginThrottle).limit(1)) is None


def test_missing_bearer_is_401_problem(client):
    response = client.get("/api/v1/auth/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["title"] == "Unauthorized"


def test_expired_token_is_refused(client, app):
    headers = login(client, "yaodu.doctor")
    access = headers["Authorization"].split()[1]
    with app.app_context():
        from hie.platform.auth.tokens import verify_access_token

        claims = verify_access_token(app.config["HIE"].secret_key, access)
    old = issue_access_token(app.config["HIE"].secret_key, claims.user_id, claims.session_id,
                             utcnow() - timedelta(hours=2), 60)
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {old}"})
    assert response.status_code == 401
    assert "expired" in response.get_json()["detail"]


def test_tampered_token_is_refused(client):
    access = login(client, "yaodu.doctor")["Authorization"].split()[1]
    header, payload, signature = access.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for forged in (f"{header}.{payload}.{flipped}", f"{header}.{payload[:-1]}x.{signature}", "garbage"):
        response = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401


def test_token_signed_with_another_key_is_refused(client, app):
    access = login(client, "yaodu.doctor")["Authorization"].split()[1]
    from hie.platform.auth.tokens import verify_access_token

    claims = verify_access_token(app.config["HIE"].secret_key, access)
    forged = issue_access_token("x" * 40, claims.user_id, claims.session_id, utcnow(), 600)
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_logout_revokes_access_and_refresh_tokens(client, platform_db):
    response = _token(client)
    tokens = response.get_json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401
    again = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401
    assert platform_db.scalar(select(AuthSession.revoked_at)) is not None


def test_refresh_rotates_and_reuse_revokes_the_login(client, platform_db):
    first = _token(client).get_json()
    second = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"}) \
        .status_code == 200
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {first['access_token']}"}) \
        .status_code == 401
    reused = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"}) \
        .status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401
    platform_db.rollback()
    revoked = platform_db.scalars(select(AuthSession.revoked_at)).all()
    assert len(revoked) == 2 and None not in revoked
    assert [e.outcome for e in platform_db.scalars(select(AuditEvent).where(
        AuditEvent.action == "token_refresh").order_by(AuditEvent.seq))] == ["success", "denied", "denied"]


def test_stolen_refresh_token_with_wrong_secret_ends_the_session(client):
    tokens = _token(client).get_json()
    session_id = tokens["refresh_token"].split(".")[0]
    forged = client.post("/api/v1/auth/refresh", json={"refresh_token": session_id + ".x" * 15})
    assert forged.status_code == 401
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401


def test_bad_token_requests_name_the_field_and_change_nothing(client, platform_db):
    for body, field in (({"password": "x"}, "username"), ({"username": "a"}, "password"),
                        ({"username": 5, "password": "x"}, "username")):
        response = client.post("/api/v1/auth/token", json=body)
        assert response.status_code == 422
        assert response.content_type == "application/problem+json"
        assert field in [error["field"] for error in response.get_json()["errors"]]
    not_json = client.post("/api/v1/auth/token", data="username=a", content_type="text/plain")
    assert not_json.status_code in (415, 422)
    assert platform_db.scalar(select(AuditEvent).limit(1)) is None
    assert platform_db.scalar(select(AuthSession).limit(1)) is None
