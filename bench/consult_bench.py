"""Consultation figures on MariaDB + Redis through gunicorn: the request-to-opinion flow at 8 concurrent clients, and
the reading queue over 50,000 open reads.

A fresh region (hie_cbench_* databases, the Redis db flushed) of two tenants: the city (linfen, 临汾市人民医院 with
its reading departments) and a county (yaodu, a township centre asking); `hie serve` (gunicorn, gthread) on a free
127.0.0.1 port, driven by keep-alive http.client connections (bench/referral_bench.py's server and client helpers).
The flow goes through the API end to end: create (no records attached; care relationship opened), accept (a scheduled
time), start (the video room), opinion (signed, written to the patient's shared record in the requesting tenant's
shard), acknowledge, close. The queue's reads are bulk-inserted with SQLAlchemy core executemany, the rows
services.create writes (their steps, care relationships and outbox events are not: the queue does not read them).
Everything is dropped at the end.

    .venv/bin/python bench/consult_bench.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/14] [--flows 96] [--open-reads 50000] [--closed-reads 50000] [--reads 320]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import Engine, create_engine, event, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.referral_bench import (  # noqa: E402
    HEADER,
    PASSWORD,
    Client,
    Timings,
    free_port,
    repeat_get,
    row_lock_waits,
    run_clients,
    start_server,
    stop_server,
    token_of,
    verdict,
)
from hie.consult import queue  # noqa: E402
from hie.consult.models import Consultation, ConsultStatus, Kind, Urgency  # noqa: E402
from hie.consult.services import TURNAROUND  # noqa: E402
from hie.empi.models import PersonRecord  # noqa: E402
from hie.platform.app import create_app  # noqa: E402
from hie.platform.audit import services as audit  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role, User  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402
from hie.platform.standards import check_digit  # noqa: E402
from hie.tenants import services  # noqa: E402
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, RegionLevel  # noqa: E402

PREFIX = "hie_cbench_"
SEED = 20261130
READER_SITE, ASKER_SITE = "LF-PH", "YAODU-T1"
ASKER, READER, ADMIN = "t1.doctor", "lfph.reader", "city.stats"
CONSULTANTS = tuple(f"lfph.cardio{number}" for number in range(1, 9))  # one per client thread
DEPARTMENT = "心内科"
VIDEO = "https://video.hie.example/rooms/"  # only joined into room links; nothing is contacted
# township centres whose reads fill the city hospital's queues (code, name)
ASKERS = ((ASKER_SITE, "尧都区屯里镇卫生院"), ("YAODU-T2", "尧都区县底镇卫生院"), ("YAODU-T3", "尧都区吴村镇卫生院"),
          ("YAODU-T4", "尧都区刘村镇卫生院"))
# kind, department and share of the bulk-loaded reads
READ_MIX = ((Kind.imaging_read, "放射科", 55), (Kind.imaging_read, "超声科", 15), (Kind.ecg_read, "心电图室", 30))
OPEN_MIX = ((ConsultStatus.requested, 80), (ConsultStatus.accepted, 5), (ConsultStatus.in_session, 15))
CLOSED_MIX = ((ConsultStatus.closed, 70), (ConsultStatus.acknowledged, 10), (ConsultStatus.opinion_given, 10),
              (ConsultStatus.declined, 5), (ConsultStatus.cancelled, 5))
STEPS = ("create", "accept", "start", "opinion", "acknowledge", "close")


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
    return {"HIE_HOME": str(home), "HIE_SECRET_KEY": "c" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
            "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url,
            "HIE_VIDEO_BASE_URL": VIDEO}


def build(env: dict[str, str], patients: int) -> tuple[Flask, list[str]]:
    """The city and one county tenant, the asking and reading institutions, three clinicians, and patients
    registered at the township centre through the API (EMPI-linked); their record ids."""
    app = create_app(load_config(env))
    app.extensions["hie.redis"].flushdb()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        services.upgrade_all(engines)
        with session_scope(engines.platform) as session:
            services.ensure_region(session, "141000", "临汾市", RegionLevel.city, None)
            services.ensure_region(session, "141002", "尧都区", RegionLevel.county, "141000")
            for code, name, region in (("linfen", "临汾市", "141000"), ("yaodu", "尧都区", "141002")):
                services.provision(engines, services.add_tenant(session, app.config["HIE"], code, name, region))
            services.add_institution(session, READER_SITE, "临汾市人民医院", "linfen",
                                     InstitutionLevel.tertiary_hospital.value, "141000",
                                     InstitutionType.general_hospital.value)
            services.add_institution(session, "LF-HC", "临汾市卫生健康委员会", "linfen",
                                     InstitutionLevel.administration.value, "141000",
                                     InstitutionType.health_commission.value)
            accounts.add_user(session, ADMIN, [Role.health_admin], "LF-HC", PASSWORD)
            for code, name in ASKERS:
                services.add_institution(session, code, name, "yaodu", InstitutionLevel.township_health_centre.value,
                                         "141002", InstitutionType.primary_care.value)
            accounts.add_user(session, ASKER, [Role.clinician], ASKER_SITE, PASSWORD)
            for username in CONSULTANTS:
                accounts.add_user(session, username, [Role.specialist], READER_SITE, PASSWORD)
            accounts.add_user(session, READER, [Role.specialist], READER_SITE, PASSWORD)
    client = app.test_client()
    token = client.post("/api/v1/auth/token", json={"username": ASKER, "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    rng = random.Random(SEED)
    ids = []
    for index in range(patients):
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 60))
        body = f"141002{born:%Y%m%d}{rng.randrange(1000):03d}"
        response = client.post("/api/v1/patients", headers=headers, json={
            "mrn": f"T1-{index:05d}", "name": "李" + rng.choice(("秀英", "建国", "志强", "春梅", "玉兰", "国庆")),
            "sex": rng.choice("MF"), "birth_date": born.isoformat(), "id_number": body + check_digit(body),
            "phone": f"139{rng.randrange(10**8):08d}", "address": f"尧都区屯里镇{rng.randrange(1, 90)}号"})
        assert response.status_code == 201, response.get_data(as_text=True)[:300]
        ids.append(response.get_json()["id"])
    return app, ids


# --- (a) the request-to-opinion flow ----------------------------------------------------------------------------


def flow_bodies(patient_id: str, consultant: str, serial: int, base: datetime) -> dict[str, dict[str, Any]]:
    """The body of each step of one flow; each flow's session gets its own hour, so no booking conflicts."""
    scheduled = (base + timedelta(hours=serial)).isoformat(timespec="seconds")
    return {
        "create": {"kind": "consultation", "urgency": "routine", "patient_id": patient_id,
                   "consultant_institution": READER_SITE, "department": DEPARTMENT, "consultant": consultant,
                   "question": "高血压合并胸闷三月，心电图ST段压低，请协助制定下一步诊疗方案。", "records": []},
        "accept": {"scheduled_at": scheduled, "duration_minutes": 30},
        "start": {},
        "opinion": {"findings": "静息心电图II、III、aVF导联ST段压低0.1mV。", "impression": "稳定型心绞痛可能",
                    "diagnoses": [{"code": "I20.8", "text": "其他类型的心绞痛"}],
                    "recommendations": "加用阿司匹林与他汀，完善平板运动试验，一月后复诊。", "refer": False},
        "acknowledge": {},
        "close": {},
    }


