"""Issue 8, accounts: login throttling instead of lockout, separation of duties, regions, auditor scope, issuer."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import LoginAlert, LoginThrottle, Role, User
from hie.platform.auth.throttle import backoff
from hie.platform.auth.tokens import verify_access_token
from hie.platform.cli import main
from hie.platform.config import ConfigError, load_config
from hie.platform.db import session_scope, utcnow
from hie.platform.worker import chain_once
from hie.tenants import services
from hie.tenants.models import Region, RegionLevel
from tests.conftest import PASSWORD, hie_environ, login

LINFEN_CSV = Path(__file__).parent.parent / "hie" / "tenants" / "data" / "linfen_counties.csv"
ATTACKER = "10.66.0.1"
STAFF = {"password": "Strong-pass-123", "institution_code": "YAODU-CH"}


@pytest.fixture
def hie(home, client):
    def run(*args: str, stdin: str | None = None):
        return CliRunner().invoke(main, list(args), input=stdin, env=hie_environ(home))
    return run


def _token(client, username="yaodu.doctor", password=PASSWORD, address=ATTACKER):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def _events(platform_db, **where):
    platform_db.rollback()
    query = select(AuditEvent).order_by(AuditEvent.seq)
    for column, value in where.items():
        query = query.where(getattr(AuditEvent, column) == value)
    return platform_db.scalars(query).all()


def _user(platform_db, username):
    platform_db.rollback()
    return platform_db.scalar(select(User).where(User.username == username))


def _unblock(platform_db):
    """Let the pair's wait pass without waiting (no timed tests)."""
    platform_db.execute(update(LoginThrottle).values(blocked_until=utcnow() - timedelta(seconds=1)))
    platform_db.commit()


# 1. Login throttling (NIST SP 800-63B 5.2.2) instead of an account lockout

def test_unknown_and_known_names_get_identical_answers(client, platform_db):
    answers = {}
    for username in ("yaodu.doctor", "nobody.here"):
        seen = [_token(client, username, "Wrong-password-9") for _ in range(5)]
        answers[username] = [(r.status_code, r.content_type, r.get_json()["detail"], "Retry-After" in r.headers)
                             for r in seen]
        assert seen[-1].headers["Retry-After"] in ("1", "2")
    assert answers["yaodu.doctor"] == answers["nobody.here"]
    assert [status for status, *_ in answers["nobody.here"]] == [401, 401, 401, 401, 429]
    assert [e.outcome for e in _events(platform_db, action="login")] == (["failure"] * 4 + ["denied"]) * 2


def test_the_real_user_elsewhere_still_logs_in_while_the_attacker_is_throttled(client, platform_db):
    for _ in range(6):
        _unblock(platform_db)
        assert _token(client, password="Wrong-password-9").status_code == 401
    assert _token(client).status_code == 429
    at_home = _token(client, address="192.0.2.7")
    assert at_home.status_code == 200, at_home.get_json()
    assert _user(platform_db, "yaodu.doctor").active is True
    assert [e.source_ip for e in _events(platform_db, action="login", outcome="success")] == ["192.0.2.7"]


def test_backoff_doubles_and_retry_after_says_how_long(client, platform_db):
    waits = []
    for _ in range(6):
        _unblock(platform_db)
        assert _token(client, password="Wrong-password-9").status_code == 401
        platform_db.rollback()
        row = platform_db.scalar(select(LoginThrottle))
        waits.append(round((row.blocked_until - row.last_failure_at).total_seconds()) if row.blocked_until else 0)
        if waits[-1]:
            throttled = _token(client, password="Wrong-password-9")
            assert throttled.status_code == 429
            assert 1 <= int(throttled.headers["Retry-After"]) <= waits[-1]
    assert waits == [0, 0, 0, 2, 4, 8]
    platform_db.rollback()
    row = platform_db.scalar(select(LoginThrottle))
    assert row.failures == 6 and len(row.username_index) == 32 and "yaodu" not in row.username_index


