"""gunicorn, embedded: several worker processes, each building its own app and connection pools."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.util import parse_address

from hie.platform.config import load_config
from hie.platform.logs import OneLineFormatter


class _Gunicorn(BaseApplication):
    """Runs create_app() in every worker after fork, so no pool is shared between processes."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from hie.platform.app import create_app

        return create_app()


class OneLineLogger(Logger):
    """gunicorn's logger writing through OneLineFormatter: a path or request line cannot forge a log line."""

    def setup(self, cfg: Any) -> None:
        """gunicorn's handlers and formats, each line with its control characters escaped."""
        super().setup(cfg)
        for log, fmt in ((self.error_log, self.error_fmt), (self.access_log, self.access_fmt)):
            for handler in log.handlers:
                handler.setFormatter(OneLineFormatter(fmt, self.datefmt))


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def prepare_multiprocess_metrics() -> None:
    """Must run before prometheus_client is imported: workers then share one metrics directory."""
    metrics_dir = Path(load_config().home) / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


# Path only (%(U)s, never the query string, which may carry identifiers) and the request id of the response.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'


DEFAULT_BIND = "127.0.0.1:5000"
_SOCKET_PATH_MAX = 100  # bytes: sun_path holds 108 on Linux, 104 on BSD and macOS


class BindError(Exception):
    """The address to serve on cannot be taken; the message names it and how to choose another."""


def configured_bind(bind: str | None = None) -> str:
    """--bind, else HIE_BIND from the environment or .env (as load_config reads every setting), else the default."""
    if bind:
        return bind
    dotenv_path = Path(os.environ.get("HIE_DOTENV", ".env"))
    from_file = dotenv_values(dotenv_path).get("HIE_BIND") if dotenv_path.is_file() else None
    return os.environ.get("HIE_BIND") or from_file or DEFAULT_BIND


def check_bind(bind: str) -> None:
    """Try the address before gunicorn does, whose "Can't connect" retries name no remedy."""
    if bind.startswith(("unix:", "fd://")):
        return
    advice = "choose another address with HIE_BIND=host:port or `hie serve --bind host:port`"
    try:
        host, port = parse_address(bind)
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (RuntimeError, OSError) as exc:
        raise BindError(f"cannot serve on {bind!r} ({exc}); {advice}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            reason = "is already in use (another server listens there)" if taken else f"cannot be bound: {exc.strerror}"
            raise BindError(f"address {bind} {reason}; {advice}") from None


def served_at(bind: str) -> str:
    """Where to point a browser or curl, for the start-up message."""
    if bind.startswith(("unix:", "fd://")):
        return f"Serving the API on {bind}"
    url = f"http://{bind}"
    return f"Serving the API at {url}: Swagger UI {url}/docs, spec {url}/openapi.json"


def _control_socket(home: Path) -> dict[str, Any]:
    """gunicorn's control socket beside this server's data: the default, ~/.gunicorn/gunicorn.ctl, is shared by
    every gunicorn of the user, and stopping one removed another's. A HIE_HOME too long for a socket path gets none."""
    path = home / "gunicorn.ctl"
    if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
        return {"control_socket_disable": True}
    return {"control_socket": str(path)}


def run_gunicorn(bind: str | None, workers: int | None) -> None:
    """Serve until stopped."""
    config = load_config()
    options = {
        "bind": configured_bind(bind),
        "workers": workers or config.workers or min(8, 2 * (os.cpu_count() or 1) + 1),
        "worker_class": "gthread",
        "threads": config.threads,
        "timeout": 60,
        "graceful_timeout": 30,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "logger_class": OneLineLogger,
        "child_exit": _child_exit,
        **_control_socket(config.home),
    }
    _Gunicorn(options).run()
