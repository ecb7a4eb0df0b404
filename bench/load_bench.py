"""Load figures of the whole stack on MariaDB + Redis through gunicorn, against a bare Flask + PyMySQL floor.

A fresh region (hie_lbench_* databases, the Redis db flushed; bench/referral_bench.py's build: tenant yaodu, a
township centre's clinician and its patients); `hie serve` and bench/bare_app.py (the floor: the stored JSON of the
same patients from the same shard, no ORM, auth or audit) under the same gunicorn settings on free 127.0.0.1 ports,
driven by wrk (Debian's package) when installed, else by a Python client (threads, a keep-alive http.client
connection each); the floor's GET /healthz shows the client's own ceiling. Each row is a fixed number of seconds at
1, 4, 16 or 64 connections: req/s, p50, p99, statuses and the ratio to the floor's read at the same concurrency;
last, the audited read at 16 clients while 64 clients flood the login. Everything is dropped at the end.

    .venv/bin/python bench/load_bench.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/8] [--duration 8] [--workers 5] [--threads 4] [--driver auto|wrk|python]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.referral_bench import PASSWORD, SENDER, USERS, Client, build, free_port, start_server, stop_server  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402

PREFIX = "hie_lbench_"
TENANT = "yaodu"
CLINICIAN = USERS[SENDER]
LOGIN_USERS = 32  # distinct accounts the login cases cycle through, each login a full password verification
HISTORY = 40  # Observations of the patient whose $everything is read
CLIENTS = (1, 4, 16, 64)
FLOOD = 64
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    """What one measurement sends: each connection cycles through the (path, body) pairs from its own offset."""

    method: str
    requests: list[tuple[str, str | None]]
    headers: dict[str, str]
    expect: int = 200


@dataclass
class Result:
    """One measurement: requests completed in its seconds, latency quantiles, statuses, cores used meanwhile."""

    clients: int
    requests: int
    seconds: float
    p50: float
    p99: float
    statuses: dict[int, int]
    socket_errors: int = 0
    server_cores: float = 0.0
    machine_cores: float = 0.0

    @property
    def rate(self) -> float:
        """Completed requests per second, whatever their status."""
        return self.requests / self.seconds if self.seconds else 0.0

    def other(self, expect: int) -> str:
        """Statuses other than the expected one, and socket errors (timeouts, resets)."""
        parts = [f"{status}:{count}" for status, count in sorted(self.statuses.items()) if status != expect]
        return " ".join(parts + ([f"sock:{self.socket_errors}"] if self.socket_errors else [])) or "-"


# --- CPU ----------------------------------------------------------------------------------------------------------


def machine_jiffies() -> int:
    """Busy jiffies of the whole machine: client, servers, databases, and anything else running."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def tree_jiffies(master: int) -> int:
    """User + system jiffies of a gunicorn master and its workers."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == master or int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])
    return total


# --- drivers ------------------------------------------------------------------------------------------------------


WRK_FOOTER = """
local n, threads = #items, {}
counter, statuses = 0, {}
function setup(thread) thread:set("counter", #threads * 7919); table.insert(threads, thread) end
function request()
  counter = counter + 1
  local item = items[counter % n + 1]
  return wrk.format(method, item[1], headers, item[2])
end
function response(status) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local merged, parts, e = {}, {}, summary.errors
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do merged[status] = (merged[status] or 0) + count end
  end
  for status, count in pairs(merged) do parts[#parts + 1] = string.format('"%d": %d', status, count) end
  io.write(string.format('LOAD {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "statuses": {%s}}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, table.concat(parts, ", ")))
end
"""


def wrk_script(case: Case) -> str:
    """The Lua script that makes wrk send the case's requests and print one JSON line at the end."""
    # Lua long-bracket literals: JSON bodies, paths and headers never contain ]==]
    items = ",\n".join(f"{{[==[{path}]==]" + (f", [==[{body}]==]" if body is not None else "") + "}"
                       for path, body in case.requests)
    headers = ", ".join(f"[ [==[{k}]==] ] = [==[{v}]==]" for k, v in case.headers.items())
    return f"method = [==[{case.method}]==]\nheaders = {{{headers}}}\nitems = {{\n{items}\n}}\n" + WRK_FOOTER


def wrk_drive(port: int, case: Case, clients: int, duration: float, scratch: Path) -> Result:
    """wrk with `clients` connections for `duration` seconds (2 threads at most: the server needs the cores)."""
    script = scratch / f"case-{threading.get_ident()}.lua"
    script.write_text(wrk_script(case), encoding="utf-8")
    command = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration:g}s", "--timeout", "60s",
               "-s", str(script), f"http://127.0.0.1:{port}/"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 120)
    line = next((row for row in done.stdout.splitlines() if row.startswith("LOAD ")), None)
    if line is None or done.stderr.strip():  # wrk runs its default GET / when the script fails
        raise RuntimeError(f"wrk: {done.stderr[-2000:]} {done.stdout[-2000:]}")
    data = json.loads(line[5:])
    return Result(clients, data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000,
                  data["p99_us"] / 1000, {int(k): v for k, v in data["statuses"].items()}, data["socket_errors"])


def _quantile(ordered: list[float], quantile: float) -> float:
    """Nearest rank, in milliseconds."""
    return ordered[max(int(len(ordered) * quantile + 0.5) - 1, 0)] * 1000 if ordered else 0.0


def python_drive(port: int, case: Case, clients: int, duration: float, _scratch: Path) -> Result:
    """`clients` threads, one keep-alive connection each, sending until the deadline (the last answer awaited)."""
    answers: list[tuple[float, int]] = []  # seconds and status, 0 for a socket error; list.append is thread-safe
    ready, deadline = threading.Barrier(clients + 1), [0.0]

    def body(number: int) -> None:
        connection, index = None, number * 7919
        ready.wait()
        while time.perf_counter() < deadline[0]:
            path, payload = case.requests[index % len(case.requests)]
            index += 1
            connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            start = time.perf_counter()
            try:
                connection.request(case.method, path, payload.encode() if payload else None, case.headers)
                response = connection.getresponse()
                response.read()
                answers.append((time.perf_counter() - start, response.status))
            except (OSError, http.client.HTTPException):
                answers.append((0.0, 0))
                connection.close()
                connection = None

    threads = [threading.Thread(target=body, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0], start = time.perf_counter() + duration, time.perf_counter()
    ready.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(seconds for seconds, status in answers if status)
    statuses = Counter(status for _, status in answers if status)
    return Result(clients, len(ordered), wall, _quantile(ordered, 0.5), _quantile(ordered, 0.99), dict(statuses),
                  len(answers) - len(ordered))


# --- the region and the floor -------------------------------------------------------------------------------------


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
    return {"HIE_HOME": str(home), "HIE_SECRET_KEY": "l" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
            "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url}


def observation(patient_id: str, number: int) -> str:
    """A systolic blood pressure of the patient, as a township centre's system posts it."""
    return json.dumps({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8480-6"}], "text": "收缩压"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2026-11-{1 + number % 28:02d}T{8 + number % 10:02d}:{number % 60:02d}:00+08:00",
        "valueQuantity": {"value": 120 + number % 40, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        ensure_ascii=False)


def prepare(app: Flask, mysql: str, patients: list[str]) -> None:
    """Login accounts, the $everything patient's history, and the floor's stored copies of the patient JSON."""
    engines = app.extensions["hie.engines"]
    with app.app_context(), session_scope(engines.platform) as session:
        for number in range(LOGIN_USERS):
            accounts.add_user(session, f"login.{number:02d}", [Role.clinician], SENDER, PASSWORD)
    client = app.test_client()
    answer = client.post("/api/v1/auth/token", json={"username": CLINICIAN, "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {answer['access_token']}", **JSON}
    for number in range(HISTORY):
        response = client.post("/fhir/Observation", data=observation(patients[0], number), headers=headers)
        assert response.status_code == 201, response.get_data(as_text=True)[:300]
    rows = []
    for patient_id in patients:
        response = client.get(f"/api/v1/patients/{patient_id}", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        rows.append({"id": patient_id, "body": response.get_data(as_text=True)})
    shard = create_engine(f"{mysql}/{PREFIX}{TENANT}")
    with shard.begin() as conn:
        # the shard's own character set and collation (utf8mb4_unicode_ci), so the join compares like with like
        conn.execute(text("CREATE TABLE bench_floor_patients (id VARCHAR(36) PRIMARY KEY, body TEXT NOT NULL)"))
        conn.execute(text("INSERT INTO bench_floor_patients (id, body) VALUES (:id, :body)"), rows)
    shard.dispose()


def start_floor(mysql: str, port: int, workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    """bench/bare_app.py under gunicorn with `hie serve`'s settings, waited for until /healthz answers."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "--chdir", str(ROOT), "--worker-class", "gthread", "--workers", str(workers),
               "--threads", str(threads), "--timeout", "60", "--graceful-timeout", "30", "--access-logfile", "-",
               "--bind", f"127.0.0.1:{port}", "bench.bare_app:app"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, env={**os.environ, "HIE_FLOOR_DB_URL": f"{mysql}/{PREFIX}{TENANT}"},
                                  stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while healthz_seconds(port) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"the floor did not answer /healthz: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    return server


def healthz_seconds(port: int) -> float | None:
    """Seconds GET /healthz took, or None while nothing answers."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start = time.perf_counter()
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
        connection.close()
    except OSError:
        return None
    return time.perf_counter() - start if status == 200 else None


# --- the measurements ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """The two servers, the driver, and the rows measured so far."""

    hie: int
    floor: int
    drive: Callable[[int, Case, int, float, Path], Result]
    duration: float
    scratch: Path
    patients: list[str]
    masters: dict[int, int]  # port: the gunicorn master's pid
    rows: list[tuple[str, Result, int, float | None]] = field(default_factory=list)
    floor_rates: dict[int, float] = field(default_factory=dict)

    def run(self, port: int, case: Case, clients: int, seconds: float | None = None) -> Result:
        """One measurement, with the cores its server and the whole machine were busy meanwhile."""
        tick = os.sysconf("SC_CLK_TCK")
        server, machine, start = tree_jiffies(self.masters[port]), machine_jiffies(), time.perf_counter()
        result = self.drive(port, case, clients, seconds or self.duration, self.scratch)
        wall = (time.perf_counter() - start) * tick
        result.server_cores = (tree_jiffies(self.masters[port]) - server) / wall
        result.machine_cores = (machine_jiffies() - machine) / wall
        return result

    def settle(self) -> None:
        """Wait (60 s at most) until the server's queue has drained: /healthz answers at once three times in a row."""
        deadline, quick = time.monotonic() + 60, 0
        while quick < 3 and time.monotonic() < deadline:
            seconds = healthz_seconds(self.hie)
            quick = quick + 1 if seconds is not None and seconds < 0.02 else 0
            time.sleep(0.2)

    def record(self, label: str, result: Result, expect: int, ratio_to: float | None = None) -> Result:
        """Keep a row; its ratio is to the floor's read at the same concurrency unless another base is given."""
        base = ratio_to if ratio_to is not None else self.floor_rates.get(result.clients)
        self.rows.append((label, result, expect, result.rate / base if base else None))
        return result

    def series(self, label: str, port: int, case: Case) -> dict[int, Result]:
        """The case at every concurrency."""
        return {clients: self.record(label, self.run(port, case, clients), case.expect) for clients in CLIENTS}

    def bearer(self) -> dict[str, str]:
        """A fresh access token (they live 15 minutes); a login refused by the login bound (429) is retried."""
        login = json.dumps({"username": CLINICIAN, "password": PASSWORD})
        for _ in range(100):
            connection = http.client.HTTPConnection("127.0.0.1", self.hie, timeout=60)
            connection.request("POST", "/api/v1/auth/token", login, JSON)
            response = connection.getresponse()
            if response.status != 429:
                assert response.status == 200, response.read()[:300]
                return {"Authorization": f"Bearer {json.loads(response.read())['access_token']}", **JSON}
            time.sleep(0.3)
        raise RuntimeError("logins were answered 429 for 30 s")

    def reads(self) -> Case:
        """The audited patient read, cycling over every patient."""
        return Case("GET", [(f"/api/v1/patients/{p}", None) for p in self.patients], self.bearer())

    def logins(self) -> Case:
        """Successful logins, cycling over the login accounts."""
        bodies = [json.dumps({"username": f"login.{n:02d}", "password": PASSWORD}) for n in range(LOGIN_USERS)]
        return Case("POST", [("/api/v1/auth/token", body) for body in bodies], dict(JSON))


def measure(bench: Bench) -> tuple[Result, Result]:
    """Every row; returns the reads at 16 clients alone and during the login flood."""
    floor_read = Case("GET", [(f"/patients/{p}", None) for p in bench.patients], {})
    health = Case("GET", [("/healthz", None)], {})
    bench.run(bench.floor, floor_read, 16, 2)  # warm every worker's connection
    for port, label in ((bench.floor, "client ceiling: floor GET /healthz"), (bench.hie, "hie GET /healthz")):
        for clients in (16, 64):
            bench.record(label, bench.run(port, health, clients), 200)
    for clients in CLIENTS:
        result = bench.record("floor GET /patients/<id>", bench.run(bench.floor, floor_read, clients), 200)
        bench.floor_rates[clients] = result.rate
    reads = bench.reads()
    bench.run(bench.hie, reads, 16, 2)  # warm pools, caches and imports in every worker
    bench.series("GET /api/v1/patients/<id> (audited)", bench.hie, reads)
    path = f"/fhir/Patient/{bench.patients[0]}/$everything"
    everything = Case("GET", [(path, None)], bench.bearer())
    Client(bench.hie, everything.headers["Authorization"][7:]).call("GET", path)  # fills the cache the rows read
    bench.series(f"GET $everything cached ({HISTORY} res.)", bench.hie, everything)
    many = Case("POST", [("/fhir/Observation", observation(p, n)) for n, p in enumerate(bench.patients)],
                bench.bearer(), 201)
    bench.run(bench.hie, many, 16, 2)
    bench.series("POST /fhir/Observation, many patients", bench.hie, many)
    one = Case("POST", [("/fhir/Observation", observation(bench.patients[1], n)) for n in range(200)],
               bench.bearer(), 201)
    bench.series("POST /fhir/Observation, one patient", bench.hie, one)
    logins = bench.logins()
    for clients in CLIENTS:
        bench.record("POST /api/v1/auth/token (login)", bench.run(bench.hie, logins, clients), 200)
        bench.settle()  # logins still queued when the client stopped would weigh on the next row
    reads = bench.reads()
    alone = bench.record("GET patients/<id>, 16 alone (again)", bench.run(bench.hie, reads, 16), 200)
    flood_out: list[Result] = []
    flooding = threading.Thread(target=lambda: flood_out.append(
        bench.run(bench.hie, bench.logins(), FLOOD, bench.duration + 4)))
    flooding.start()
    time.sleep(2)
    during = bench.run(bench.hie, reads, 16)
    flooding.join()
    bench.settle()
    bench.record(f"GET patients/<id>, 16 during {FLOOD}-login flood", during, 200, alone.rate)
    bench.record(f"  the flood: {FLOOD} clients POST login", flood_out[0], 200)
    return alone, during


# --- report -------------------------------------------------------------------------------------------------------


def row(label: str, result: Result, expect: int, ratio: float | None) -> str:
    """One line of the table."""
    shown = "-" if ratio is None else f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"
    return (f"{label:<42} {result.clients:>3} {result.requests:>7} {result.rate:>8.1f} {result.p50:>8.1f} "
            f"{result.p99:>9.1f} {shown:>6} {result.server_cores:>4.1f} {result.machine_cores:>4.1f}  "
            f"{result.other(expect)}")


def find(bench: Bench, prefix: str, clients: int) -> tuple[Result, float | None]:
    """The row of an operation at a concurrency."""
    return next((r, ratio) for label, r, _, ratio in bench.rows if label.startswith(prefix) and r.clients == clients)


def targets(bench: Bench, alone: Result, during: Result) -> list[str]:
    """The issue's three load targets, met or missed."""
    read, ratio = find(bench, "GET /api/v1/patients", 16)
    one, _ = find(bench, "POST /fhir/Observation, one", 64)
    kept = during.rate / alone.rate if alone.rate else 0.0
    checks = ((f"audited read at 16 clients >= 0.7x floor: {ratio or 0:.2f}x ({read.rate:.0f} req/s)",
               (ratio or 0) >= 0.7),
              (f"Observation create, one patient, 64 clients: p99 {one.p99:.0f} ms < 200 ms", one.p99 < 200),
              (f"reads at 16 clients during the {FLOOD}-login flood keep {kept:.0%} >= 80% "
               f"({during.rate:.0f} of {alone.rate:.0f} req/s)", kept >= 0.8))
    return [f"  {'met   ' if ok else 'MISSED'} {text_}" for text_, ok in checks]


def working_tree() -> str:
    """Which code was measured: the commit, and the kernel files changed in the working tree."""
    def git(*words: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True, check=True).stdout

    try:
        commit, changed = git("rev-parse", "--short", "HEAD").strip(), git("status", "--short", "--", "hie/platform")
    except (OSError, subprocess.CalledProcessError):
        return "not a git work tree"
    files = [line[3:] for line in changed.splitlines() if line.strip()]
    return f"commit {commit}; hie/platform changed in the working tree: {', '.join(files) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--workers", type=int, default=5, help="gunicorn workers of both servers (hie's default "
                                                                 "on 2 cores)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    driver = "wrk" if args.driver == "wrk" or (args.driver == "auto" and shutil.which("wrk")) else "python"
    started, load_before, tree = time.perf_counter(), os.getloadavg()[0], working_tree()
    drop_databases(args.mysql)
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(Path(home), args.mysql, args.redis)
        app, patients = build(env, args.patients)
        servers: dict[int, subprocess.Popen[bytes]] = {}
        try:
            prepare(app, args.mysql, patients)
            hie_port = free_port()
            servers[hie_port] = start_server(env, hie_port, args.workers, args.threads, Path(home) / "serve.log")
            floor_port = free_port()
            servers[floor_port] = start_floor(args.mysql, floor_port, args.workers, args.threads,
                                              Path(home) / "floor.log")
            bench = Bench(hie_port, floor_port, wrk_drive if driver == "wrk" else python_drive, args.duration,
                          Path(home), patients, {port: server.pid for port, server in servers.items()})
            alone, during = measure(bench)
        finally:
            for server in servers.values():
                stop_server(server)
            app.extensions["hie.redis"].flushdb()
            app.extensions["hie.engines"].dispose()
            drop_databases(args.mysql)
    print(f"MariaDB + Redis; `hie serve` and the floor (bench/bare_app.py) each gunicorn gthread, {args.workers} "
          f"workers x {args.threads} threads, on 127.0.0.1; driver: {driver}; {args.duration:g} s per row; "
          f"{os.cpu_count()} cores shared by client, servers and databases; run took "
          f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"code measured: {tree}")
    print("req/s: completed requests per second, any status; p50/p99 of those completed; ratio: req/s over the "
          "floor's GET /patients/<id> at the same clients (the flood row: over the reads alone); srv: cores used by "
          "the measured server's processes; all: cores busy on the whole machine (client, databases, anything else)")
    print(f"{'operation':<42} {'cl':>3} {'n':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>9} {'ratio':>6} "
          f"{'srv':>4} {'all':>4}  other statuses")
    for label, result, expect, ratio in bench.rows:
        print(row(label, result, expect, ratio))
    print("targets (issue 12):")
    print("\n".join(targets(bench, alone, during)))


if __name__ == "__main__":
    main()