def test_concurrent_failures_are_all_counted(app, client, platform_db, monkeypatch):
    # eight hashing slots for eight threads: this is about counting failures, not the login bound (test_login_bound)
    monkeypatch.setitem(app.config, "HIE", dataclasses.replace(app.config["HIE"], login_concurrency=8))

    def attempt(i: int) -> int:
        with app.test_client() as own:
            return _token(own, "yaodu.nurse", f"Wrong-password-{i}").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert set(codes) <= {401, 429}
    chain_once(app)  # concurrent requests leave the chaining of the last events to whoever comes next (a worker tick)
    outcomes = [e.outcome for e in _events(platform_db, action="login", username="yaodu.nurse")]
    assert (outcomes.count("failure"), outcomes.count("denied")) == (codes.count(401), codes.count(429))
    row = platform_db.scalar(select(LoginThrottle))
    assert row.failures == codes.count(401) >= 4
    assert row.blocked_until - row.last_failure_at == timedelta(seconds=backoff(row.failures, app.config["HIE"]))
    assert _token(client, "yaodu.nurse", address="192.0.2.8").status_code == 200


def test_sustained_failures_alert_the_institution_admins(client, as_user, platform_db):
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        for _ in range(3):
            assert _token(client, "yaodu.nurse", "Wrong-password-9", address).status_code == 401
    assert _token(client, "yaodu.nurse", "Wrong-password-9", "10.0.0.4").status_code == 401
    alerts = _events(platform_db, action="login_alert")
    assert [(e.outcome, e.username, e.resource_id) for e in alerts] == [
        ("failure", "yaodu.nurse", str(_user(platform_db, "yaodu.nurse").id))]
    assert "9 failed logins from 3 source address(es)" in alerts[0].detail
    assert platform_db.scalar(select(func.count()).select_from(LoginAlert)) == 1
    seen = client.get("/api/v1/auth/alerts", headers=as_user("yaodu.itadmin"))
    assert seen.status_code == 200
    assert [(a["username"], a["institution_code"], a["failures"], a["source_addresses"])
            for a in seen.get_json()] == [("yaodu.nurse", "YAODU-CH", 9, 3)]
    assert len(client.get("/api/v1/auth/alerts", headers=as_user("admin")).get_json()) == 1
    assert client.get("/api/v1/auth/alerts", headers=as_user("quwo.admin")).get_json() == []
    assert client.get("/api/v1/auth/alerts", headers=as_user("yaodu.doctor")).status_code == 403


@pytest.mark.parametrize(("environ", "message"), [
    ({"HIE_LOGIN_FREE_FAILURES": "0"}, "HIE_LOGIN_FREE_FAILURES must be at least 1"),
    ({"HIE_LOGIN_DELAY_SECONDS": "two"}, "HIE_LOGIN_DELAY_SECONDS must be an integer"),
    ({"HIE_LOGIN_DELAY_SECONDS": "60", "HIE_LOGIN_MAX_DELAY_SECONDS": "30"},
     "HIE_LOGIN_MAX_DELAY_SECONDS must be at least HIE_LOGIN_DELAY_SECONDS"),
    ({"HIE_LOGIN_FAILURE_WINDOW": "9" * 30}, "HIE_LOGIN_FAILURE_WINDOW must be at most 2592000"),
])
def test_throttle_settings_are_validated_by_name(tmp_path, environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "t" * 40, **environ})


# 2. Separation of duties

def test_the_last_active_platform_admin_cannot_be_removed(client, as_user, platform_db):
    admin = _user(platform_db, "admin")
    alone = client.patch(f"/api/v1/users/{admin.id}", json={"active": False}, headers=as_user("admin"))
    assert alone.status_code == 409
    assert "last active platform administrator" in alone.get_json()["detail"]
    assert _user(platform_db, "admin").active is True
    second = client.post("/api/v1/users", json={**STAFF, "username": "admin.two", "institution_code": "LF-HC",
                                                 "roles": ["platform_admin", "health_admin"]},
                         headers=as_user("admin"))
    assert second.status_code == 201
    admin_two = login(client, "admin.two", STAFF["password"])
    demoted = client.patch(f"/api/v1/users/{admin.id}", json={"roles": ["tenant_admin"]}, headers=admin_two)
    assert demoted.status_code == 200
    own_id = second.get_json()["id"]
    for body in ({"roles": ["health_admin"]}, {"active": False}):
        refused = client.patch(f"/api/v1/users/{own_id}", json=body, headers=admin_two)
        assert refused.status_code == 409, refused.get_json()
    after = _user(platform_db, "admin.two")
    assert after.roles == {Role.platform_admin, Role.health_admin} and after.active is True
    denied = _events(platform_db, action="update", outcome="denied")
    assert [(e.username, e.resource_id) for e in denied] == [
        ("admin", str(admin.id)), ("admin.two", str(own_id)), ("admin.two", str(own_id))]


