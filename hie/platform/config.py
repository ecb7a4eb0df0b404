"""Configuration from the environment (and an optional .env), validated once at start-up."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

TENANT_PLACEHOLDER = "{tenant}"
_SUPPORTED_DB_SCHEMES = ("sqlite", "mysql", "mariadb")
PRIOR_RESULTS_MAX_DAYS = 365
LOGIN_MAX_DELAY_LIMIT = 24 * 3600
LOGIN_WINDOW_LIMIT = 30 * 24 * 3600


class ConfigError(Exception):
    """A setting is malformed; the message names the variable so an operator can fix it."""


def cpu_cores() -> int:
    """Cores this process may run on (a container's or taskset's share, not the host's), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    """Everything the platform needs to know about where it runs."""

    home: Path
    platform_db_url: str
    tenant_db_url_template: str
    secret_key: str
    redis_url: str | None = None
    keyring_path: Path | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 10
    db_connect_timeout: int = 3
    access_token_ttl: int = 900
    refresh_token_ttl: int = 8 * 3600
    login_free_failures: int = 5
    login_delay_seconds: int = 2
    login_max_delay_seconds: int = 900
    login_failure_window: int = 24 * 3600
    login_alert_failures: int = 20
    max_request_bytes: int = 2 * 1024 * 1024
    cache_ttl: int = 300
    proxy_hops: int = 0
    timezone: str = "Asia/Shanghai"
    workers: int | None = None
    threads: int = 4
    log_level: str = "INFO"
    prior_results_days: int = 30
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    login_concurrency: int = field(default_factory=cpu_cores)
    login_rate: float = field(default_factory=lambda: float(cpu_cores()))
    login_burst: int = 20
    audit_chain_interval: float = 0.2
    testing: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def keyring_file(self) -> Path:
        """The data-encryption key ring lives beside the data unless told otherwise."""
        return self.keyring_path or self.home / "keyring.json"

    def tenant_db_url(self, tenant_code: str) -> str:
        """Where a tenant's shard lives when the shard map gives no explicit URL."""
        return self.tenant_db_url_template.replace(TENANT_PLACEHOLDER, tenant_code)


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _positive_float(env: dict[str, str], name: str, default: float, zero: bool = False) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    in_range = value >= 0 if zero else value > 0
    if not in_range or value == float("inf"):
        raise ConfigError(f"{name} must be a {'non-negative' if zero else 'positive'} number, got {raw!r}")
    return value


def validate_db_url(name: str, raw: str) -> str:
    try:
        url = make_url(raw.replace(TENANT_PLACEHOLDER, "tenant"))
    except ArgumentError:
        raise ConfigError(f"{name} is not a database URL: {raw!r}") from None
    if url.get_backend_name() not in _SUPPORTED_DB_SCHEMES:
        raise ConfigError(f"{name} must be a sqlite:// or mysql+pymysql:// URL, got {raw!r}")
    return raw


def _redis_url(raw: str | None) -> str | None:
    if not raw:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise ConfigError(f"HIE_REDIS_URL must look like redis://host:6379/0, got {raw!r}")
    return raw


def _timezone(raw: str) -> str:
    """Clinical dates without a zone are in this zone (FHIR: the server's local time)."""
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"HIE_TIMEZONE must be an IANA time zone like Asia/Shanghai, got {raw!r}") from None
    return raw


def _prior_results_days(env: dict[str, str]) -> int:
    """How far back the exchange's $prior-results looks when the request does not say (mutual recognition)."""
    days = _int(env, "HIE_PRIOR_RESULTS_DAYS", 30, minimum=1)
    if days > PRIOR_RESULTS_MAX_DAYS:
        raise ConfigError(f"HIE_PRIOR_RESULTS_DAYS must be at most {PRIOR_RESULTS_MAX_DAYS}, got {days}")
    return days


def _login_throttle(env: dict[str, str]) -> dict[str, int]:
    """Backoff of failed logins per (username, source address) and the alert on sustained guessing."""
    values = {
        "login_free_failures": _int(env, "HIE_LOGIN_FREE_FAILURES", 5, minimum=1),
        "login_delay_seconds": _int(env, "HIE_LOGIN_DELAY_SECONDS", 2, minimum=1),
        "login_max_delay_seconds": _int(env, "HIE_LOGIN_MAX_DELAY_SECONDS", 900, minimum=1),
        "login_failure_window": _int(env, "HIE_LOGIN_FAILURE_WINDOW", 24 * 3600, minimum=60),
        "login_alert_failures": _int(env, "HIE_LOGIN_ALERT_FAILURES", 20, minimum=1),
    }
    if values["login_max_delay_seconds"] < values["login_delay_seconds"]:
        raise ConfigError(f"HIE_LOGIN_MAX_DELAY_SECONDS must be at least HIE_LOGIN_DELAY_SECONDS "
                          f"({values['login_delay_seconds']}), got {values['login_max_delay_seconds']}")
    for name, key, most in (("HIE_LOGIN_MAX_DELAY_SECONDS", "login_max_delay_seconds", LOGIN_MAX_DELAY_LIMIT),
                            ("HIE_LOGIN_FAILURE_WINDOW", "login_failure_window", LOGIN_WINDOW_LIMIT)):
        if values[key] > most:
            raise ConfigError(f"{name} must be at most {most}, got {values[key]}")
    return values


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"HIE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}")
    return level


