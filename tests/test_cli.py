"""The `hie` command: each subcommand works, and bad input is refused clearly with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from hie.platform.auth.models import User
from hie.platform.cli import main
from hie.platform.migrate import database_exists
from hie.tenants.models import Institution, Tenant
from tests.conftest import MYSQL_PREFIX, MYSQL_URL, PASSWORD, hie_environ, login


@pytest.fixture
def hie(home, client):
    def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
        return CliRunner().invoke(main, list(args), input=stdin, env={**hie_environ(home), **(env or {})})
    return run


def _tenant_count(platform_db) -> int:
    platform_db.rollback()
    return platform_db.scalar(select(func.count()).select_from(Tenant))


@pytest.fixture
def drop_tenant_db(app):
    yield
    if MYSQL_URL:
        from sqlalchemy import create_engine

        engine = create_engine(MYSQL_URL)
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{MYSQL_PREFIX}xiangfen`"))
        engine.dispose()


def test_tenants_add_provisions_a_migrated_database(hie, app, platform_db, drop_tenant_db):
    result = hie("tenants", "add", "xiangfen", "--name", "襄汾县")
    assert result.exit_code == 0, result.output
    url = app.config["HIE"].tenant_db_url("xiangfen")
    engine = app.extensions["hie.engines"].engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM patients")).scalar() == 0
    listing = hie("tenants", "list")
    assert "xiangfen\t襄汾县" in listing.output


@pytest.mark.parametrize(("args", "message"), [
    (["tenants", "add", "Bad-Code", "--name", "x"], "tenant code 'Bad-Code'"),
    (["tenants", "add", "yaodu", "--name", "again"], "already exists"),
    (["tenants", "add", "newone", "--name", "x", "--region", "999999"], "region '999999' does not exist"),
    (["tenants", "add", "newone", "--name", "x", "--db-url", "postgres://x/y"], "--db-url"),
    (["tenants", "add", "newone", "--name", "  "], "name must not be empty"),
])
def test_tenants_add_refuses_bad_input_and_changes_nothing(hie, platform_db, args, message):
    before = _tenant_count(platform_db)
    result = hie(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert _tenant_count(platform_db) == before


def test_tenant_whose_database_cannot_be_created_is_not_recorded(hie, platform_db, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    url = "mysql+pymysql://root@127.0.0.1:1/hie_nowhere" if MYSQL_URL else f"sqlite:///{blocker}/x/t.db"
    before = _tenant_count(platform_db)
    result = hie("tenants", "add", "broken", "--name", "坏的", "--db-url", url)
    assert result.exit_code == 1
    assert "could not create the database of tenant 'broken'" in result.output
    assert _tenant_count(platform_db) == before


def test_institutions_add(hie, platform_db):
    result = hie("institutions", "add", "YAODU-T2", "--name", "乔李镇卫生院", "--tenant", "yaodu",
                 "--level", "township_health_centre", "--region", "141002100", "--type", "primary_care")
    assert result.exit_code == 0, result.output
    row = platform_db.scalar(select(Institution).where(Institution.code == "YAODU-T2"))
    assert row.tenant.code == "yaodu" and row.region_code == "141002100"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--tenant", "nowhere", "--level", "village_clinic"], 1, "tenant 'nowhere' does not exist"),
    (["--tenant", "yaodu", "--level", "palace"], 2, "palace"),
    (["--tenant", "yaodu", "--level", "village_clinic", "--region", "12"], 1, "region '12' does not exist"),
    (["--level", "village_clinic"], 2, "--tenant"),
])
def test_institutions_add_refuses_bad_input(hie, platform_db, args, code, message):
    result = hie("institutions", "add", "NEW-1", "--name", "新诊所", *args)
    assert result.exit_code == code
    assert message in result.output
    assert platform_db.scalar(select(Institution).where(Institution.code == "NEW-1")) is None


def test_users_add_reads_password_from_stdin_and_can_log_in(hie, client):
    result = hie("users", "add", "new.doctor", "--role", "clinician", "--role", "family_doctor",
                 "--institution", "YAODU-T1", "--password-stdin", "--title", "主治医师", stdin="Fresh-pass-2026\n")
    assert result.exit_code == 0, result.output
    me = client.get("/api/v1/auth/me", headers=login(client, "new.doctor", "Fresh-pass-2026")).get_json()
    assert me["roles"] == ["clinician", "family_doctor"] and me["institution_code"] == "YAODU-T1"


@pytest.mark.parametrize(("args", "stdin", "code", "message"), [
    (["--role", "clinician", "--institution", "YAODU-CH"], None, 2, "--password-stdin"),
    (["--role", "wizard", "--institution", "YAODU-CH", "--password-stdin"], "Fresh-pass-2026\n", 1, "wizard"),
    (["--role", "clinician", "--institution", "NOPE", "--password-stdin"], "Fresh-pass-2026\n", 1, "NOPE"),
    (["--role", "clinician", "--institution", "YAODU-CH", "--password-stdin"], "short\n", 1, "password"),
    (["--role", "resident", "--institution", "YAODU-CH", "--password-stdin"], "Fresh-pass-2026\n", 1,
     "resident"),
])
def test_users_add_refuses_bad_input(hie, platform_db, args, stdin, code, message):
    result = hie("users", "add", "bad.user", *args, stdin=stdin)
    assert result.exit_code == code
    assert message in result.output
    assert platform_db.scalar(select(User).where(User.username == "bad.user")) is None


def test_existing_username_is_refused(hie):
    result = hie("users", "add", "yaodu.doctor", "--role", "clinician", "--institution", "YAODU-CH",
                 "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 1 and "taken" in result.output


def test_db_upgrade_reports_a_broken_tenant_and_upgrades_the_rest(hie, app, platform_db, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = "mysql+pymysql://root@127.0.0.1:1/hie_down" if MYSQL_URL else f"sqlite:///{blocker}/t.db"
    platform_db.add(Tenant(code="downtown", name="宕机县", db_url=url))
    platform_db.commit()
    result = hie("db", "upgrade")
    assert result.exit_code == 1
    assert "FAILED downtown" in result.output
    assert "upgraded: platform, downtown" not in result.output
    for code in ("linfen", "quwo", "yaodu"):
        assert code in result.output.split("upgraded:")[1].splitlines()[0]


def test_db_upgrade_reports_a_lost_tenant_database_and_does_not_recreate_it(hie, app, drop_tenant_db):
    assert hie("tenants", "add", "xiangfen", "--name", "襄汾县").exit_code == 0
    url = app.config["HIE"].tenant_db_url("xiangfen")
    if MYSQL_URL:
        from sqlalchemy import create_engine

        server = create_engine(MYSQL_URL)
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE `{MYSQL_PREFIX}xiangfen`"))
        server.dispose()
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(make_url(url).database + suffix).unlink(missing_ok=True)
    assert not database_exists(url)
    result = hie("db", "upgrade")
    assert result.exit_code == 1
    assert f"FAILED xiangfen: MissingDatabaseError: the database of tenant 'xiangfen' ({make_url(url).database}) " \
           "does not exist" in result.output
    assert not database_exists(url)
    upgraded = result.output.split("upgraded:")[1].splitlines()[0]
    assert "xiangfen" not in upgraded
    for code in ("platform", "linfen", "quwo", "yaodu"):
        assert code in upgraded


def test_db_upgrade_does_not_create_a_missing_platform_database(hie, tmp_path):
    url = f"{MYSQL_URL}/{MYSQL_PREFIX}gone" if MYSQL_URL else f"sqlite:///{tmp_path / 'gone.db'}"
    result = hie("db", "upgrade", env={"HIE_HOME": str(tmp_path), "HIE_PLATFORM_DB_URL": url})
    assert result.exit_code == 1
    assert f"FAILED platform: the platform database ({make_url(url).database}) does not exist" in result.output
    assert not database_exists(url)


def test_malformed_configuration_stops_with_the_variable_named(hie):
    for variable, value in (("HIE_REDIS_URL", "localhost:6379"), ("HIE_DB_POOL_SIZE", "many"),
                            ("HIE_TENANT_DB_URL_TEMPLATE", "sqlite:///x.db"), ("HIE_PLATFORM_DB_URL", "nonsense")):
        result = hie("tenants", "list", env={variable: value})
        assert result.exit_code == 1
        assert variable in result.output


def test_demo_builds_linfen_and_rerunning_changes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")}
    env["HIE_HOME"] = str(tmp_path / "demo")
    hie_bin = [sys.executable, "-m", "hie.platform.cli"]
    first = subprocess.run([*hie_bin, "init", "--with-demo"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "yaodu.doctor" in first.stdout and "Linfen-Demo-2026" in first.stdout
    import sqlite3

    def snapshot():
        with sqlite3.connect(tmp_path / "demo" / "platform.db") as conn:
            return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("regions", "tenants", "institutions", "users")}

    counts = snapshot()
    assert counts["tenants"] == 18
    with sqlite3.connect(tmp_path / "demo" / "platform.db") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM tenants")}
        levels = {row[0] for row in conn.execute("SELECT DISTINCT level FROM institutions")}
    assert {"尧都区", "霍州市", "侯马市", "曲沃县"} <= names
    assert {"tertiary_hospital", "secondary_hospital", "township_health_centre", "village_clinic"} <= levels
    again = subprocess.run([*hie_bin, "demo"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert snapshot() == counts
    rerun = subprocess.run([*hie_bin, "init", "--with-demo"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "yaodu.doctor" in rerun.stdout and "yaodu.resident" in rerun.stdout, "make run prints the logins again"
    assert snapshot() == counts
