"""Configuration: defaults to the embedded set-up; a malformed value is refused by name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hie.platform.config import ConfigError, load_config
from hie.platform.crypto import KeyRing


def test_defaults_are_the_embedded_platform(tmp_path):
    config = load_config({"HIE_HOME": str(tmp_path)})
    assert config.platform_db_url == f"sqlite:///{tmp_path / 'platform.db'}"
    assert config.tenant_db_url("yaodu") == f"sqlite:///{tmp_path / 'tenants' / 'tenant_yaodu.db'}"
    assert config.redis_url is None
    assert len(config.secret_key) >= 32
    assert load_config({"HIE_HOME": str(tmp_path)}).secret_key == config.secret_key


def test_mysql_template_and_redis_are_taken(tmp_path):
    config = load_config({
        "HIE_HOME": str(tmp_path), "HIE_TENANT_DB_URL_TEMPLATE": "mysql+pymysql://root@db1:3306/hie_{tenant}",
        "HIE_REDIS_URL": "redis://cache:6379/0", "HIE_DB_POOL_SIZE": "20", "HIE_SECRET_KEY": "s" * 40,
    })
    assert config.tenant_db_url("quwo") == "mysql+pymysql://root@db1:3306/hie_quwo"
    assert config.redis_url == "redis://cache:6379/0" and config.db_pool_size == 20
    assert config.secret_key == "s" * 40


@pytest.mark.parametrize(("name", "value"), [
    ("HIE_PLATFORM_DB_URL", "not a url"),
    ("HIE_PLATFORM_DB_URL", "postgresql://x/y"),
    ("HIE_TENANT_DB_URL_TEMPLATE", "mysql+pymysql://root@db/hie"),
    ("HIE_REDIS_URL", "http://cache:6379"),
    ("HIE_SECRET_KEY", "short"),
    ("HIE_DB_POOL_SIZE", "0"),
    ("HIE_ACCESS_TOKEN_TTL", "ten minutes"),
])
def test_malformed_value_is_refused_by_name(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({"HIE_HOME": str(tmp_path), name: value})


def test_dotenv_is_read_and_environment_wins(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"HIE_HOME={tmp_path}/from-dotenv\nHIE_DB_POOL_SIZE=7\n")
    monkeypatch.setenv("HIE_DOTENV", str(dotenv))
    monkeypatch.setenv("HIE_DB_POOL_SIZE", "9")
    monkeypatch.delenv("HIE_HOME", raising=False)
    config = load_config()
    assert str(config.home).endswith("from-dotenv") and config.db_pool_size == 9


def test_malformed_keyring_is_refused_by_name(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text('{"active": "k1", "keys": {"k1": "c2hvcnQ"}, "index_key": "", "audit_key": ""}')
    with pytest.raises(ConfigError, match="HIE_KEYRING_FILE"):
        KeyRing(path)


@pytest.mark.parametrize(("name", "value"), [
    ("HIE_WORKERS", "abc"), ("HIE_WORKERS", "0"), ("HIE_THREADS", "zero"), ("HIE_LOG_LEVEL", "LOUD"),
])
def test_server_settings_are_validated_by_name(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({"HIE_HOME": str(tmp_path), name: value})


def test_server_settings_are_taken(tmp_path):
    config = load_config({"HIE_HOME": str(tmp_path), "HIE_WORKERS": "3", "HIE_THREADS": "2",
                          "HIE_LOG_LEVEL": "warning"})
    assert (config.workers, config.threads, config.log_level) == (3, 2, "WARNING")


def test_unwritable_home_is_refused_by_name(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="HIE_HOME"):
        load_config({"HIE_HOME": str(blocker / "home")})



def _refusal_without_root(home: Path) -> str:
    """load_config's answer in a forked child that, if root, became `nobody` first: root ignores permission bits."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                load_config({"HIE_HOME": str(home)})
                answer = "accepted"
            except ConfigError as exc:
                answer = str(exc)
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def test_existing_home_the_process_may_not_write_is_refused_by_name():
    """Also as root, which is how CI runs: the check then runs as the unprivileged `nobody`."""
    parent = Path(tempfile.mkdtemp(prefix="hie-locked-"))
    locked = parent / "home"
    try:
        parent.chmod(0o755)
        locked.mkdir()
        locked.chmod(0o555)
        answer = _refusal_without_root(locked)
    finally:
        locked.chmod(0o755)
        shutil.rmtree(parent)
    assert answer == f"HIE_HOME {locked} is not a writable directory"


def test_mistyped_keyring_file_stops_an_initialised_platform(app, home):
    from click.testing import CliRunner

    from hie.platform.cli import main
    from tests.conftest import hie_environ

    typo = home / "keyrnig.json"
    result = CliRunner().invoke(main, ["tenants", "list"], env={**hie_environ(home), "HIE_KEYRING_FILE": str(typo)})
    assert result.exit_code == 1
    assert "HIE_KEYRING_FILE" in result.output and "Traceback" not in result.output
    assert not typo.exists()


def test_first_initialisation_creates_the_keyring(tmp_path):
    from hie.platform.app import create_app

    ring = tmp_path / "ring" / "keys.json"
    create_app(load_config({"HIE_HOME": str(tmp_path / "home"), "HIE_KEYRING_FILE": str(ring)}))
    assert ring.exists()
