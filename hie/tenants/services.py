"""Regions, tenants and institutions: the shard map and provisioning of a tenant's database."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from hie.platform.config import TENANT_CODE_RE, Config, ConfigError, validate_db_url
from hie.platform.db import EngineRegistry, too_long
from hie.platform.migrate import UpgradeReport, create_database, database_exists, upgrade
from hie.platform.standards import is_region_code
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, Region, RegionLevel, Tenant

log = logging.getLogger(__name__)


class TenancyError(ValueError):
    """Bad input to a tenancy operation; the message is for the operator."""


class MissingDatabaseError(RuntimeError):
    """A recorded tenant's database is gone; upgrading must not recreate it empty."""


def tenant_db_url(session: Session, tenant_code: str) -> str:
    """The shard map: an explicit URL for the tenant, or the configured template."""
    from flask import current_app

    tenant = session.scalar(select(Tenant).where(Tenant.code == tenant_code))
    if tenant is None:
        raise TenancyError(f"no tenant {tenant_code!r}")
    return resolved_url(current_app.config["HIE"], tenant)


def resolved_url(config: Config, tenant: Tenant) -> str:
    """The URL of a tenant's shard."""
    return tenant.db_url or config.tenant_db_url(tenant.code)


def database_identity(url: str) -> tuple[str, ...]:
    """What makes two URLs the same database: the resolved file, or server, port and database name."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ":memory:"
        return ("sqlite", name if name == ":memory:" else str(Path(name).expanduser().resolve()))
    host = (parsed.host or "localhost").lower()
    host = "127.0.0.1" if host in ("localhost", "::1") else host
    return ("mysql", host, str(parsed.port or 3306), parsed.database or "")


def _refuse_shared_database(session: Session, config: Config, new: Tenant) -> None:
    """A shard belongs to one tenant: refuse a URL that is the platform's or another tenant's database."""
    mine = database_identity(resolved_url(config, new))
    if mine == database_identity(config.platform_db_url):
        raise TenancyError(f"tenant {new.code!r}: that database is the platform database")
    for other in session.scalars(select(Tenant).where(Tenant.code != new.code)):
        if database_identity(resolved_url(config, other)) == mine:
            raise TenancyError(f"tenant {new.code!r}: that database already holds tenant {other.code!r}")


def ensure_region(session: Session, code: str, name: str, level: RegionLevel, parent: str | None) -> Region:
    """Add a region if it is new; re-running with the same values changes nothing."""
    if not is_region_code(code):
        raise TenancyError(f"region code {code!r} is not a GB/T 2260 code (6, 9 or 12 digits)")
    region = session.get(Region, code)
    if region is None:
        if parent is not None and session.get(Region, parent) is None:
            raise TenancyError(f"parent region {parent!r} does not exist")
        region = Region(code=code, name=name, level=level, parent_code=parent)
        session.add(region)
        session.flush()
    return region


def add_tenant(
    session: Session, config: Config, code: str, name: str, region_code: str | None = None,
    db_url: str | None = None,
) -> Tenant:
    """Record a tenant in the shard map; provision() then creates and migrates its database."""
    if not TENANT_CODE_RE.fullmatch(code):
        raise TenancyError(f"tenant code {code!r} must be 2-32 lowercase letters, digits or _ , starting "
                           "with a letter")
    if not name.strip():
        raise TenancyError("tenant name must not be empty")
    if session.scalar(select(Tenant).where(Tenant.code == code)) is not None:
        raise TenancyError(f"tenant {code!r} already exists")
    if region_code is not None and session.get(Region, region_code) is None:
        raise TenancyError(f"region {region_code!r} does not exist")
    problem = too_long(Tenant.__table__, name=name.strip(), db_url=db_url)  # type: ignore[arg-type]
    if problem:
        raise TenancyError(problem)
    if db_url is not None:
        try:
            validate_db_url("--db-url", db_url)
        except ConfigError as exc:
            raise TenancyError(str(exc)) from None
    tenant = Tenant(code=code, name=name.strip(), region_code=region_code, db_url=db_url)
    _refuse_shared_database(session, config, tenant)
    session.add(tenant)
    session.flush()
    return tenant


def tenant_session(registry: EngineRegistry, tenant: Tenant) -> Session:
    """A new Session on a tenant's shard, outside any request (commands, the demo)."""
    return Session(registry.engine(resolved_url(registry.config, tenant)))


