"""gunicorn, embedded: several worker processes, each building its own app and connection pools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from hie.platform.config import load_config


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


def run_gunicorn(bind: str | None, workers: int | None) -> None:
    """Serve until stopped."""
    config = load_config()
    options = {
        "bind": bind or os.environ.get("HIE_BIND", "127.0.0.1:5000"),
        "workers": workers or config.workers or min(8, 2 * (os.cpu_count() or 1) + 1),
        "worker_class": "gthread",
        "threads": config.threads,
        "timeout": 60,
        "graceful_timeout": 30,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "child_exit": _child_exit,
    }
    _Gunicorn(options).run()
