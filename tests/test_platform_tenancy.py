"""Shard map and directory input: one database per tenant, institutions inside their tenant's region."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from hie.platform.cli import main
from hie.tenants.models import Institution, Tenant
from tests.conftest import MYSQL_URL, hie_environ


@pytest.fixture
def hie(home, client):
    def run(*args: str):
        return CliRunner().invoke(main, list(args), env=hie_environ(home))
    return run


def _tenants(platform_db) -> int:
    platform_db.rollback()
    return platform_db.scalar(select(func.count()).select_from(Tenant))


def _variant(url: str) -> str:
    """The same database spelt differently."""
    parsed = make_url(url)
    if MYSQL_URL:
        return parsed.set(host="localhost" if parsed.host == "127.0.0.1" else "127.0.0.1",
                          port=parsed.port or 3306).render_as_string(hide_password=False)
    path = Path(parsed.database)
    return f"sqlite:///{path.parent / '..' / path.parent.name / path.name}"


def test_a_tenant_cannot_take_another_tenants_or_the_platforms_database(hie, app, platform_db):
    config = app.config["HIE"]
    before = _tenants(platform_db)
    for url, message in ((config.tenant_db_url("yaodu"), "already holds tenant 'yaodu'"),
                         (_variant(config.tenant_db_url("quwo")), "already holds tenant 'quwo'"),
                         (config.platform_db_url, "platform database")):
        result = hie("tenants", "add", "dupe", "--name", "重复", "--db-url", url)
        assert result.exit_code == 1, result.output
        assert message in result.output
    assert _tenants(platform_db) == before


def test_template_url_of_a_new_tenant_taken_by_an_explicit_one_is_refused(hie, app, platform_db):
    platform_db.add(Tenant(code="squatter", name="占用", db_url=app.config["HIE"].tenant_db_url("newcomer")))
    platform_db.commit()
    result = hie("tenants", "add", "newcomer", "--name", "新县")
    assert result.exit_code == 1 and "already holds tenant 'squatter'" in result.output
    assert platform_db.scalar(select(Tenant).where(Tenant.code == "newcomer")) is None


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "名" * 201, "--tenant", "yaodu", "--level", "village_clinic"], "name must be at most 200"),
    (["--name", "诊所", "--tenant", "yaodu", "--level", "village_clinic", "--region", "141021"],
     "not within tenant 'yaodu'"),
])
def test_institution_input_is_checked_in_the_service(hie, platform_db, args, message):
    result = hie("institutions", "add", "NEW-9", *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    platform_db.rollback()
    assert platform_db.scalar(select(Institution).where(Institution.code == "NEW-9")) is None


def test_overlong_tenant_name_is_refused(hie, platform_db):
    before = _tenants(platform_db)
    result = hie("tenants", "add", "longname", "--name", "县" * 101)
    assert result.exit_code == 1 and "name must be at most 100" in result.output
    assert _tenants(platform_db) == before


def test_api_refuses_an_institution_outside_the_tenants_region(client, as_user, platform_db):
    body = {"code": "YAODU-V8", "name": "外县卫生室", "tenant_code": "yaodu", "level": "village_clinic",
            "region_code": "141021"}
    response = client.post("/api/v1/institutions", json=body, headers=as_user("yaodu.admin"))
    assert response.status_code == 422 and "not within tenant 'yaodu'" in response.get_json()["detail"]
    assert platform_db.scalar(select(Institution).where(Institution.code == "YAODU-V8")) is None
    inside = client.post("/api/v1/institutions", json={**body, "region_code": "141002100"},
                         headers=as_user("yaodu.admin"))
    assert inside.status_code == 201, inside.get_json()