def provision(registry: EngineRegistry, tenant: Tenant) -> None:
    """Create the tenant's database and bring it to the newest tenant schema (a new tenant only)."""
    url = resolved_url(registry.config, tenant)
    create_database(url)
    upgrade("tenant", registry.engine(url))
    log.info("provisioned tenant %s", tenant.code)


def _upgrade_existing(registry: EngineRegistry, tenant: Tenant) -> None:
    """Migrate a tenant's database; a missing one is an error, never silently recreated empty."""
    url = resolved_url(registry.config, tenant)
    if not database_exists(url):
        raise MissingDatabaseError(f"the database of tenant {tenant.code!r} ({make_url(url).database}) does not "
                                   "exist; restore it from a backup")
    upgrade("tenant", registry.engine(url))


def upgrade_all(registry: EngineRegistry, create_platform: bool = True) -> UpgradeReport:
    """Platform first (created only for `hie init`), then every tenant; a missing or failing one is reported."""
    report = UpgradeReport()
    platform_url = registry.config.platform_db_url
    if create_platform:
        create_database(platform_url)
    elif not database_exists(platform_url):
        report.failed["platform"] = (f"the platform database ({make_url(platform_url).database}) does not exist; "
                                     "`hie init` creates it on a new installation, else restore it from a backup")
        return report
    upgrade("platform", registry.platform)
    report.upgraded.append("platform")
    with Session(registry.platform) as session:
        tenants = session.scalars(select(Tenant).order_by(Tenant.code)).all()
    for tenant in tenants:
        try:
            _upgrade_existing(registry, tenant)
            report.upgraded.append(tenant.code)
        except Exception as exc:
            log.error("tenant %s failed to migrate: %s", tenant.code, exc)
            report.failed[tenant.code] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return report


def _within(session: Session, code: str | None, root: str) -> bool:
    """Whether a region lies at or below root in the region tree."""
    seen: set[str] = set()
    while code is not None and code not in seen:
        if code == root:
            return True
        seen.add(code)
        code = session.scalar(select(Region.parent_code).where(Region.code == code))
    return False


def add_institution(
    session: Session, code: str, name: str, tenant_code: str, level: str,
    region_code: str | None = None, type_: str = InstitutionType.general_hospital.value,
) -> Institution:
    """Register a member institution under a tenant."""
    if not code or len(code) > 32 or not code.replace("-", "").replace("_", "").isalnum():
        raise TenancyError(f"institution code {code!r} must be 1-32 letters, digits, '-' or '_'")
    if not name.strip():
        raise TenancyError("institution name must not be empty")
    problem = too_long(Institution.__table__, name=name.strip(), region_code=region_code)  # type: ignore[arg-type]
    if problem:
        raise TenancyError(problem)
    try:
        level_value = InstitutionLevel(level)
    except ValueError:
        choices = ", ".join(lv.value for lv in InstitutionLevel)
        raise TenancyError(f"level {level!r} is not one of: {choices}") from None
    try:
        type_value = InstitutionType(type_)
    except ValueError:
        choices = ", ".join(t.value for t in InstitutionType)
        raise TenancyError(f"type {type_!r} is not one of: {choices}") from None
    tenant = session.scalar(select(Tenant).where(Tenant.code == tenant_code))
    if tenant is None:
        raise TenancyError(f"tenant {tenant_code!r} does not exist")
    if region_code is not None and session.get(Region, region_code) is None:
        raise TenancyError(f"region {region_code!r} does not exist")
    if region_code is not None and tenant.region_code is not None \
            and not _within(session, region_code, tenant.region_code):
        raise TenancyError(f"region {region_code!r} is not within tenant {tenant.code!r}'s region "
                           f"{tenant.region_code}")
    if session.scalar(select(Institution).where(Institution.code == code)) is not None:
        raise TenancyError(f"institution {code!r} already exists")
    institution = Institution(
        code=code, name=name.strip(), tenant_id=tenant.id, level=level_value, type=type_value,
        region_code=region_code,
    )
    session.add(institution)
    session.flush()
    return institution
