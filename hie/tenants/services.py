"""Regions, tenants and institutions: the shard map and provisioning of a tenant's database."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
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


def shard_engines(engines: EngineRegistry, config: Config) -> dict[str, Engine]:
    """Every active tenant's shard engine, for work that visits them all (audit chaining, verification)."""
    with Session(engines.platform) as session:
        tenants = session.scalars(select(Tenant).where(Tenant.active.is_(True)).order_by(Tenant.code)).all()
        return {tenant.code: engines.engine(resolved_url(config, tenant)) for tenant in tenants}


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


REGION_LEVEL_ALIASES = {"district": RegionLevel.county, "county-level city": RegionLevel.county}
"""Kinds in GB/T 2260 lists (the shipped linfen_counties.csv says district and county-level city) as tree levels."""


class RegionExists(TenancyError):
    """The region code is taken (409 in the API)."""


def _region_code_problem(code: str) -> str | None:
    if not (code.isascii() and is_region_code(code)):
        return f"region code {code!r} is not a GB/T 2260 code (6, 9 or 12 digits)"
    return None


def level_of_code(code: str) -> RegionLevel:
    """The level a GB/T 2260 code names: PP0000 province, PPCC00 city, PPCCDD county, 9 digits township, 12 village."""
    if len(code) == 12:
        return RegionLevel.village
    if len(code) == 9:
        return RegionLevel.township
    if code.endswith("0000"):
        return RegionLevel.province
    return RegionLevel.city if code.endswith("00") else RegionLevel.county


def parent_of_code(code: str) -> str | None:
    """The region a GB/T 2260 code lies in by its digits: the code one level up, None for a province."""
    if len(code) > 6:
        return code[:-3]
    if code.endswith("0000"):
        return None
    return code[:2] + "0000" if code.endswith("00") else code[:4] + "00"


def _region_level(raw: str | None, code: str) -> RegionLevel:
    if not raw:
        return level_of_code(code)
    text = raw.strip().lower()
    if text in REGION_LEVEL_ALIASES:
        return REGION_LEVEL_ALIASES[text]
    try:
        return RegionLevel(text)
    except ValueError:
        choices = ", ".join([*(lv.value for lv in RegionLevel), *REGION_LEVEL_ALIASES])
        raise TenancyError(f"level {raw!r} is not one of: {choices}") from None


def _region_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise TenancyError("name must not be empty")
    problem = too_long(Region.__table__, name=name)  # type: ignore[arg-type]
    if problem:
        raise TenancyError(problem)
    return name


def add_region(session: Session, code: str, name: str, level: str | None = None,
               parent_code: str | None = None) -> Region:
    """A new region under an existing parent; the level defaults to what the code says."""
    problem = _region_code_problem(code)
    if problem:
        raise TenancyError(problem)
    region = Region(code=code, name=_region_name(name), level=_region_level(level, code), parent_code=parent_code)
    if parent_code is not None and (parent_code == code or session.get(Region, parent_code) is None):
        raise TenancyError(f"parent_code: region {parent_code!r} does not exist")
    if session.get(Region, code) is not None:
        raise RegionExists(f"region {code!r} already exists")
    session.add(region)
    session.flush()
    return region


def rename_region(region: Region, name: str) -> Region:
    """Correct or update a region's name (codes never change: they are what everything refers to)."""
    region.name = _region_name(name)
    return region


@dataclass
class RegionImport:
    """What `hie regions import` did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class _RegionRow:
    line: int
    code: str
    name: str
    level: RegionLevel
    parent: str | None
    explicit_parent: bool


def _read_region_rows(raw: bytes) -> tuple[list[_RegionRow], list[str]]:
    """Parse a CSV of code, name and optional parent_code and level (or kind); problems carry line numbers."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return [], [f"line {line}: not UTF-8 text"]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [name for name in ("code", "name") if name not in header]
    if missing:
        return [], [f"line 1: the header must name the columns code and name (missing: {', '.join(missing)})"]
    parent_column = "parent_code" if "parent_code" in header else "parent" if "parent" in header else None
    level_column = "level" if "level" in header else "kind" if "kind" in header else None
    rows: list[_RegionRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        for record in reader:
            line = reader.line_num
            if None in record or any(value is None for value in record.values()):
                problems.append(f"line {line}: expected {len(header)} fields")
                continue
            code = record["code"].strip()
            parent = (record[parent_column] or "").strip() if parent_column else ""
            try:
                problem = _region_code_problem(code) or (parent and _region_code_problem(parent))
                if problem:
                    raise TenancyError(problem)
                if code in seen:
                    raise TenancyError(f"region {code!r} is already on line {seen[code]}")
                rows.append(_RegionRow(line, code, _region_name(record["name"]),
                                       _region_level(record[level_column] if level_column else None, code),
                                       parent or parent_of_code(code), bool(parent)))
                seen[code] = line
            except TenancyError as exc:
                problems.append(f"line {line}: {exc}")
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: {exc}")
    return rows, problems


def _settle_parent(row: _RegionRow, existing: dict[str, Region], in_file: set[str]) -> str | None:
    """Fix the row's parent: an explicit one must exist; one read from the code is dropped above the county."""
    if row.parent is None or row.parent in existing or row.parent in in_file:
        current = existing.get(row.code)
        if current is not None and row.explicit_parent and current.parent_code != row.parent:
            return (f"line {row.line}: region {row.code} already lies under {current.parent_code or 'no region'}; "
                    "an import does not move regions")
        return None
    if row.explicit_parent or len(row.code) > 6:
        return f"line {row.line}: parent region {row.parent!r} is neither in the file nor in the database"
    row.parent = None
    return None


def import_regions(session: Session, raw: bytes) -> RegionImport:
    """Add or update the regions of a GB/T 2260 CSV, parents first; any problem imports nothing."""
    rows, problems = _read_region_rows(raw)
    existing = {region.code: region for region in session.scalars(select(Region))}
    in_file = {row.code for row in rows}
    problems += [p for p in (_settle_parent(row, existing, in_file) for row in rows) if p]
    ordered: list[_RegionRow] = []
    placed = set(existing)
    pending = [row for row in rows if row.code not in existing]
    while pending and not problems:
        ready = [row for row in pending if row.parent is None or row.parent in placed]
        if not ready:
            problems += [f"line {row.line}: region {row.code}'s parents form a cycle" for row in pending]
            break
        ordered += ready
        placed.update(row.code for row in ready)
        pending = [row for row in pending if row.code not in placed]
    if problems:
        raise TenancyError("nothing imported:\n" + "\n".join(problems))
    report = RegionImport(added=len(ordered))
    for row in rows:
        current = existing.get(row.code)
        if current is None:
            continue
        if (current.name, current.level) == (row.name, row.level):
            report.unchanged += 1
        else:
            current.name, current.level = row.name, row.level
            report.updated += 1
    session.add_all(Region(code=row.code, name=row.name, level=row.level, parent_code=row.parent) for row in ordered)
    session.flush()
    return report


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
