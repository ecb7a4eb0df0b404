"""A newcomer's first hour: `hie init` and `hie serve` say where they serve, what is wrong, and warn only when due."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from hie.platform.app import create_app
from hie.platform.audit.models import AuditChainHead
from hie.platform.audit.services import PendingEvent, append
from hie.platform.config import load_config
from hie.platform.serve import configured_bind

ROOT = Path(__file__).resolve().parents[1]
UNSIGNED_WARNING = "was unsigned (written before signing); signed it now"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The process environment without the test region's HIE_* settings: a fresh SQLite home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")}
    return {**env, "HIE_HOME": str(home), **extra}


def _hie(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hie.platform.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=env["HIE_HOME"])


@pytest.fixture
def listener() -> Iterator[str]:
    """An address some other server already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _wait_until_serving(address: str, server: subprocess.Popen, log: Path, sockets: tuple[Path, ...]) -> None:
    """Until (at most a minute) the server answers /healthz and gunicorn has made its control socket somewhere."""
    for _ in range(600):
        if server.poll() is not None:
            pytest.fail(log.read_text())
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=1) as response:
                up = response.status == 200
        except OSError:
            up = False
        if up and any(path.exists() for path in sockets):
            return
        time.sleep(0.1)
    pytest.fail("the server never answered /healthz with its control socket made")


@pytest.mark.parametrize("how", ["HIE_BIND", "--bind"])
def test_serve_on_an_address_in_use_names_it_and_how_to_choose_another(tmp_path, listener, how):
    env = _env(tmp_path, HIE_BIND=listener) if how == "HIE_BIND" else _env(tmp_path)
    args = ("serve",) if how == "HIE_BIND" else ("serve", "--bind", listener)
    result = _hie(env, *args)
    assert result.returncode == 1
    assert f"address {listener} is already in use" in result.stderr
    assert "HIE_BIND" in result.stderr and "--bind" in result.stderr
    assert "Can't connect" not in result.stderr and "Traceback" not in result.stderr


def test_serve_prints_the_address_it_serves_and_keeps_its_control_socket_in_hie_home(tmp_path):
    home, user_home = tmp_path / "hie", tmp_path / "user"
    user_home.mkdir()
    home.mkdir()
    address = _free_address()
    env = _env(home, HIE_BIND=address, HIE_WORKERS="1", HOME=str(user_home))
    env.pop("XDG_RUNTIME_DIR", None)
    assert _hie(env, "init").returncode == 0
    with (home / "serve.out").open("w") as out, (home / "serve.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "hie.platform.cli", "serve"], env=env, cwd=home,
                                  stdout=out, stderr=log)
    try:
        _wait_until_serving(address, server, home / "serve.log",
                            (home / "gunicorn.ctl", user_home / ".gunicorn" / "gunicorn.ctl"))
        assert f"http://{address}/docs" in (home / "serve.out").read_text()
        assert (home / "gunicorn.ctl").is_socket()
        assert not (user_home / ".gunicorn").exists()
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_hie_bind_in_dotenv_is_read_like_every_other_setting(tmp_path, monkeypatch):
    dotenv = tmp_path / "settings.env"
    dotenv.write_text("HIE_BIND=127.0.0.1:5123\n")
    monkeypatch.delenv("HIE_BIND", raising=False)
    monkeypatch.setenv("HIE_DOTENV", str(dotenv))
    assert configured_bind() == "127.0.0.1:5123"
    monkeypatch.setenv("HIE_BIND", "127.0.0.1:5124")
    assert configured_bind() == "127.0.0.1:5124"
    assert configured_bind("0.0.0.0:80") == "0.0.0.0:80"


def test_clean_install_signs_the_genesis_head_without_a_warning(tmp_path):
    env = _env(tmp_path)
    first = _hie(env, "init")
    assert first.returncode == 0, first.stderr
    assert "WARNING" not in first.stderr, first.stderr
    again = _hie(env, "db", "upgrade")
    assert again.returncode == 0 and "WARNING" not in again.stderr, again.stderr
    verified = _hie(env, "audit", "verify")
    assert verified.returncode == 0 and "audit chain intact: 0 events verified" in verified.stdout


def test_upgrade_from_a_head_an_older_release_left_unsigned_still_warns(tmp_path):
    env = _env(tmp_path)
    assert _hie(env, "init").returncode == 0
    app = create_app(load_config({"HIE_HOME": str(tmp_path)}))
    engine = app.extensions["hie.engines"].platform
    try:
        append(engine, app.extensions["hie.keyring"], [PendingEvent("login", "success"),
                                                       PendingEvent("login", "failure")])
        with engine.begin() as conn:
            conn.execute(update(AuditChainHead).values(signed_seq=None, signed_hash=None, signature=None))
    finally:
        app.extensions["hie.engines"].dispose()
    upgraded = _hie(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"audit chain head at event 2 {UNSIGNED_WARNING}" in upgraded.stderr
    verified = _hie(env, "audit", "verify")
    assert verified.returncode == 0 and "2 events verified" in verified.stdout


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    used = {name for path in (ROOT / "hie").rglob("*.py")
            for name in re.findall(r"[\"'](HIE_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8"))}
    assert "HIE_MAX_REQUEST_BYTES" in used
    assert sorted(name for name in used if f"`{name}`" not in readme) == []
