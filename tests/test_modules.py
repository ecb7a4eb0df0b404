"""One list of modules (hie/modules.py): the kernel imports none of them, and each is wired from its declaration."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import inspect as db_inspect
from sqlalchemy import select
from sqlalchemy.orm import Session

import hie.modules
from hie.platform.access import resident_person
from hie.platform.app import create_app
from hie.platform.auth.accounts import AccountError
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.cli import main
from hie.platform.config import load_config
from hie.platform.db import PlatformBase, TenantBase
from hie.platform.modules import Module, installed
from hie.tenants.models import Institution
from tests.conftest import MYSQL_URL, add_resident, hie_environ, new_patient, shard_engine

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ("hie/platform", "hie/tenants")
FAKE = "tests.fake_module"


def _imported_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every module a source file imports, statically or by importlib with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def test_the_kernel_imports_no_installed_module() -> None:
    modules = hie.modules.INSTALLED_MODULES
    offences = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                for folder in KERNEL for path in sorted((ROOT / folder).rglob("*.py"))
                for line, name in _imported_names(ast.parse(path.read_text(encoding="utf-8")))
                if any(name == module or name.startswith(f"{module}.") for module in modules)]
    assert not offences, offences


def test_the_kernel_check_sees_an_import_of_a_module() -> None:
    source = "def f():\n    from hie.empi.services import person_of_patient\n    import hie.exchange.store\n"
    assert [name for _, name in _imported_names(ast.parse(source))] == [
        "hie.empi.services.person_of_patient", "hie.exchange.store"]


@pytest.mark.parametrize("name", hie.modules.INSTALLED_MODULES)
def test_every_installed_module_declares_itself(name: str) -> None:
    module = importlib.import_module(f"{name}.module").module
    assert isinstance(module, Module) and module.name == name
    assert module in installed()


@pytest.mark.parametrize("name", hie.modules.INSTALLED_MODULES)
def test_every_installed_modules_blueprints_are_registered(app: Flask, name: str) -> None:
    module = importlib.import_module(f"{name}.module").module
    for blueprint in (*module.api_blueprints(), *module.blueprints()):
        assert app.blueprints.get(blueprint.name) is blueprint, f"{name}: {blueprint.name} not registered"
    documented = {tag["name"] for tag in app.extensions["hie.api"].spec.to_dict()["tags"]}
    assert {blueprint.name for blueprint in module.api_blueprints()} <= documented, "REST routes are in the OpenAPI"


def test_fhir_match_comes_before_the_exchange_catch_all(app: Flask) -> None:
    order = list(app.blueprints)
    assert order.index("fhir_empi") < order.index("fhir")


def _tables_of(path: str, base: type) -> set[str]:
    """The tables of one database a model file defines."""
    source = importlib.import_module(path)
    return {cls.__tablename__ for _, cls in inspect.getmembers(source, inspect.isclass)
            if cls.__module__ == path and issubclass(cls, base) and hasattr(cls, "__table__")}


@pytest.mark.parametrize("name", hie.modules.INSTALLED_MODULES)
def test_every_installed_modules_tables_are_migrated(app: Flask, name: str) -> None:
    module = importlib.import_module(f"{name}.module").module
    platform = set(db_inspect(app.extensions["hie.engines"].platform).get_table_names())
    shard = set(db_inspect(shard_engine(app, "yaodu")).get_table_names())
    platform_tables = {t for path in module.platform_models for t in _tables_of(path, PlatformBase)}
    tenant_tables = {t for path in module.tenant_models for t in _tables_of(path, TenantBase)}
    assert platform_tables or tenant_tables, f"{name} declares no tables"
    assert platform_tables <= set(PlatformBase.metadata.tables) & platform
    assert tenant_tables <= set(TenantBase.metadata.tables) & shard


@pytest.mark.parametrize("name", hie.modules.INSTALLED_MODULES)
def test_every_installed_modules_commands_are_in_hie_help(name: str) -> None:
    module = importlib.import_module(f"{name}.module").module
    if module.commands is None:
        return
    declared = click.Group()
    module.commands(declared)
    shown = CliRunner().invoke(main, ["--help"]).output
    for command in declared.commands:
        assert main.commands[command] is declared.commands[command] and f"  {command} " in shown


def test_a_fresh_process_with_an_app_has_every_handler_and_sealed_column(tmp_path: Path) -> None:
    """Worker processes build an app: they must know every module's outbox handlers and sealed columns."""
    script = ("from hie.platform.app import create_app; from hie.platform.config import load_config;"
              "from hie.platform.jobs.services import _HANDLERS; from hie.platform.keys import SEALED_COLUMNS;"
              "create_app(load_config());"
              "print(sorted({n.rsplit('.', 1)[0] for hs in _HANDLERS.values() for n, _ in hs}));"
              "print(sorted({s.table.name + '.' + s.column for s in SEALED_COLUMNS}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")} | {"HIE_SECRET_KEY": "t" * 40}
    env["HIE_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    handlers, sealed = result.stdout.splitlines()
    for path in ("hie.patients.stats", "hie.exchange.tasks", "hie.empi.stewardship", "hie.platform.care"):
        assert path in handlers
    for column in ("patients.name_enc", "empi_records.demographics_enc"):
        assert column in sealed


@pytest.fixture
def listing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[tuple[str, ...]], None]]:
    """listing(names) makes hie/modules.py list these modules for the rest of the test, as an author would edit it."""

    def install(names: tuple[str, ...]) -> None:
        monkeypatch.setattr(hie.modules, "INSTALLED_MODULES", names)
        installed.cache_clear()

    yield install
    monkeypatch.undo()
    installed.cache_clear()


