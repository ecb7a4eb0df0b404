"""Crash drill (issue 12, item 5): SIGKILL gunicorn workers of `hie serve` while clients create Observations, then
check that every stored Observation has its audit event and that `hie audit verify` passes.

A fresh region on MariaDB + Redis (hie_cbench_* databases; bench/referral_bench.py's build: tenant yaodu, a
township centre's clinician and its patients), `hie serve` on a free 127.0.0.1 port, `--clients` threads posting
FHIR Observations in a loop; every `--every` seconds one worker, chosen at random, is killed with SIGKILL (gunicorn
starts another), `--kills` times. Then the pending audit events are chained (as a `hie worker` tick does) and the
shard's Observations are matched against the chain's `create` events. Everything is dropped at the end.

    .venv/bin/python bench/audit_crash_drill.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/9] [--clients 16] [--kills 10] [--every 1.5] [--workers 5] [--threads 4]

An Observation's create event commits in the shard's transaction with it (docs/architecture.md, "Audit committed
with the request"), so the drill's target is zero stored Observations without an event, whatever the kills hit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.referral_bench import SENDER, USERS, build, free_port, start_server, stop_server, token_of  # noqa: E402
from hie.exchange.models import FhirResource  # noqa: E402
from hie.platform.audit.models import AuditEvent, AuditPending, ShardAuditPending  # noqa: E402
from hie.platform.audit.services import chain_pending, verify  # noqa: E402

PREFIX = "hie_cbench_"
TENANT = "yaodu"


def env_of(home: Path, mysql: str, redis_url: str) -> dict[str, str]:
    """The drill region's settings, for the in-process app and the server alike."""
    return {"HIE_HOME": str(home), "HIE_SECRET_KEY": "c" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
            "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url}


def drop_databases(mysql: str) -> None:
    """Every database this drill made (also those of an interrupted run)."""
    engine = create_engine(mysql)
    with engine.begin() as conn:
        names = conn.execute(text("SHOW DATABASES LIKE :p"), {"p": PREFIX.replace("_", "\\_") + "%"}).scalars()
        for name in list(names):
            conn.execute(text(f"DROP DATABASE `{name}`"))
    engine.dispose()


def observation(patient_id: str, number: int) -> bytes:
    """A systolic blood pressure of the patient."""
    return json.dumps({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "收缩压"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2026-11-{1 + number % 28:02d}T08:{number % 60:02d}:00+08:00",
        "valueQuantity": {"value": 120 + number % 40, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                          "code": "mm[Hg]"}}, ensure_ascii=False).encode()


def workers_of(master: int) -> list[int]:
    """The gunicorn workers: processes whose parent is the master."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                children.append(int(entry.name))
    return children


class Writers:
    """Client threads posting Observations; what each was told is kept to check against what is stored."""

    def __init__(self, port: int, token: str, patients: list[str], clients: int) -> None:
        self.port, self.token, self.patients = port, token, patients
        self.acknowledged: set[str] = set()
        self.failed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(clients)]

    def run(self, number: int) -> None:
        """Post until stopped; a dropped connection (its worker was killed) is counted and reopened."""
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        serial = number * 1_000_000
        while not self.stop.is_set():
            serial += 1
            try:
                connection.request("POST", "/fhir/Observation", observation(
                    self.patients[serial % len(self.patients)], serial), headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                with self.lock:
                    self.failed += 1
                continue
            with self.lock:
                if response.status == 201:
                    self.acknowledged.add(json.loads(body)["id"])
                else:
                    self.failed += 1
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--every", type=float, default=1.5, help="seconds between kills")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    drop_databases(args.mysql)
    with tempfile.TemporaryDirectory() as home:
        env = env_of(Path(home), args.mysql, args.redis)
        app, patients = build(env, args.patients)
        port = free_port()
        server = start_server(env, port, args.workers, args.threads, Path(home) / "serve.log")
        try:
            writers = Writers(port, token_of(port, USERS[SENDER]), patients, args.clients)
            for thread in writers.threads:
                thread.start()
            killed = 0
            for _ in range(args.kills):
                time.sleep(args.every)
                alive = workers_of(server.pid)
                if alive:
                    os.kill(random.choice(alive), signal.SIGKILL)
                    killed += 1
            time.sleep(args.every)
            writers.stop.set()
            for thread in writers.threads:
                thread.join()
        finally:
            stop_server(server)
        report(app, writers, killed)
        app.extensions["hie.redis"].flushdb()
        app.extensions["hie.engines"].dispose()
    drop_databases(args.mysql)


def report(app, writers: Writers, killed: int) -> None:  # noqa: ANN001
    """Chain what is pending, then match the shard's Observations against the chain's create events."""
    engines, ring = app.extensions["hie.engines"], app.extensions["hie.keyring"]
    shard = engines.engine(app.config["HIE"].tenant_db_url(TENANT))
    with Session(engines.platform) as session, Session(shard) as in_shard:
        pending = (session.scalar(select(func.count()).select_from(AuditPending)),
                   in_shard.scalar(select(func.count()).select_from(ShardAuditPending)))
    chained = chain_pending(engines.platform, ring, wait=True, shards={TENANT: shard})
    with Session(shard) as session:
        stored = set(session.scalars(select(FhirResource.id).where(FhirResource.resource_type == "Observation")))
    with Session(engines.platform) as session:
        audited = list(session.scalars(select(AuditEvent.resource_id).where(
            AuditEvent.action == "create", AuditEvent.resource_type == "Observation",
            AuditEvent.outcome == "success")))
    checked, problems = verify(engines.platform, ring, {TENANT: shard})
    print(f"workers killed with SIGKILL: {killed}; requests failed or cut off: {writers.failed}")
    print(f"Observations acknowledged: {len(writers.acknowledged)}; stored: {len(stored)}; stored but not "
          f"acknowledged (cut off after the commit): {len(stored - writers.acknowledged)}")
    print(f"acknowledged but not stored: {len(writers.acknowledged - stored)} (must be 0)")
    print(f"audit events pending after the drill: {pending[0]} on the platform, {pending[1]} in the shard; chained "
          f"now: {chained}")
    print(f"stored Observations without a create event: {len(stored - set(audited))} (target 0)")
    print(f"create events counted twice: {len(audited) - len(set(audited))}; create events for records not "
          f"stored: {len(set(audited) - stored)}")
    print(f"hie audit verify: {checked} events, {len(problems)} problem(s)" +
          "".join(f"\n  TAMPERED at event {p.seq}: {p.problem}" for p in problems))


if __name__ == "__main__":
    main()