def run_flows(port: int, tokens: dict[str, str], patients: list[str], clients: int, flows: int,
              serials: itertools.count, consultants: tuple[str, ...]) -> tuple[dict[str, Timings], float, list[str]]:
    """`flows` consultations taken from request to close, split over `clients` threads, thread n's answered by
    consultants[n % len(consultants)]; per step timings, the wall time, and the refusals (a flow that meets one is
    abandoned)."""
    share = max(flows // clients, 1)
    base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    numbers = [next(serials) for _ in range(share * clients)]
    failures: list[str] = []

    def connect() -> dict[str, Client]:
        return {"asker": Client(port, tokens[ASKER]),
                **{name: Client(port, tokens[name]) for name in consultants}}

    def work(number: int, conns: dict[str, Client]) -> dict[str, list[float]]:
        consultant = consultants[number % len(consultants)]
        out: dict[str, list[float]] = {step: [] for step in (*STEPS, "flow")}
        # each thread its own patients: two first opinions on one person at once hit the exchange registry's
        # check-then-insert race (a duplicate key, 500), which bench/README_consult.md reports
        own = patients[number::clients]
        for index, serial in enumerate(numbers[number * share:(number + 1) * share]):
            bodies = flow_bodies(own[index % len(own)], consultant, serial, base)
            taken: dict[str, float] = {}
            made: dict[str, Any] = {}
            for step in STEPS:
                side = consultant if step in ("accept", "start", "opinion") else "asker"
                path = "/api/v1/consultations" + (f"/{made['id']}/{step}" if made else "")
                try:
                    taken[step], answer = conns[side].call("POST", path, bodies[step],
                                                           201 if step in ("create", "opinion") else 200)
                except RuntimeError as refused:  # a 500 or 409 under load: counted, the flow abandoned
                    out.setdefault(f"{step} failed", []).append(0.0)
                    failures.append(f"{step} {str(refused).split(': ', 1)[1][:130]}")
                    break
                made = made or answer
                out[step].append(taken[step])
            if len(taken) == len(STEPS):
                out["flow"].append(sum(taken.values()))
        return out

    timings, wall = run_clients(clients, work, connect)
    return timings, wall, failures


# --- (b) the reading queue over 50,000 open reads ---------------------------------------------------------------


def _mix(pairs: tuple[tuple[Any, ...], ...]) -> list[tuple[Any, ...]]:
    return [pair[:-1] for pair in pairs for _ in range(pair[-1])]


def load_reads(app: Flask, open_reads: int, closed_reads: int) -> float:
    """Open and closed reads of the city hospital, as services.create and the moves leave them, in batched INSERTs."""
    start = time.perf_counter()
    engine = app.extensions["hie.engines"].platform
    rng = random.Random(SEED + 1)
    with session_scope(engine) as session:
        sites = dict(session.execute(select(Institution.code, Institution.id)).all())
        users = dict(session.execute(select(User.username, User.id)).all())
        persons = session.execute(select(PersonRecord.patient_id, PersonRecord.person_id)).all()
    kinds, open_mix, closed_mix = _mix(READ_MIX), _mix(OPEN_MIX), _mix(CLOSED_MIX)
    now = datetime.now(UTC)
    rows = []
    for number in range(open_reads + closed_reads):
        kind, department = rng.choice(kinds)
        opened = number < open_reads
        (status,) = rng.choice(open_mix if opened else closed_mix)
        urgency = Urgency.urgent if rng.random() < 0.2 else Urgency.routine
        # open reads wait up to two days (the oldest overdue); closed ones spread over a year
        made = now - timedelta(minutes=rng.randrange(2 * 24 * 60 if opened else 365 * 24 * 60))
        asker = ASKERS[number % len(ASKERS)][0]
        patient, person = persons[number % len(persons)]
        claimed = status is ConsultStatus.in_session or (not opened and status is not ConsultStatus.requested)
        moved = made + timedelta(minutes=rng.randrange(5, 600))
        opinion = status in (ConsultStatus.opinion_given, ConsultStatus.acknowledged, ConsultStatus.closed)
        rows.append({
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "kind": kind, "urgency": urgency,
            "status": status, "requester_institution_id": sites[asker], "requester_user_id": users[ASKER],
            "requester_tenant_code": "yaodu", "patient_id": patient, "master_person_id": person,
            "consultant_institution_id": sites[READER_SITE], "department": department,
            "consultant_user_id": users[READER] if claimed else None,
            "question": "请阅片，排除肺部占位。" if kind is Kind.imaging_read else "请判读十二导联心电图。",
            "records": [], "scheduled_at": None, "duration_minutes": None, "video_room": None,
            "claimed_by": users[READER] if claimed else None,
            "claim_expires_at": (now + timedelta(minutes=rng.randrange(-60, 30))) if claimed else None,
            "due_at": made + TURNAROUND[urgency], "created_at": made, "updated_at": moved if not opened else made,
            "answered_at": moved if status is not ConsultStatus.requested else None,
            "opinion_at": moved if opinion else None,
            "closed_at": moved if status is ConsultStatus.closed else None})
    with engine.begin() as conn:
        for begin in range(0, len(rows), 2000):
            conn.execute(insert(Consultation), rows[begin:begin + 2000])
        conn.exec_driver_sql("ANALYZE TABLE consultations")
    return time.perf_counter() - start


def missing_routes(app: Flask, rules: list[str]) -> list[str]:
    """The routes (as Flask spells their rules) the app does not have: other helpers may still be writing them."""
    present = {rule.rule for rule in app.url_map.iter_rules()}
    return [rule for rule in rules if rule not in present]


def in_process(app: Flask, paths: dict[str, str], requests: int) -> list[str]:
    """Each page requested in process (Flask test client, one thread, same databases): where a request's time goes,
    as the mean of the request, of all its SQL statements, and of the audit append among them."""
    spent: dict[str, Any] = {"sql": 0.0, "audit": 0.0, "statements": 0, "by": collections.Counter()}
    original = audit.append

    def before(_conn: Any, _cursor: Any, _statement: Any, _params: Any, context: Any, _many: Any) -> None:
        context.bench_started = time.perf_counter()

    def after(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: Any) -> None:
        took = time.perf_counter() - context.bench_started
        spent["sql"] += took
        spent["statements"] += 1
        flat = " ".join(statement.split())
        spent["by"][f"{flat[:50]} … {flat[-60:]}" if len(flat) > 115 else flat] += took

    def timed_append(engine: Any, keyring: Any, pending: Any) -> list[int]:
        start = time.perf_counter()
        seqs = original(engine, keyring, pending)
        spent["audit"] += time.perf_counter() - start
        return seqs

    client = app.test_client()
    answer = client.post("/api/v1/auth/token", json={"username": READER, "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    lines = []
    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    audit.append = timed_append
    try:
        for name, path in paths.items():
            client.get(path, headers=headers)
            spent.update(sql=0.0, audit=0.0, statements=0, by=collections.Counter())
            start = time.perf_counter()
            for _ in range(requests):
                response = client.get(path, headers=headers)
                assert response.status_code == 200, response.get_data(as_text=True)[:300]
            total = (time.perf_counter() - start) / requests * 1000
            sql, appended = spent["sql"] / requests * 1000, spent["audit"] / requests * 1000
            statements = spent["statements"] / requests
            lines.append(f"{name:<22} request {total:6.1f} ms; SQL {sql:6.1f} ms in {statements:.0f} statements; "
                         f"audit append {appended:5.1f} ms (its SQL included)")
            slowest, took = spent["by"].most_common(1)[0]
            lines.append(f"{'':<22} slowest statement {took / requests * 1000:6.1f} ms: {slowest}")
    finally:
        audit.append = original
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "after_cursor_execute", after)
    with session_scope(app.extensions["hie.engines"].platform) as session:
        site = session.scalar(select(Institution.id).where(Institution.code == READER_SITE))
        where = [Consultation.consultant_institution_id == site, Consultation.kind == Kind.imaging_read]
        counted = []
        for _ in range(5):
            start = time.perf_counter()
            length = queue._count(session, where)  # noqa: SLF001 - the bench looks inside on purpose
            counted.append((time.perf_counter() - start) * 1000)
    lines.append(f"the imaging queue's length counted uncached ({length:,} open reads): median "
                 f"{statistics.median(counted):.1f} ms of 5")
    return lines


class _Printer(list):
    """Report lines, printed as they come (a long phase that fails keeps what was measured before it)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def _refusals(out: _Printer, failures: list[str]) -> None:
    """How many flows each kind of refusal abandoned (the server's log, kept on failure only, has the tracebacks)."""
    for reason, count in collections.Counter(failure[:100] for failure in failures).items():
        out.append(f"      {count} x {reason}")


def flow_phase(out: _Printer, app: Flask, port: int, tokens: dict[str, str], patients: list[str],
               args: argparse.Namespace) -> None:
    """(a): warm-up, then --flows flows at each concurrency, each step's timings and the flows per second."""
    missing = missing_routes(app, ["/api/v1/consultations", *(f"/api/v1/consultations/<string:consultation_id>/{step}"
                                                              for step in STEPS[1:])])
    if missing:
        out.append(f"    not run: {', '.join(missing)} did not exist yet")
        return
    serials = itertools.count()
    consultants = CONSULTANTS[:1] if args.one_consultant else CONSULTANTS
    warm = run_flows(port, tokens, patients, 8, 16, serials, consultants)[2]  # warm pools, caches, signing keys
    out.append(f"    warm-up: 16 flows at 8 clients (first signatures make the keys), {len(warm)} abandoned")
    _refusals(out, warm)
    out.append("    " + HEADER)
    for clients in sorted({1, args.clients}):
        waits_before, waited_before = row_lock_waits(args.mysql)
        timings, wall, failures = run_flows(port, tokens, patients, clients, args.flows, serials, consultants)
        waits, waited = row_lock_waits(args.mysql)
        flows = len(timings["flow"].seconds)
        for step in STEPS:
            failed = len(timings[f"{step} failed"].seconds) if f"{step} failed" in timings else 0
            if timings[step].seconds:
                out.append("    " + timings[step].line(f"POST {step}", clients, f"{failed} failed" if failed else ""))
            elif failed:
                out.append(f"    POST {step:<29} {clients:>3}: all {failed} failed")
        if flows:
            out.append("    " + timings["flow"].line("the six requests of a flow", clients))
        tried = args.flows // clients * clients
        out.append(f"    {clients} clients: {flows} of {tried} flows completed in {wall:.1f} s = {flows / wall:.1f} "
                   f"flows/s; {waits - waits_before} InnoDB row-lock waits, "
                   f"{waited - waited_before} ms waited")
        _refusals(out, failures)


def queue_phase(out: _Printer, app: Flask, port: int, tokens: dict[str, str], args: argparse.Namespace) -> None:
    """(b): the reads bulk-loaded, then the queue's pages at 1 and 8 clients."""
    loaded = load_reads(app, args.open_reads, args.closed_reads)
    out.append(f"(b) GET /api/v1/reading-queue: {args.open_reads:,} open and {args.closed_reads:,} ended reads of "
               f"{READER_SITE} bulk-loaded in {loaded:.0f} s")
    paths = {"imaging first page": "/api/v1/reading-queue?kind=imaging_read",
             "imaging department": "/api/v1/reading-queue?kind=imaging_read&department=放射科",
             "ecg first page": "/api/v1/reading-queue?kind=ecg_read",
             "imaging page 50": "/api/v1/reading-queue?kind=imaging_read&page=50"}
    paths = {name: path.replace("放射科", "%E6%94%BE%E5%B0%84%E7%A7%91") for name, path in paths.items()}
    if missing_routes(app, ["/api/v1/reading-queue"]):
        out.append("    not run: GET /api/v1/reading-queue did not exist yet")
        return
    _, first = Client(port, tokens[READER]).call("GET", paths["imaging first page"])
    out.append(f"    first page: {len(first)} entries, the first {first[0]['urgency']} waiting "
               f"{first[0]['waiting_minutes']} min" if first else "    first page: empty")
    repeat_get(port, tokens[READER], 8, 64, paths)  # warm-up
    out.append("    " + HEADER)
    for clients in (1, 8):
        read = repeat_get(port, tokens[READER], clients, args.reads, paths)
        for name, timings in read.items():
            out.append("    " + timings.line(f"GET {name}", clients, verdict(timings.p(0.99), 50, "p99")))
        out.append(f"    slowest at {clients} client{'s' if clients > 1 else ''} (the queue length is recounted when "
                   f"its {queue.COUNT_TTL} s cache lapses): "
                   + ", ".join(f"{name} {max(timings.seconds) * 1000:.0f} ms" for name, timings in read.items()))
    out.append("    in process, one thread, mean of 50 requests each:")
    for line in in_process(app, paths, 50):
        out.append("      " + line)


def figures_phase(out: _Printer, port: int, token: str) -> None:
    """(c): the administrators' figures over everything above (the default window: twelve months)."""
    out.append("(c) GET /api/v1/stats/consultations over the same rows, as a city health administrator")
    admin = Client(port, token)
    for name, query in (("total", ""), ("by kind and month", "?group_by=kind,month"),
                        ("by requester and consultant", "?group_by=requester,consultant"),
                        ("by department", "?group_by=department")):
        times, body = [], {}
        for _ in range(5):
            seconds, body = admin.call("GET", f"/api/v1/stats/consultations{query}")
            times.append(seconds * 1000)
        out.append(f"    {name:<28} {len(body['groups']):>3} groups  median {statistics.median(times):6.0f} ms  "
                   f"max {max(times):6.0f} ms")
        if not query:
            total = body["total"]
            out.append("    total: " + ", ".join(f"{key} {total[key]}" for key in (
                "requests", "answered_share", "median_minutes_to_opinion", "reads_due", "reads_within_deadline_share")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--flows", type=int, default=96, help="flows per concurrency")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--one-consultant", action="store_true",
                        help="every flow answered by one consultant (default: one consultant per client thread)")
    parser.add_argument("--open-reads", type=int, default=50_000)
    parser.add_argument("--closed-reads", type=int, default=50_000)
    parser.add_argument("--reads", type=int, default=320, help="queue requests per case and concurrency")
    parser.add_argument("--patients", type=int, default=48)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    drop_databases(args.mysql)
    out = _Printer()
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(Path(home), args.mysql, args.redis)
        app, patients = build(env, args.patients)
        port = free_port()
        server = start_server(env, port, args.workers, args.threads, Path(home) / "serve.log")
        try:
            tokens = {name: token_of(port, name) for name in (ASKER, READER, ADMIN, *CONSULTANTS)}
            out.append(f"(a) request to opinion: create, accept, start, opinion, acknowledge, close; {ASKER_SITE} "
                       f"asks {READER_SITE} ({DEPARTMENT}), two tenants")
            flow_phase(out, app, port, tokens, patients, args)
            queue_phase(out, app, port, tokens, args)
            figures_phase(out, port, tokens[ADMIN])
        except Exception:
            kept = Path(tempfile.gettempdir()) / "consult_bench_serve.log"
            kept.write_text((Path(home) / "serve.log").read_text())
            print(f"the server's log is kept in {kept}", file=sys.stderr)
            raise
        finally:
            stop_server(server)
            logged = (Path(home) / "serve.log").read_text().splitlines()
            errors = collections.Counter(line.strip()[:150] for line in logged if line.startswith("  sqlalchemy.exc."))
            app.extensions["hie.redis"].flushdb()
            app.extensions["hie.engines"].dispose()
            drop_databases(args.mysql)
    print(f"MariaDB + Redis, `hie serve` (gunicorn gthread, {args.workers} workers x {args.threads} threads) on "
          f"127.0.0.1, driven by a Python client (threads, one keep-alive http.client connection each); "
          f"{os.cpu_count()} cores shared by client, server and databases; run took "
          f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print("the server's 500s, by the database error behind them:" if errors else "the server logged no 500")
    for line, count in errors.most_common():
        print(f"  {count} x {line}")


if __name__ == "__main__":
    main()
