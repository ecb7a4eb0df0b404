"""The `hie` command: set-up, serving, workers, migrations, audit and keys."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
from alembic import command
from flask import Flask
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from hie.platform.config import ConfigError, load_config


def make_app() -> Flask:
    """The app for this command's configuration; a malformed setting stops here with its name."""
    from hie.platform.app import create_app

    try:
        return create_app(load_config())
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@click.group()
def main() -> None:
    """Regional health information exchange."""


def _sign_audit_head(app: Flask) -> None:
    """Sign the chain head: quietly at genesis (a fresh database), with a warning for one an older release left."""
    from hie.platform.audit.models import AuditChainHead
    from hie.platform.audit.services import GENESIS_HASH, head_signature, sign_unsigned_head

    engine, ring = app.extensions["hie.engines"].platform, app.extensions["hie.keyring"]
    head = AuditChainHead.__table__
    with engine.begin() as conn:
        conn.execute(update(head).where(head.c.id == 1, head.c.signature.is_(None), head.c.last_seq == 0,
                                        head.c.last_hash == GENESIS_HASH)
                     .values(signed_seq=0, signed_hash=GENESIS_HASH, signature=head_signature(ring, 0, GENESIS_HASH)))
    sign_unsigned_head(engine, ring)


def _demo_hint() -> str:
    """How to try the demo, at the address `hie serve` will take."""
    from hie.platform.serve import configured_bind
    from hie.tenants.demo import DEMO_PASSWORD

    url = f"http://{configured_bind()}"
    return (f"\nOnce `hie serve` runs: Swagger UI {url}/docs; log in with\n"
            f"  curl -s -X POST {url}/api/v1/auth/token -H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"username\": \"yaodu.doctor\", \"password\": \"{DEMO_PASSWORD}\"}}'")


@main.command()
@click.option("--with-demo", is_flag=True, help="Build the demo region if there are no tenants yet.")
def init(with_demo: bool) -> None:
    """Create HIE_HOME, the key ring and every database, migrated to the newest schema."""
    from hie.tenants.demo import build_demo, demo_logins, demo_present
    from hie.tenants.models import Tenant
    from hie.tenants.services import upgrade_all

    app = make_app()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        report = upgrade_all(engines)
        _sign_audit_head(app)
        click.echo(f"home: {app.config['HIE'].home}")
        click.echo(f"upgraded: {', '.join(report.upgraded)}")
        with Session(engines.platform) as session:
            empty = session.scalar(select(Tenant.id).limit(1)) is None
            present = demo_present(session)
        if with_demo and empty:
            build_demo(app, echo=click.echo)
        elif with_demo and present:
            click.echo(demo_logins())
        if with_demo and (empty or present):
            click.echo(_demo_hint())
    _fail_on(report.failed)


def _fail_on(failed: dict[str, str]) -> None:
    for code, error in failed.items():
        click.echo(f"FAILED {code}: {error}", err=True)
    if failed:
        sys.exit(1)


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the platform database and then every tenant; broken tenants are reported, others go on."""
    from hie.tenants.services import upgrade_all

    app = make_app()
    with app.app_context():
        report = upgrade_all(app.extensions["hie.engines"], create_platform=False)
        if "platform" not in report.failed:
            _sign_audit_head(app)
    click.echo(f"upgraded: {', '.join(report.upgraded)}")
    _fail_on(report.failed)


@db.command("revision")
@click.option("--tree", type=click.Choice(["platform", "tenant"]), required=True)
@click.option("-m", "--message", required=True)
def db_revision(tree: str, message: str) -> None:
    """Autogenerate a migration by diffing the models against a scratch database at head."""
    from hie.platform.migrate import alembic_config, upgrade

    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        upgrade(tree, engine)
        command.revision(alembic_config(tree, engine), message=message, autogenerate=True)
        engine.dispose()


@main.command()
@click.option("--bind", default=None, help="host:port (default HIE_BIND or 127.0.0.1:5000)")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="gunicorn worker processes")
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the API with gunicorn (several worker processes), never Flask's development server."""
    from hie.platform.serve import (
        BindError,
        check_bind,
        configured_bind,
        prepare_multiprocess_metrics,
        run_gunicorn,
        served_at,
    )

    address = configured_bind(bind)
    try:
        check_bind(address)
        prepare_multiprocess_metrics()
    except BindError as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    make_app()
    click.echo(served_at(address))
    run_gunicorn(address, workers)


@main.command()
@click.option("--burst", is_flag=True, help="Process what is queued, then exit.")
@click.option("--sweep-interval", type=click.IntRange(1, 3600), default=30)
def worker(burst: bool, sweep_interval: int) -> None:
    """Run background jobs: RQ on Redis when HIE_REDIS_URL is set, the outbox sweep in any case."""
    from hie.platform.worker import run_worker

    run_worker(make_app(), burst, sweep_interval, echo=click.echo)


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; name every edited or deleted event."""
    from hie.platform.audit.services import verify
    from hie.tenants.services import shard_engines

    app = make_app()
    engines = app.extensions["hie.engines"]
    checked, problems = verify(engines.platform, app.extensions["hie.keyring"],
                               shard_engines(engines, app.config["HIE"]))
    if not problems:
        click.echo(f"audit chain intact: {checked} events verified")
        return
    for problem in problems:
        click.echo(f"TAMPERED at event {problem.seq}: {problem.problem}", err=True)
    click.echo(f"audit chain broken: {len(problems)} problem(s) in {checked} events", err=True)
    sys.exit(1)


@main.group()
def keys() -> None:
    """Data-encryption keys."""


@keys.command("rotate")
@click.option("--batch", type=click.IntRange(1, 10000), default=500)
def keys_rotate(batch: int) -> None:
    """Add a new active data key, then re-encrypt every sealed value, platform and tenants, while serving."""
    from hie.platform.keys import reencrypt
    from hie.tenants.models import Tenant
    from hie.tenants.services import resolved_url

    app = make_app()
    ring, engines = app.extensions["hie.keyring"], app.extensions["hie.engines"]
    kid = ring.add_data_key()
    click.echo(f"new active data key: {kid}")
    with Session(engines.platform) as session:
        tenants = session.scalars(select(Tenant).order_by(Tenant.code)).all()
    failed: dict[str, str] = {}
    targets = [("platform", None, engines.platform)]
    targets += [(t.code, t.code, engines.engine(resolved_url(engines.config, t))) for t in tenants]
    for name, tenant_code, engine in targets:
        try:
            count = reencrypt(engine, ring, tenant_code, batch)
            click.echo(f"{name}: {count} values re-encrypted")
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    _fail_on(failed)


def _register_module_commands() -> None:
    """The kernel's tenant commands, then every installed module's, in the order hie/modules.py lists them."""
    from hie.platform.modules import installed
    from hie.tenants.cli import register as register_tenants

    register_tenants(main)
    for module in installed():
        if module.commands is not None:
            module.commands(main)


_register_module_commands()

if __name__ == "__main__":
    main()
