"""Referral figures on MariaDB + Redis through gunicorn: create and accept under load, the inbox over 100,000 referrals.

A fresh region (hie_rbench_* databases, Redis db 12 flushed) with a township centre sending to a county hospital;
`hie serve` (gunicorn, gthread) is started on a free 127.0.0.1 port and driven by a Python client: threads, one
keep-alive http.client connection each, tokens obtained once. GET /healthz at the same concurrency shows what the
client and the HTTP layer cost on their own. The audit append's share is read in process afterwards, on the same
databases, by timing hie.platform.audit.services.append inside the same requests. Everything is dropped at the end.

    .venv/bin/python bench/referral_bench.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/12] [--pairs 200] [--referrals 100000] [--reads 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import create_engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hie.empi.models import PersonRecord  # noqa: E402
from hie.platform.app import create_app  # noqa: E402
from hie.platform.audit import services as audit  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role, User  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402
from hie.platform.standards import check_digit  # noqa: E402
from hie.referral import capacity  # noqa: E402
from hie.referral.models import Direction, Referral, ReferralStatus, ReferralStep, Urgency  # noqa: E402
from hie.referral.services import DEFAULT_DEADLINES  # noqa: E402
from hie.tenants import services  # noqa: E402
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, RegionLevel  # noqa: E402

PASSWORD = "Bench-pass-2026"
PREFIX = "hie_rbench_"
SEED = 20261130
TENANT = "yaodu"
SENDER, RECEIVER = "YAODU-T1", "YAODU-CH"
DEPARTMENT = "心内科"
# code, name, level, type: the sender, the receiver, and the other institutions the bulk load spreads over
INSTITUTIONS = (
    (SENDER, "尧都区屯里镇卫生院", InstitutionLevel.township_health_centre, InstitutionType.primary_care),
    (RECEIVER, "尧都区人民医院", InstitutionLevel.secondary_hospital, InstitutionType.general_hospital),
    ("YAODU-T2", "尧都区县底镇卫生院", InstitutionLevel.township_health_centre, InstitutionType.primary_care),
    ("YAODU-ZY", "尧都区中医医院", InstitutionLevel.secondary_hospital, InstitutionType.tcm_hospital),
    ("LF-PH", "临汾市人民医院", InstitutionLevel.tertiary_hospital, InstitutionType.general_hospital),
)
USERS = {SENDER: "t1.doctor", RECEIVER: "ch.doctor"}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = ("秀英", "桂英", "建国", "志强", "丽华", "海燕", "国庆", "春梅", "晓东", "玉兰", "文杰", "淑珍")
DIAGNOSES = ({"code": "I10", "text": "原发性高血压"}, {"code": "E11.9", "text": "2型糖尿病，无并发症"},
             {"code": "I20.0", "text": "不稳定型心绞痛"}, {"code": "J18.9", "text": "肺炎"})
# final state of a bulk-loaded referral and its share
STATUS_MIX = ((ReferralStatus.requested, 8), (ReferralStatus.accepted, 12), (ReferralStatus.declined, 5),
              (ReferralStatus.arrived, 10), (ReferralStatus.completed, 55), (ReferralStatus.cancelled, 5),
              (ReferralStatus.no_show, 5))
# receiver code and its share of the 100,000; the senders are the lower levels
RECEIVER_MIX = ((RECEIVER, 40), ("LF-PH", 30), ("YAODU-ZY", 20), ("YAODU-T2", 10))
# open referrals are recent (days back they were made in); the closed ones spread over a year
RECENT = {ReferralStatus.requested: 7, ReferralStatus.accepted: 21, ReferralStatus.arrived: 30}
PATHS = {ReferralStatus.requested: (), ReferralStatus.accepted: (ReferralStatus.accepted,),
         ReferralStatus.declined: (ReferralStatus.declined,),
         ReferralStatus.arrived: (ReferralStatus.accepted, ReferralStatus.arrived),
         ReferralStatus.completed: (ReferralStatus.accepted, ReferralStatus.arrived, ReferralStatus.completed),
         ReferralStatus.cancelled: (ReferralStatus.cancelled,),
         ReferralStatus.no_show: (ReferralStatus.accepted, ReferralStatus.no_show)}


@dataclass
class Timings:
    """Seconds per request of one operation, and the wall time of the phase it ran in."""

    seconds: list[float] = field(default_factory=list)
    wall: float = 0.0

    def p(self, quantile: float) -> float:
        """A quantile in milliseconds (nearest rank)."""
        ordered = sorted(self.seconds)
        return ordered[max(int(len(ordered) * quantile + 0.5) - 1, 0)] * 1000

    def line(self, label: str, clients: int, target: str = "") -> str:
        """One row of the report."""
        rate = len(self.seconds) / self.wall if self.wall else 0.0
        p50 = statistics.median(self.seconds) * 1000
        return (f"{label:<34} {clients:>3} {len(self.seconds):>6} {rate:>8.1f} {p50:>8.1f}"
                f" {self.p(0.95):>8.1f} {self.p(0.99):>8.1f}  {target}")


# --- the region -------------------------------------------------------------------------------------------------


def drop_databases(mysql: str) -> None:
    """Every database this bench made (also those of an interrupted run)."""
    engine = create_engine(mysql)
    with engine.begin() as conn:
        names = conn.execute(text("SHOW DATABASES LIKE :p"), {"p": PREFIX.replace("_", "\\_") + "%"}).scalars()
        for name in list(names):
            conn.execute(text(f"DROP DATABASE `{name}`"))
    engine.dispose()


def bench_env(home: Path, mysql: str, redis_url: str) -> dict[str, str]:
    """The HIE_* settings of the bench region, for the in-process app and the server alike."""
    return {"HIE_HOME": str(home), "HIE_SECRET_KEY": "r" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
            "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url}


def build(env: dict[str, str], patients: int) -> tuple[Flask, list[str]]:
    """One county tenant with its institutions, the two clinicians, slots, and patients registered at the sender."""
    # The setup app chains its audit events at the end of each request: no sequencer thread outlives the bench's
    # databases (the servers it starts keep the default interval).
    app = create_app(load_config({**env, "HIE_AUDIT_CHAIN_INTERVAL": "0"}))
    app.extensions["hie.redis"].flushdb()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        services.upgrade_all(engines)
        with session_scope(engines.platform) as session:
            services.ensure_region(session, "141000", "临汾市", RegionLevel.city, None)
            services.ensure_region(session, "141002", "尧都区", RegionLevel.county, "141000")
            tenant = services.add_tenant(session, app.config["HIE"], TENANT, "尧都区", "141002")
            services.provision(engines, tenant)
            for code, name, level, kind in INSTITUTIONS:
                services.add_institution(session, code, name, TENANT, level.value, type_=kind.value)
            for code, username in USERS.items():
                accounts.add_user(session, username, [Role.clinician], code, PASSWORD)
        with app.test_request_context(), session_scope(engines.platform) as session:
            receiver = session.scalar(select(Institution.id).where(Institution.code == RECEIVER))
            today = capacity.local_day(datetime.now(UTC))
            for offset in range(1, 31):
                capacity.publish(session, receiver, DEPARTMENT, today + timedelta(days=offset), capacity.MAX_CAPACITY)
    client = app.test_client()
    token = client.post("/api/v1/auth/token", json={"username": USERS[SENDER], "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    rng = random.Random(SEED)
    ids = []
    for index in range(patients):
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 60))
        body = f"141002{born:%Y%m%d}{rng.randrange(1000):03d}"
        response = client.post("/api/v1/patients", headers=headers, json={
            "mrn": f"T1-{index:05d}", "name": rng.choice(SURNAMES) + rng.choice(GIVEN), "sex": rng.choice("MF"),
            "birth_date": born.isoformat(), "id_number": body + check_digit(body),
            "phone": f"139{rng.randrange(10**8):08d}", "address": f"尧都区屯里镇{rng.randrange(1, 90)}号"})
        assert response.status_code == 201, response.get_data(as_text=True)[:300]
        ids.append(response.get_json()["id"])
    return app, ids


# --- the server and the client ----------------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now, on the loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(env: dict[str, str], port: int, workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    """`hie serve` on 127.0.0.1:port, waited for until /healthz answers."""
    hie = Path(sys.executable).with_name("hie")
    server_env = {**os.environ, **env, "HIE_THREADS": str(threads)}
    with log.open("wb") as out:
        server = subprocess.Popen([str(hie), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
                                  env=server_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"hie serve exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                connection.close()
                return server
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError("hie serve did not answer /healthz within 60 s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the gunicorn master we started; it stops its own workers."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class Client:
    """One keep-alive connection to the server, as one client thread holds it."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             expect: int = 200) -> tuple[float, Any]:
        """Seconds taken and the decoded answer; anything but the expected status stops the bench."""
        payload = json.dumps(body).encode() if body is not None else None
        start = time.perf_counter()
        self.connection.request(method, path, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        if response.status != expect:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return elapsed, json.loads(data) if data else None


def token_of(port: int, username: str) -> str:
    """Log in once; the token is reused by every client thread."""
    _, answer = Client(port).call("POST", "/api/v1/auth/token", {"username": username, "password": PASSWORD})
    return answer["access_token"]


def run_clients(clients: int, work: Callable[[int, dict[str, Client]], dict[str, list[float]]],
                connect: Callable[[], dict[str, Client]]) -> tuple[dict[str, Timings], float]:
    """work(thread number, its connections) on `clients` threads at once; per-operation timings and the wall time."""
    results: list[dict[str, list[float]]] = []
    errors: list[BaseException] = []
    lock, ready = threading.Lock(), threading.Barrier(clients + 1)

    def body(number: int) -> None:
        connections = connect()
        ready.wait()
        try:
            out = work(number, connections)
            with lock:
                results.append(out)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    merged: dict[str, Timings] = {}
    for out in results:
        for name, seconds in out.items():
            merged.setdefault(name, Timings()).seconds.extend(seconds)
    for timings in merged.values():
        timings.wall = wall
    return merged, wall


def referral_body(patient_id: str, number: int) -> dict[str, Any]:
    """A referral up from the township centre, as a clinician writes it."""
    diagnosis = DIAGNOSES[number % len(DIAGNOSES)]
    return {"patient_id": patient_id, "direction": "up", "urgency": "routine", "receiving_institution": RECEIVER,
            "department": DEPARTMENT, "reason": f"{diagnosis['text']}，乡镇卫生院处理困难，请上级医院进一步诊治",
            "diagnoses": [diagnosis], "clinical_summary": "血压控制不佳，近一周头晕加重。", "records": []}


def create_and_accept(port: int, tokens: dict[str, str], patients: list[str], clients: int,
                      pairs: int) -> dict[str, Timings]:
    """pairs referrals made by the sender and accepted by the receiver, split over `clients` threads."""
    share = max(pairs // clients, 1)

    def connect() -> dict[str, Client]:
        return {"sender": Client(port, tokens[SENDER]), "receiver": Client(port, tokens[RECEIVER])}

    def work(number: int, conns: dict[str, Client]) -> dict[str, list[float]]:
        made, taken = [], []
        for index in range(share):
            serial = number * share + index
            seconds, answer = conns["sender"].call("POST", "/api/v1/referrals",
                                                   referral_body(patients[serial % len(patients)], serial), 201)
            made.append(seconds)
            appointment = (datetime.now(UTC) + timedelta(days=1 + serial % 28)).isoformat(timespec="seconds")
            seconds, _ = conns["receiver"].call("POST", f"/api/v1/referrals/{answer['id']}/accept",
                                                {"appointment_at": appointment})
            taken.append(seconds)
        return {"create": made, "accept": taken}

    return run_clients(clients, work, connect)[0]


def repeat_get(port: int, token: str | None, clients: int, requests: int, paths: dict[str, str]) -> dict[str, Timings]:
    """Each path requested `requests` times in all, spread over `clients` threads."""
    share = max(requests // clients, 1)

    def work(_number: int, conns: dict[str, Client]) -> dict[str, list[float]]:
        return {name: [conns["c"].call("GET", path)[0] for _ in range(share)] for name, path in paths.items()}

    return run_clients(clients, work, lambda: {"c": Client(port, token)})[0]


def row_lock_waits(mysql: str) -> tuple[int, int]:
    """InnoDB's server-wide row-lock waits and milliseconds waited so far (other clients of the server count too)."""
    engine = create_engine(mysql)
    with engine.connect() as conn:
        status = dict(conn.execute(text("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_%'")).all())
    engine.dispose()
    return int(status["Innodb_row_lock_waits"]), int(status["Innodb_row_lock_time"])


# --- 100,000 referrals ------------------------------------------------------------------------------------------


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def bulk_load(app: Flask, patients: list[str], count: int) -> float:
    """Referrals and their steps as services.create and the moves write them, in batches of direct INSERTs."""
    start = time.perf_counter()
    engine = app.extensions["hie.engines"].platform
    rng = random.Random(SEED + 1)
    with session_scope(engine) as session:
        ids = dict(session.execute(select(Institution.code, Institution.id)).all())
        levels = dict(session.execute(select(Institution.code, Institution.level)).all())
        users = {code: session.scalar(select(User.id).where(User.username == name)) for code, name in USERS.items()}
        persons = dict(session.execute(select(PersonRecord.patient_id, PersonRecord.person_id)).all())
    statuses = [status for status, share in STATUS_MIX for _ in range(share)]
    receivers = [code for code, share in RECEIVER_MIX for _ in range(share)]
    now = datetime.now(UTC)
    referrals, steps = [], []
    for number in range(count):
        receiver = rng.choice(receivers)
        sender = SENDER if receiver != SENDER and levels[receiver] != levels[SENDER] else RECEIVER
        direction = Direction.up if sender == SENDER else Direction.down
        status, urgency = rng.choice(statuses), rng.choice((Urgency.routine,) * 6 + (Urgency.urgent,) * 3 +
                                                           (Urgency.emergency,))
        made = now - timedelta(minutes=rng.randrange(RECENT.get(status, 365) * 24 * 60))
        patient = patients[number % len(patients)]
        path = PATHS[status]
        answered = min(made + timedelta(hours=rng.randrange(1, 40)), now) if path else None
        referral_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        diagnosis = DIAGNOSES[number % len(DIAGNOSES)]
        referrals.append({
            "id": referral_id, "direction": direction, "urgency": urgency, "status": status,
            "sender_institution_id": ids[sender], "sender_tenant_code": TENANT, "sender_patient_id": patient,
            "master_person_id": persons[patient], "receiver_institution_id": ids[receiver],
            "receiver_department": DEPARTMENT, "receiver_patient_id": None,
            "reason": f"{diagnosis['text']}，请上级医院进一步诊治", "diagnoses": [diagnosis],
            "clinical_summary": "血压控制不佳，近一周头晕加重。", "records": [],
            "appointment_at": made + timedelta(days=2) if ReferralStatus.accepted in path else None,
            "discharge_summary": "住院7天，病情稳定出院。" if status is ReferralStatus.completed else None,
            "follow_up_of": None, "requested_by": users[sender], "created_at": made,
            "updated_at": min(made + timedelta(hours=24 * len(path)), now),
            "due_at": made + DEFAULT_DEADLINES[urgency], "answered_at": answered})
        previous, at = None, made
        for target in (ReferralStatus.requested, *path):
            side = sender if target in (ReferralStatus.requested, ReferralStatus.cancelled) else receiver
            who = side if side in USERS else RECEIVER  # institutions without a bench user: a stand-in clinician
            steps.append({"referral_id": referral_id, "from_status": previous, "to_status": target,
                          "user_id": users[who], "username": USERS[who], "role": "clinician",
                          "institution_id": ids[side], "at": at, "note": None})
            previous, at = target, min(at + timedelta(hours=24), now)
    with engine.begin() as conn:
        for chunk in _chunks(referrals, 2000):
            conn.execute(insert(Referral), chunk)
        for chunk in _chunks(steps, 5000):
            conn.execute(insert(ReferralStep), chunk)
        conn.exec_driver_sql("ANALYZE TABLE referrals, referral_steps")
    return time.perf_counter() - start


# --- the audit append's share, in process -----------------------------------------------------------------------


def audit_share(app: Flask, patients: list[str], requests: int) -> dict[str, tuple[float, float, int]]:
    """Mean request time, mean time inside audit.append and events appended, per operation, one thread."""
    spent: list[float] = []
    events: list[int] = []
    original = audit.append

    def timed_append(engine: Any, keyring: Any, pending: Any) -> list[int]:
        start = time.perf_counter()
        seqs = original(engine, keyring, pending)
        spent.append(time.perf_counter() - start)
        events.append(len(seqs))
        return seqs

    client = app.test_client()
    headers = {}
    for code, username in USERS.items():
        answer = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD}).get_json()
        headers[code] = {"Authorization": f"Bearer {answer['access_token']}"}
    out: dict[str, list[tuple[float, float, int]]] = {}

    def one(name: str, method: str, url: str, who: str, body: dict[str, Any] | None, expect: int) -> Any:
        spent.clear()
        events.clear()
        start = time.perf_counter()
        response = client.open(url, method=method, headers=headers[who], json=body)
        elapsed = time.perf_counter() - start
        assert response.status_code == expect, (url, response.status_code, response.get_data(as_text=True)[:300])
        out.setdefault(name, []).append((elapsed, sum(spent), sum(events)))
        return response.get_json()

    audit.append = timed_append
    try:
        for serial in range(requests + 10):
            made = one("create", "POST", "/api/v1/referrals", SENDER,
                       referral_body(patients[serial % len(patients)], serial), 201)
            appointment = (datetime.now(UTC) + timedelta(days=1 + serial % 28)).isoformat(timespec="seconds")
            one("accept", "POST", f"/api/v1/referrals/{made['id']}/accept", RECEIVER,
                {"appointment_at": appointment}, 200)
            one("inbox", "GET", "/api/v1/referrals?box=incoming", RECEIVER, None, 200)
            one("count", "GET", "/api/v1/referrals/count", RECEIVER, None, 200)
    finally:
        audit.append = original
    return {name: (statistics.mean(r[0] for r in rows[10:]) * 1000, statistics.mean(r[1] for r in rows[10:]) * 1000,
                   rows[-1][2]) for name, rows in out.items()}


# --- report -----------------------------------------------------------------------------------------------------


HEADER = f"{'operation':<34} {'cl':>3} {'n':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  target"


def verdict(value: float, limit: float, what: str) -> str:
    """Met, or missed by how much."""
    if value < limit:
        return f"{what} < {limit:g} ms met"
    return f"{what} < {limit:g} ms MISSED by {value - limit:.1f} ms ({value / limit:.1f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--pairs", type=int, default=192, help="referrals made and accepted per concurrency")
    parser.add_argument("--referrals", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=320, help="inbox requests per case and concurrency")
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    drop_databases(args.mysql)
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(Path(home), args.mysql, args.redis)
        app, patients = build(env, args.patients)
        port = free_port()
        server = start_server(env, port, args.workers, args.threads, Path(home) / "serve.log")
        rows: list[str] = []
        locks: list[str] = []
        try:
            tokens = {code: token_of(port, username) for code, username in USERS.items()}
            create_and_accept(port, tokens, patients, 8, 32)  # warm every worker's pools and caches
            repeat_get(port, None, 8, 200, {"healthz": "/healthz"})
            for clients in (1, 8, 32):
                health = repeat_get(port, None, clients, args.pairs * 2, {"healthz": "/healthz"})["healthz"]
                waits_before, waited_before = row_lock_waits(args.mysql)
                moved = create_and_accept(port, tokens, patients, clients, args.pairs)
                waits, waited = row_lock_waits(args.mysql)
                locks.append(f"  {clients:>2} clients: {waits - waits_before} row-lock waits, "
                             f"{waited - waited_before} ms waited in all")
                rows.append(health.line("GET /healthz (client + HTTP floor)", clients))
                rows.append(moved["create"].line("POST /referrals (create)", clients,
                                                 verdict(statistics.median(moved["create"].seconds) * 1000, 30,
                                                         "p50")))
                rows.append(moved["accept"].line("POST /referrals/<id>/accept", clients))
            loaded = bulk_load(app, patients, args.referrals)
            paths = {"inbox": "/api/v1/referrals?box=incoming",
                     "inbox status=requested": "/api/v1/referrals?box=incoming&status=requested",
                     "count": "/api/v1/referrals/count"}
            for clients in (1, 8):
                read = repeat_get(port, tokens[RECEIVER], clients, args.reads, paths)
                for name, timings in read.items():
                    target = verdict(timings.p(0.99), 50, "p99") if name.startswith("inbox") else ""
                    rows.append(timings.line(f"GET {name}", clients, target))
        finally:
            stop_server(server)
        try:
            shares = audit_share(app, patients, 100)
        finally:
            app.extensions["hie.redis"].flushdb()
            app.extensions["hie.engines"].dispose()
            drop_databases(args.mysql)
    total = args.referrals + 3 * args.pairs + 32
    print(f"MariaDB + Redis, `hie serve` (gunicorn gthread, {args.workers} workers x {args.threads} threads) on "
          f"127.0.0.1, driven by a Python client (threads, one keep-alive http.client connection each); "
          f"{os.cpu_count()} cores shared by client, server and databases; run took "
          f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print("req/s: requests of that operation completed per second of the phase (create and accept interleave)")
    print(HEADER)
    print("\n".join(rows))
    print(f"inbox: {total:,} referrals in the region bulk-loaded in {loaded:.0f} s; "
          f"{RECEIVER_MIX[0][1]}% received by {RECEIVER}, the clinician's institution")
    print("InnoDB row-lock waits while creating and accepting (server-wide counters):")
    print("\n".join(locks))
    print("audit append, in process, one thread, same databases (mean ms per request):")
    for name, (request, append, events) in shares.items():
        print(f"  {name:<8} request {request:6.1f}  audit append {append:6.1f} ({append / request:4.0%}), "
              f"{events} events")


if __name__ == "__main__":
    main()
