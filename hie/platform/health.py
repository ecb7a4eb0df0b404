"""Liveness, readiness (every database the platform needs) and Prometheus metrics."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.db import registry
from hie.platform.migrate import check_at_head
from hie.tenants.models import Tenant
from hie.tenants.services import resolved_url

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

REQUESTS = Counter("hie_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram("hie_http_request_seconds", "HTTP request latency", ["method", "endpoint"])


def _check(name: str, probe: Any) -> tuple[str, str | None]:
    try:
        probe()
        return name, None
    except Exception as exc:
        return name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """Every database answers at the newest schema, and Redis; a broken tenant is named so operators know which."""
    engines = registry()
    checks = [("platform", lambda: check_at_head("platform", engines.platform))]
    try:
        with Session(engines.platform) as session:
            tenants = session.scalars(select(Tenant).where(Tenant.active.is_(True)).order_by(Tenant.code)).all()
        for tenant in tenants:
            url = resolved_url(engines.config, tenant)
            checks.append((f"tenant:{tenant.code}", lambda url=url: check_at_head("tenant", engines.engine(url))))
    except Exception:
        log.warning("readyz: the tenant list could not be read", exc_info=True)
    client = current_app.extensions.get("hie.redis")
    if client is not None:
        checks.append(("redis", client.ping))
    with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
        results = dict(pool.map(lambda item: _check(*item), checks))
    failed = {name: error for name, error in results.items() if error}
    body = {
        "status": "ready" if not failed else "not ready",
        "checks": {name: ("ok" if error is None else "failed") for name, error in results.items()},
        "failed": failed,
    }
    return body, 200 if not failed else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition; aggregated over gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collector = CollectorRegistry()
        multiprocess.MultiProcessCollector(collector)
        return Response(generate_latest(collector), content_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Register the probes and time every request."""
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - g.started)
        return response