def test_nobody_grants_themselves_roles(client, as_user, platform_db):
    admin = _user(platform_db, "admin")
    response = client.patch(f"/api/v1/users/{admin.id}", json={"roles": ["platform_admin", "clinician"]},
                            headers=as_user("admin"))
    assert response.status_code == 403
    assert _user(platform_db, "admin").roles == {Role.platform_admin}
    assert len(_events(platform_db, action="authorize", outcome="denied", username="admin")) == 1


@pytest.mark.parametrize("other", ["clinician", "family_doctor", "specialist", "nurse", "data_steward"])
def test_auditor_never_holds_a_role_that_touches_patient_data(client, as_user, platform_db, other):
    body = {**STAFF, "username": "two.hats", "institution_code": "LF-HC", "roles": ["auditor", other]}
    made = client.post("/api/v1/users", json=body, headers=as_user("admin"))
    assert made.status_code == 422
    assert made.get_json()["detail"].startswith("roles:") and other in made.get_json()["detail"]
    assert _user(platform_db, "two.hats") is None
    auditor = _user(platform_db, "auditor")
    changed = client.patch(f"/api/v1/users/{auditor.id}", json={"roles": ["auditor", other]},
                           headers=as_user("admin"))
    assert changed.status_code == 422 and "roles" in changed.get_json()["detail"]
    assert _user(platform_db, "auditor").roles == {Role.auditor}


def test_auditor_with_aggregate_figures_is_allowed(client, as_user):
    body = {**STAFF, "username": "city.auditor", "institution_code": "LF-HC", "roles": ["auditor", "health_admin"]}
    assert client.post("/api/v1/users", json=body, headers=as_user("admin")).status_code == 201


def test_cli_refuses_auditor_with_clinical_roles(hie, platform_db):
    result = hie("users", "add", "two.hats", "--role", "auditor", "--role", "specialist", "--institution", "LF-PH",
                 "--password-stdin", stdin="Strong-pass-123\n")
    assert result.exit_code == 1
    assert "roles: auditor cannot be held together with specialist" in result.output
    assert _user(platform_db, "two.hats") is None


def test_duties_are_checked_by_add_user_itself(app, client):
    with app.app_context(), pytest.raises(accounts.AccountError, match="roles"), \
            session_scope(app.extensions["hie.engines"].platform) as session:
        accounts.add_user(session, "two.hats", [Role.auditor, Role.nurse], "LF-HC", "Strong-pass-123")


# 3. Regions: import and API

def _region_codes(platform_db) -> set[str]:
    platform_db.rollback()
    return set(platform_db.scalars(select(Region.code)))


def test_regions_import_the_shipped_linfen_file_and_rerunning_changes_nothing(hie, platform_db):
    first = hie("regions", "import", str(LINFEN_CSV))
    assert first.exit_code == 0, first.output
    assert "15 added, 0 updated, 3 unchanged" in first.output
    platform_db.rollback()
    houma = platform_db.get(Region, "141081")
    assert (houma.name, houma.level, houma.parent_code) == ("侯马市", RegionLevel.county, "141000")
    again = hie("regions", "import", str(LINFEN_CSV))
    assert "0 added, 0 updated, 18 unchanged" in again.output
    listing = hie("regions", "list")
    assert "141081\t侯马市\tcounty\t141000" in listing.output.splitlines()
    assert "141000\t临汾市\tcity\t-" in listing.output.splitlines()


def test_regions_import_refuses_a_bad_file_and_changes_nothing(hie, platform_db, tmp_path):
    before = _region_codes(platform_db)
    bad = tmp_path / "regions.csv"
    bad.write_text("code,name,parent_code\n"
                   "141023,襄汾县,141000\n"
                   "14102X,翼城县,141000\n"
                   "141024,洪洞县,149900\n"
                   "141023,襄汾县,141000\n"
                   "141023101,,141023\n", encoding="utf-8")
    result = hie("regions", "import", str(bad))
    assert result.exit_code == 1
    for expected in ("nothing imported", "line 3: region code '14102X'", "line 4: parent region '149900'",
                     "line 5: region '141023' is already on line 2", "line 6: name must not be empty"):
        assert expected in result.output, result.output
    assert _region_codes(platform_db) == before