def _resident_of(platform_db: Session, patient_id: str) -> Identity:
    """The identity of a resident account standing for a yaodu county hospital record."""
    clinic = platform_db.scalars(select(Institution).where(Institution.code == "YAODU-CH")).one()
    return Identity(user_id=0, username="resident.wang", roles=frozenset({Role.resident}), institution_id=clinic.id,
                    institution_code=clinic.code, tenant_id=clinic.tenant_id, tenant_code="yaodu", region_code=None,
                    session_id="s", patient_id=patient_id)


def test_without_an_empi_a_resident_stands_for_no_master_person(client, as_user, platform_db, listing) -> None:
    patient = new_patient(client, as_user("yaodu.doctor"))
    resident = _resident_of(platform_db, patient["id"])
    assert patient["master_person_id"] and resident_person(platform_db, resident) == patient["master_person_id"]
    listing(())
    assert resident_person(platform_db, resident) is None


def test_without_a_patient_register_no_resident_account_is_made(app, client, as_user, platform_db, listing) -> None:
    patient = new_patient(client, as_user("yaodu.doctor"))
    listing(("hie.empi", "hie.exchange"))
    with pytest.raises(AccountError, match="no installed module keeps a patient register"):
        add_resident(app, "YAODU-CH", patient["id"])
    assert platform_db.scalar(select(User.id).where(User.username == "resident.wang")) is None
    listing(hie.modules.INSTALLED_MODULES + ("hie.patients",))
    add_resident(app, "YAODU-CH", patient["id"])
    platform_db.rollback()  # a fresh snapshot: MySQL reads repeatably within one transaction
    assert platform_db.scalar(select(User.id).where(User.username == "resident.wang")) is not None


def test_a_module_added_to_the_list_is_served_and_documented(home: Path, app: Flask, listing) -> None:
    listing((*hie.modules.INSTALLED_MODULES, FAKE))
    extra = create_app(load_config(hie_environ(home), testing=True))
    try:
        client = extra.test_client()
        assert client.get("/api/v1/fake/ping").get_json() == {"pong": True}
        assert client.get("/fake/ping").get_json() == {"pong": True}
        assert "/api/v1/fake/ping" in client.get("/openapi.json").get_json()["paths"]
        assert client.get("/fhir/metadata").status_code == 200, "the installed modules still answer"
    finally:
        extra.extensions["hie.engines"].dispose()


def _hie_with(modules: tuple[str, ...], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`hie` in a new process whose hie/modules.py lists these modules."""
    script = (f"import hie.modules; hie.modules.INSTALLED_MODULES = {modules!r};"
              "from hie.platform.cli import main; main()")
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_module_added_to_the_list_has_its_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")}
    shown = _hie_with((*hie.modules.INSTALLED_MODULES, FAKE), env, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "fake-hello" in shown.stdout and "empi" in shown.stdout
    ran = _hie_with((*hie.modules.INSTALLED_MODULES, FAKE), env, "fake-hello")
    assert ran.stdout == "hello from the fake module\n"


@pytest.mark.skipif(bool(MYSQL_URL), reason="builds a demo region of SQLite files")
def test_the_demo_runs_each_listed_modules_step_and_the_kernel_stands_alone(tmp_path: Path) -> None:
    """With only the fake module listed, `hie init --with-demo` builds the region, its users and the fake step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")} | {"HIE_HOME": str(tmp_path)}
    result = _hie_with((FAKE,), env, "init", "--with-demo")
    assert result.returncode == 0, result.stderr
    assert "fake module demo step ran in hie" in result.stdout
    assert "fake module login line" in result.stdout and "yaodu.doctor" in result.stdout
    assert "demo records" not in result.stdout and "yaodu.resident" not in result.stdout
    again = _hie_with((FAKE,), env, "init", "--with-demo")
    assert again.returncode == 0, again.stderr
    assert "fake module login line" in again.stdout, "a rerun prints the logins, with the module's lines"
