"""Database restart drill (issue 12, item 6): restart MariaDB under a steady read loop and count what clients saw.

A private MariaDB server (its own data directory under a temporary directory, 127.0.0.1 on a free port, no grant
tables), so the machine's shared server and whoever uses it are not disturbed. A region on it and Redis
(bench/referral_bench.py's build), `hie serve` (gunicorn, 5 workers x 4 threads), and `--clients` threads reading
`GET /api/v1/patients/<id>` at `--rate` requests a second in all. After `--before` seconds the server is stopped
(SIGTERM, as `systemctl restart` does), kept down `--down` seconds, started again on the same data; the reads go on
`--after` seconds. Printed: the statuses before, during and after the outage, the 500s (target 0), how long after
the database accepted connections again the first read succeeded (target under 2 s), the server log's tracebacks
and outage lines, and `hie audit verify` at the end.

    .venv/bin/python bench/db_restart_drill.py [--redis redis://127.0.0.1:6379/10] [--rate 20] [--clients 4]
        [--before 5] [--down 7] [--after 10]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.referral_bench import SENDER, USERS, build, free_port, start_server, stop_server, token_of  # noqa: E402
from hie.platform.audit.services import chain_pending, verify  # noqa: E402
from hie.tenants.services import shard_engines  # noqa: E402

PREFIX = "hie_dbdrill_"


class PrivateMariaDB:
    """A mariadbd of our own: initialised once, stopped and started on the same data directory."""

    def __init__(self, base: Path) -> None:
        self.data, self.socket, self.port = base / "data", base / "mysqld.sock", free_port()
        self.log = base / "mariadbd.log"
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start the server; returns the monotonic time it first accepted a connection."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
                 "--innodb-buffer-pool-size=128M", "--max-connections=500"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return time.monotonic()
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mariadbd did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> float:
        """SIGTERM and wait for a clean shutdown; returns the monotonic time the stop began."""
        began = time.monotonic()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=120)
        return began


class Reader:
    """`clients` threads reading patients at `rate` a second in all; every answer kept as (time, status)."""

    def __init__(self, port: int, token: str, patients: list[str], clients: int, rate: float) -> None:
        self.port, self.token, self.patients = port, token, patients
        self.interval = clients / rate
        self.stop = threading.Event()
        self.seen: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, args=(n,)) for n in range(clients)]

    def _read(self, offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}"}
        number = offset
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                connection.request("GET", f"/api/v1/patients/{self.patients[number % len(self.patients)]}",
                                   headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0  # the socket failed: counted, and a new connection made
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.seen.append((time.monotonic(), status))
            number += len(self.threads)
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def __enter__(self) -> Reader:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def statuses(seen: list[tuple[float, int]], start: float, end: float) -> str:
    counts = Counter(status for at, status in seen if start <= at < end)
    return ", ".join(f"{status or 'socket error'}: {count}" for status, count in sorted(counts.items())) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--down", type=float, default=7.0)
    parser.add_argument("--after", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as base:
        database = PrivateMariaDB(Path(base))
        database.start()
        home = Path(base) / "home"
        env = {"HIE_HOME": str(home), "HIE_SECRET_KEY": "d" * 40,
               "HIE_PLATFORM_DB_URL": f"{database.url}/{PREFIX}platform",
               "HIE_TENANT_DB_URL_TEMPLATE": f"{database.url}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": args.redis}
        try:
            app, patients = build(env, 20)
            port = free_port()
            server = start_server(env, port, 5, 4, Path(base) / "serve.log")
            try:
                token = token_of(port, USERS[SENDER])
                with Reader(port, token, patients, args.clients, args.rate) as reader:
                    time.sleep(args.before)
                    down = database.stop()
                    time.sleep(args.down)
                    up = database.start()
                    time.sleep(args.after)
                    end = time.monotonic()
            finally:
                stop_server(server)
            report(reader.seen, down, up, end, Path(base) / "serve.log")
            engines = app.extensions["hie.engines"]
            shards = shard_engines(engines, app.config["HIE"])
            chained = chain_pending(engines.platform, app.extensions["hie.keyring"], wait=True, shards=shards)
            checked, problems = verify(engines.platform, app.extensions["hie.keyring"], shards)
            print(f"audit: {chained} event(s) left pending, chained now; hie audit verify: {checked} events, "
                  f"{len(problems)} problem(s)")
            app.extensions["hie.redis"].flushdb()
            engines.dispose()
        finally:
            database.stop()
            shutil.rmtree(base, ignore_errors=True)


def report(seen: list[tuple[float, int]], down: float, up: float, end: float, log: Path) -> None:
    """What the clients saw in each phase, the recovery time and what the server logged."""
    first = min(at for at, _ in seen)
    recovered = next((at for at, status in sorted(seen) if at >= up and status == 200), None)
    failed_after = [status for at, status in seen if at >= up and status != 200 and (recovered is None or
                                                                                      at > recovered)]
    text = log.read_text(errors="replace")
    print(f"reads: {len(seen)} in {end - first:.1f} s; database down {up - down:.1f} s (stop to first connection)")
    print(f"  before the stop:          {statuses(seen, first, down)}")
    print(f"  while the database was down: {statuses(seen, down, up)}")
    print(f"  after it was back:        {statuses(seen, up, end + 1)}")
    print(f"500 answers: {sum(1 for _, status in seen if status == 500)} (target 0)")
    print("first successful read after the database accepted connections: " +
          (f"{recovered - up:.2f} s (target < 2 s)" if recovered is not None else "never") +
          f"; failures after that: {len(failed_after)}")
    print(f"server log: {text.count('Traceback')} traceback(s), {text.count('database unreachable')} outage line(s)")
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            logged = lines[index - 1][:200] if index else ""
            raised = next((later for later in lines[index + 1:] if later and not later.startswith(" ")), "?")
            print(f"  after {logged!r}: {raised[:300]}")


if __name__ == "__main__":
    os.environ.setdefault("HIE_LOG_LEVEL", "WARNING")
    main()