def test_regions_import_refuses_a_town_whose_county_is_unknown(hie, platform_db, tmp_path):
    before = _region_codes(platform_db)
    bad = tmp_path / "towns.csv"
    bad.write_text("code,name\n141023100,新城镇\n", encoding="utf-8")
    result = hie("regions", "import", str(bad))
    assert result.exit_code == 1 and "line 2: parent region '141023'" in result.output
    assert _region_codes(platform_db) == before


def test_regions_api_for_platform_admins(client, as_user, platform_db):
    admin = as_user("admin")
    made = client.post("/api/v1/regions", json={"code": "141023", "name": "襄汾县", "parent_code": "141000"},
                       headers=admin)
    assert made.status_code == 201, made.get_json()
    assert made.get_json() == {"code": "141023", "name": "襄汾县", "level": "county", "parent_code": "141000"}
    assert client.post("/api/v1/regions", json={"code": "141023", "name": "again"}, headers=admin).status_code == 409
    orphan = client.post("/api/v1/regions", json={"code": "141099", "name": "x", "parent_code": "149900"},
                         headers=admin)
    assert orphan.status_code == 422 and "parent_code" in orphan.get_json()["detail"]
    malformed = client.post("/api/v1/regions", json={"code": "١٤١٠٢٣", "name": "x"}, headers=admin)
    assert malformed.status_code == 422 and "code" in [e["field"] for e in malformed.get_json()["errors"]]
    children = client.get("/api/v1/regions?parent=141000", headers=admin).get_json()
    assert [r["code"] for r in children] == ["141002", "141021", "141023"]
    assert client.get("/api/v1/regions/141023", headers=admin).get_json()["name"] == "襄汾县"
    renamed = client.patch("/api/v1/regions/141023", json={"name": "襄汾县（新）"}, headers=admin)
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "襄汾县（新）"
    assert client.get("/api/v1/regions/999999", headers=admin).status_code == 404
    assert [e.resource_id for e in _events(platform_db, resource_type="Region")] == ["141023", "141023"]


def test_regions_api_refuses_everyone_else(client, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    assert client.get("/api/v1/regions", headers=doctor).status_code == 403
    created = client.post("/api/v1/regions", json={"code": "141023", "name": "襄汾县", "parent_code": "141000"},
                          headers=doctor)
    assert created.status_code == 403
    assert client.patch("/api/v1/regions/141002", json={"name": "x"}, headers=as_user("yaodu.admin")) \
        .status_code == 403
    assert "141023" not in _region_codes(platform_db)
    assert platform_db.get(Region, "141002").name == "尧都区"
    assert [e.username for e in _events(platform_db, action="authorize", outcome="denied")] == [
        "yaodu.doctor", "yaodu.doctor", "yaodu.admin"]


# 4. An auditor's scope falls back to their own tenant

def test_auditor_of_a_tenant_without_region_sees_their_own_tenant(app, client, as_user, platform_db):
    with app.app_context(), session_scope(app.extensions["hie.engines"].platform) as session:
        services.add_tenant(session, app.config["HIE"], "noregion", "No region")
        services.add_institution(session, "NR-HC", "无区划卫健委", "noregion", "administration")
        accounts.add_user(session, "nr.auditor", [Role.auditor], "NR-HC", PASSWORD)
    login(client, "yaodu.doctor")
    headers = login(client, "nr.auditor")
    events = client.get("/api/v1/audit?action=login", headers=headers)
    assert events.status_code == 200
    assert [(e["username"], e["tenant_code"]) for e in events.get_json()] == [("nr.auditor", "noregion")]
    city = client.get("/api/v1/audit?action=login", headers=as_user("auditor")).get_json()
    assert "nr.auditor" not in [e["username"] for e in city]


# 5. The token issuer is checked

@pytest.mark.parametrize("issuer", ["someone-else", None])
def test_token_with_the_right_key_but_the_wrong_issuer_is_refused(client, app, issuer):
    access = login(client, "yaodu.doctor")["Authorization"].split()[1]
    secret = app.config["HIE"].secret_key
    claims = verify_access_token(secret, access)
    now = int(utcnow().timestamp())
    payload = {"sub": str(claims.user_id), "sid": claims.session_id, "typ": "access", "iat": now, "exp": now + 600}
    if issuer is not None:
        payload["iss"] = issuer
    forged = jwt.encode(payload, secret, algorithm="HS256")
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"}).status_code == 200