def _writable_home(home: Path) -> Path:
    """HIE_HOME holds the secret key, the key ring, metrics and SQLite files: it must be a writable folder."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"HIE_HOME {home} cannot be created: {exc.strerror}") from None
    if not home.is_dir() or not os.access(home, os.W_OK | os.X_OK):
        raise ConfigError(f"HIE_HOME {home} is not a writable directory")
    return home


def _secret_key(env: dict[str, str], home: Path) -> str:
    """Unset: generate once and keep under HIE_HOME so every worker process shares it."""
    raw = env.get("HIE_SECRET_KEY")
    if raw:
        if len(raw) < 32:
            raise ConfigError("HIE_SECRET_KEY must be at least 32 characters")
        return raw
    path = home / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def load_config(environ: dict[str, str] | None = None, **overrides: object) -> Config:
    """Read HIE_* settings; values from the process environment win over .env."""
    env: dict[str, str] = {}
    if environ is None:
        dotenv_path = Path(os.environ.get("HIE_DOTENV", ".env"))
        if dotenv_path.is_file():
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ)
    else:
        env.update(environ)

    home = _writable_home(Path(env.get("HIE_HOME") or Path.cwd() / ".hie").expanduser().resolve())
    platform_url = validate_db_url(
        "HIE_PLATFORM_DB_URL", env.get("HIE_PLATFORM_DB_URL") or f"sqlite:///{home / 'platform.db'}"
    )
    template = env.get("HIE_TENANT_DB_URL_TEMPLATE") or f"sqlite:///{home / 'tenants' / 'tenant_{tenant}.db'}"
    if TENANT_PLACEHOLDER not in template:
        raise ConfigError(f"HIE_TENANT_DB_URL_TEMPLATE must contain {TENANT_PLACEHOLDER}, got {template!r}")
    validate_db_url("HIE_TENANT_DB_URL_TEMPLATE", template)
    keyring = env.get("HIE_KEYRING_FILE")
    values: dict[str, object] = dict(
        home=home,
        platform_db_url=platform_url,
        tenant_db_url_template=template,
        secret_key=_secret_key(env, home),
        redis_url=_redis_url(env.get("HIE_REDIS_URL")),
        keyring_path=Path(keyring).expanduser() if keyring else None,
        db_pool_size=_int(env, "HIE_DB_POOL_SIZE", 5, minimum=1),
        db_max_overflow=_int(env, "HIE_DB_MAX_OVERFLOW", 10),
        db_connect_timeout=_int(env, "HIE_DB_CONNECT_TIMEOUT", 3, minimum=1),
        access_token_ttl=_int(env, "HIE_ACCESS_TOKEN_TTL", 900, minimum=30),
        refresh_token_ttl=_int(env, "HIE_REFRESH_TOKEN_TTL", 8 * 3600, minimum=60),
        **_login_throttle(env),
        max_request_bytes=_int(env, "HIE_MAX_REQUEST_BYTES", 2 * 1024 * 1024, minimum=1024),
        cache_ttl=_int(env, "HIE_CACHE_TTL", 300, minimum=1),
        proxy_hops=_int(env, "HIE_PROXY_HOPS", 0),
        timezone=_timezone(env.get("HIE_TIMEZONE") or "Asia/Shanghai"),
        workers=_int(env, "HIE_WORKERS", 0, minimum=1) if env.get("HIE_WORKERS") else None,
        threads=_int(env, "HIE_THREADS", 4, minimum=1),
        login_concurrency=_int(env, "HIE_LOGIN_CONCURRENCY", cpu_cores(), minimum=1),
        login_rate=_positive_float(env, "HIE_LOGIN_RATE", float(cpu_cores())),
        login_burst=_int(env, "HIE_LOGIN_BURST", 20, minimum=1),
        audit_chain_interval=_positive_float(env, "HIE_AUDIT_CHAIN_INTERVAL", 0.2, zero=True),
        log_level=_log_level(env.get("HIE_LOG_LEVEL") or "INFO"),
        prior_results_days=_prior_results_days(env),
        extra={name: value for name, value in env.items() if name.startswith("HIE_")},  # modules read their own
    )
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


TENANT_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
