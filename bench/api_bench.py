"""Cost of the stack: an authenticated, tenant-routed, audited read against the same read without them.

Prints requests per second and p50/p99 latency for both, and their ratio, on SQLite and (when
reachable) on MariaDB, optionally with the Redis identity cache. In-process WSGI calls, one thread,
so the figures are the application's own cost without network or server noise.

    .venv/bin/python bench/api_bench.py [--requests 2000] [--mysql mysql+pymysql://root@127.0.0.1:3306]
                                        [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flask import Flask, jsonify
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hie.empi.services import person_of_local  # noqa: E402
from hie.patients.models import SEALED_FIELDS, Patient  # noqa: E402
from hie.patients.sealing import unseal  # noqa: E402
from hie.platform.app import create_app  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402
from hie.tenants import services  # noqa: E402
from hie.tenants.models import InstitutionLevel, RegionLevel  # noqa: E402

PASSWORD = "Bench-pass-2026"


BENCH_DATABASES = ("hie_bench_platform", "hie_bench_county")


def _drop_databases(mysql: str) -> None:
    engine = create_engine(mysql)
    with engine.begin() as conn:
        for name in BENCH_DATABASES:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


def _build(home: Path, mysql: str | None, redis_url: str | None) -> tuple[Flask, str]:
    env = {"HIE_HOME": str(home), "HIE_SECRET_KEY": "b" * 40}
    if mysql:
        _drop_databases(mysql)
        env["HIE_PLATFORM_DB_URL"] = f"{mysql}/hie_bench_platform"
        env["HIE_TENANT_DB_URL_TEMPLATE"] = f"{mysql}/hie_bench_{{tenant}}"
    if redis_url:
        env["HIE_REDIS_URL"] = redis_url
    app = create_app(load_config(env))
    _add_bare_route(app, app.config["HIE"].tenant_db_url("county"))
    engines = app.extensions["hie.engines"]
    with app.app_context():
        services.upgrade_all(engines)
        with session_scope(engines.platform) as session:
            services.ensure_region(session, "141002", "尧都区", RegionLevel.county, None)
            tenant = services.add_tenant(session, app.config["HIE"], "county", "尧都区", "141002")
            services.provision(engines, tenant)
            services.add_institution(
                session, "CH", "尧都区人民医院", "county", InstitutionLevel.secondary_hospital.value
            )
            accounts.add_user(session, "doctor", [Role.clinician], "CH", PASSWORD)
    client = app.test_client()
    token = client.post("/api/v1/auth/token", json={"username": "doctor", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    created = client.post("/api/v1/patients", headers=headers, json={
        "mrn": "B-1", "name": "王秀英", "sex": "F", "phone": "13935712345", "address": "尧都区屯里镇东关村12号",
    }).get_json()
    return app, created["id"]


def _add_bare_route(app: Flask, shard_url: str) -> None:
    """The same read and the same body (master person included) with no token check, a fixed shard, no audit."""
    ring, cache, engines = app.extensions["hie.keyring"], app.extensions["hie.cache"], app.extensions["hie.engines"]

    def bare(patient_id: str):  # noqa: ANN202
        with Session(engines.engine(shard_url)) as session, Session(engines.platform) as platform:
            patient = session.get(Patient, patient_id)
            body = {"id": patient.id, "mrn": patient.mrn, "sex": patient.sex, "version": patient.version,
                    "master_person_id": person_of_local(platform, cache, patient.institution_id, patient.mrn)}
            body.update({field: unseal(ring, "county", patient, field) for field in SEALED_FIELDS})
        return jsonify(body)

    app.add_url_rule("/bench/bare/<patient_id>", "bench_bare", bare)


def _measure(app: Flask, url: str, headers: dict[str, str], count: int) -> list[float]:
    client = app.test_client()
    for _ in range(min(200, count)):
        assert client.get(url, headers=headers).status_code == 200
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        response = client.get(url, headers=headers)
        timings.append(time.perf_counter() - start)
        assert response.status_code == 200
    return timings


def _summary(timings: list[float]) -> tuple[float, float, float]:
    ordered = sorted(timings)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return len(ordered) / sum(ordered), p50, p99


def run(label: str, mysql: str | None, redis_url: str | None, count: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        app, patient_id = _build(Path(home), mysql, redis_url)
        client = app.test_client()
        token = client.post("/api/v1/auth/token", json={"username": "doctor", "password": PASSWORD}).get_json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        full = _summary(_measure(app, f"/api/v1/patients/{patient_id}", headers, count))
        bare = _summary(_measure(app, f"/bench/bare/{patient_id}", {}, count))
        app.extensions["hie.engines"].dispose()
        if mysql:
            _drop_databases(mysql)
    print(f"{label:<28} {'full stack':>12} {full[0]:>9.0f} req/s  p50 {full[1]:6.2f} ms  p99 {full[2]:6.2f} ms")
    print(f"{'':<28} {'bare read':>12} {bare[0]:>9.0f} req/s  p50 {bare[1]:6.2f} ms  p99 {bare[2]:6.2f} ms")
    print(f"{'':<28} {'ratio':>12} {full[1] / bare[1]:>9.2f}x p50 (stack cost {full[1] - bare[1]:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    print(f"{args.requests} sequential GET /api/v1/patients/<id> per row, in-process WSGI")
    run("SQLite", None, None, args.requests)
    try:
        create_engine(args.mysql).connect().close()
    except Exception as exc:
        print(f"MariaDB not reachable ({exc.__class__.__name__}); skipped")
        return
    run("MariaDB", args.mysql, None, args.requests)
    run("MariaDB + Redis cache", args.mysql, args.redis, args.requests)


if __name__ == "__main__":
    main()
