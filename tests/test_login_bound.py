"""Logins hash with bounded concurrency per process and at a bounded rate per host: beyond either a login answers
429 at once."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from hie.platform.audit.models import AuditEvent
from hie.platform.auth import passwords
from hie.platform.auth.models import AuthSession, LoginThrottle
from hie.platform.config import ConfigError, cpu_cores, load_config
from tests.conftest import PASSWORD, hie_environ

ROOT = Path(__file__).resolve().parents[1]

HASH_SECONDS = 2.0


@pytest.fixture
def one_slot(app, monkeypatch):
    """HIE_LOGIN_CONCURRENCY=1 for this test."""
    monkeypatch.setitem(app.config, "HIE", dataclasses.replace(app.config["HIE"], login_concurrency=1))


@pytest.fixture
def slow_hash(monkeypatch):
    """Every password check takes HASH_SECONDS inside its slot; the event says a check has started."""
    started = threading.Event()
    real = passwords._hasher

    class Slow:
        def __init__(self) -> None:
            self.hasher = real()

        def hash(self, password: str) -> str:
            return self.hasher.hash(password)

        def verify(self, password_hash: str, password: str) -> bool:
            started.set()
            time.sleep(HASH_SECONDS)
            return self.hasher.verify(password_hash, password)

    monkeypatch.setattr(passwords, "_hasher", Slow)
    return started


def _token(client, username="yaodu.doctor", password=PASSWORD):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def _in_background(app, username):
    """Log in from another thread (its own client); the response lands in the returned dict."""
    result: dict[str, object] = {}

    def run() -> None:
        with app.test_client() as other:
            result["response"] = _token(other, username)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _login_events(platform_db, username):
    platform_db.rollback()
    return platform_db.scalars(select(AuditEvent).where(AuditEvent.action == "login", AuditEvent.username == username)
                               .order_by(AuditEvent.seq)).all()


def test_a_login_beyond_the_bound_gets_429_at_once_and_the_first_still_succeeds(app, client, platform_db, one_slot,
                                                                                 slow_hash):
    thread, first = _in_background(app, "yaodu.doctor")
    assert slow_hash.wait(5)
    began = time.monotonic()
    refused = _token(client, "yaodu.nurse")
    elapsed = time.monotonic() - began
    thread.join(10)

    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.content_type == "application/problem+json"
    assert "access_token" not in refused.get_json()
    assert elapsed < HASH_SECONDS / 2, f"the refused login took {elapsed:.2f} s: it queued for the hash"
    assert first["response"].status_code == 200
    assert first["response"].get_json()["access_token"]
    [denied] = _login_events(platform_db, "yaodu.nurse")
    assert denied.outcome == "denied" and "password-hashing slots are busy" in denied.detail
    assert [e.outcome for e in _login_events(platform_db, "yaodu.doctor")] == ["success"]
    assert platform_db.scalar(select(LoginThrottle).limit(1)) is None, "a busy refusal is not a failed login"
    assert len(platform_db.scalars(select(AuthSession)).all()) == 1


def test_an_unknown_name_holds_a_slot_for_its_dummy_hash_too(app, client, platform_db, one_slot, slow_hash):
    thread, first = _in_background(app, "nobody.here")
    assert slow_hash.wait(5)
    refused = _token(client, "yaodu.doctor")
    thread.join(10)

    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert first["response"].status_code == 401
    assert [e.outcome for e in _login_events(platform_db, "yaodu.doctor")] == ["denied"]
    assert [e.detail for e in _login_events(platform_db, "nobody.here")] == ["unknown user"]


def test_a_refused_login_without_a_slot_hashes_nothing(client, one_slot, monkeypatch):
    checks: list[str] = []
    real = passwords._hasher

    class Counting:
        def verify(self, password_hash: str, password: str) -> bool:
            checks.append(password)
            return real().verify(password_hash, password)

    monkeypatch.setattr(passwords, "_hasher", Counting)
    slot = passwords._semaphore(1)
    assert slot.acquire(blocking=False)
    try:
        refused = _token(client, password="Wrong-password-9")
    finally:
        slot.release()
    assert refused.status_code == 429
    assert checks == []
    assert _token(client).status_code == 200 and len(checks) == 1


def test_logins_one_after_another_are_unaffected_by_the_bound(client, platform_db, one_slot):
    for username in ("yaodu.doctor", "yaodu.nurse", "quwo.doctor", "yaodu.doctor"):
        assert _token(client, username).status_code == 200
    assert _token(client, password="Wrong-password-9").status_code == 401
    assert [e.outcome for e in _login_events(platform_db, "yaodu.doctor")] == ["success", "success", "failure"]


def test_logins_within_the_bound_run_together(app, client, monkeypatch, slow_hash):
    monkeypatch.setitem(app.config, "HIE", dataclasses.replace(app.config["HIE"], login_concurrency=2))
    thread, first = _in_background(app, "yaodu.doctor")
    assert slow_hash.wait(5)
    second = _token(client, "yaodu.nurse")
    thread.join(10)
    assert second.status_code == 200 and first["response"].status_code == 200


def test_login_concurrency_defaults_to_the_cores_and_is_validated(tmp_path):
    assert load_config({"HIE_HOME": str(tmp_path)}).login_concurrency == cpu_cores() >= 1
    assert load_config({"HIE_HOME": str(tmp_path), "HIE_LOGIN_CONCURRENCY": "3"}).login_concurrency == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="HIE_LOGIN_CONCURRENCY"):
            load_config({"HIE_HOME": str(tmp_path), "HIE_LOGIN_CONCURRENCY": bad})


# --- the host's login rate: one budget for every process under one HIE_HOME ---

_OTHER_PROCESS_LOGIN = """
import os, sys
from hie.platform.app import create_app
from hie.platform.config import load_config
app = create_app(load_config(dict(os.environ), argon2_time_cost=1, argon2_memory_kib=1024, testing=True))
response = app.test_client().post("/api/v1/auth/token", json={"username": "yaodu.nurse", "password": sys.argv[1]})
print(response.status_code)
"""


@pytest.fixture
def rate(app, monkeypatch):
    """A host budget of `burst` logins, then one every 100 s, from an empty state file."""
    def set_rate(burst: int) -> Path:
        config = dataclasses.replace(app.config["HIE"], login_rate=0.01, login_burst=burst)
        monkeypatch.setitem(app.config, "HIE", config)
        state = config.home / "run" / "login-rate"
        state.unlink(missing_ok=True)
        return state
    yield set_rate
    (app.config["HIE"].home / "run" / "login-rate").unlink(missing_ok=True)


def test_logins_beyond_the_hosts_rate_get_429_with_the_wait_and_hash_nothing(client, platform_db, rate):
    rate(2)
    assert _token(client).status_code == 200
    assert _token(client, "yaodu.nurse", "Wrong-password-9").status_code == 401
    refused = _token(client, "yaodu.nurse")
    assert refused.status_code == 429 and refused.content_type == "application/problem+json"
    assert 90 <= int(refused.headers["Retry-After"]) <= 100
    assert "access_token" not in refused.get_json()
    denied = _login_events(platform_db, "yaodu.nurse")[-1]
    assert denied.outcome == "denied" and "login rate (0.01 a second) is spent" in denied.detail
    assert platform_db.scalar(select(LoginThrottle.failures)) == 1, "the refusal counted no failed login"


def test_the_rate_is_shared_with_another_process_on_the_host(app, client, home, rate):
    rate(1)
    env = {**os.environ, **hie_environ(home), "HIE_LOGIN_RATE": "0.01", "HIE_LOGIN_BURST": "1",
           "PYTHONPATH": str(ROOT)}
    other = subprocess.run([sys.executable, "-c", _OTHER_PROCESS_LOGIN, PASSWORD], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert other.stdout.split() == ["200"], other.stderr
    assert _token(client).status_code == 429


def test_a_state_file_from_before_a_restart_or_garbled_does_not_lock_logins_out(client, rate):
    state = rate(1)
    for stale in (f"{time.monotonic() + 10**6!r}", "not a number", ""):
        state.parent.mkdir(exist_ok=True)
        state.write_text(stale)
        assert _token(client).status_code == 200, stale


def test_login_rate_and_burst_are_validated(tmp_path):
    config = load_config({"HIE_HOME": str(tmp_path)})
    assert (config.login_rate, config.login_burst) == (float(cpu_cores()), 20)
    assert load_config({"HIE_HOME": str(tmp_path), "HIE_LOGIN_RATE": "0.5"}).login_rate == 0.5
    for name, bad in (("HIE_LOGIN_RATE", "0"), ("HIE_LOGIN_RATE", "-2"), ("HIE_LOGIN_RATE", "fast"),
                      ("HIE_LOGIN_RATE", "inf"), ("HIE_LOGIN_BURST", "0"), ("HIE_LOGIN_BURST", "1.5")):
        with pytest.raises(ConfigError, match=name):
            load_config({"HIE_HOME": str(tmp_path), name: bad})
