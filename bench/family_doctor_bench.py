"""Family-doctor figures on MariaDB + Redis through gunicorn: a village doctor's offline batch, a 5,000-resident
team's worklist, and the region's administrator figures over 1,000,000 vitals.

A fresh region (hie_fdbench_* databases, the Redis db flushed) of three tenants (the city, 尧都区, 曲沃县); `hie serve`
(gunicorn, gthread) on a free 127.0.0.1 port, driven by keep-alive http.client connections (bench/referral_bench.py's
server and client helpers). Readings for the batch go through the API end to end (exchange Observations in the
shard, the readings index, alerts, audit); the worklist's 5,000 contracts and the figures' million readings and
follow-ups are bulk-inserted with SQLAlchemy core executemany, the rows the services write. Everything is dropped
at the end.

    .venv/bin/python bench/family_doctor_bench.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/13] [--vitals 1000000] [--persons 120000] [--batches 5] [--reads 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import create_engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.referral_bench import (  # noqa: E402
    HEADER,
    PASSWORD,
    Client,
    free_port,
    repeat_get,
    start_server,
    stop_server,
    token_of,
    verdict,
)
from hie.family_doctor.models import (  # noqa: E402
    Alert,
    Contract,
    ContractStatus,
    FollowUp,
    FollowUpStatus,
    Population,
    Setting,
    Team,
    TeamMember,
    TeamRole,
    Vitals,
)
from hie.platform.app import create_app  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role, User  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402
from hie.platform.standards import check_digit  # noqa: E402
from hie.tenants import services  # noqa: E402
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, RegionLevel  # noqa: E402

PREFIX = "hie_fdbench_"
SEED = 20261130
LEAD, VILLAGE, ADMIN = "t1.lead", "v1.doctor", "city.stats"
TEAM = "Y1-A"
COUNTIES = (("yaodu", "141002", "尧都区", 10), ("quwo", "141021", "曲沃县", 5))  # tenant, code, name, townships
PACKAGES = ((["basic", "hypertension"], ["hypertension"], 40), (["basic", "diabetes"], ["diabetes"], 15),
            (["basic", "hypertension", "diabetes"], ["hypertension", "diabetes"], 5),
            (["basic", "elderly"], ["elderly_65"], 25), (["basic"], [], 15))


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
    return {"HIE_HOME": str(home), "HIE_SECRET_KEY": "f" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
            "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url}


def build(env: dict[str, str], residents: int) -> tuple[Flask, list[str]]:
    """Three tenants, a township centre per township, team Y1-A (a lead doctor and a village doctor), and residents
    registered and signed through the API; the contract ids of those residents."""
    app = create_app(load_config(env))
    app.extensions["hie.redis"].flushdb()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        services.upgrade_all(engines)
        with session_scope(engines.platform) as session:
            services.ensure_region(session, "141000", "临汾市", RegionLevel.city, None)
            city = services.add_tenant(session, app.config["HIE"], "linfen", "临汾市", "141000")
            services.provision(engines, city)
            services.add_institution(session, "LF-HC", "临汾市卫生健康委员会", "linfen",
                                     InstitutionLevel.administration.value, "141000",
                                     InstitutionType.health_commission.value)
            for tenant_code, code, name, townships in COUNTIES:
                services.ensure_region(session, code, name, RegionLevel.county, "141000")
                tenant = services.add_tenant(session, app.config["HIE"], tenant_code, name, code)
                services.provision(engines, tenant)
                for number in range(townships):
                    township = f"{code}{100 + number}"
                    services.ensure_region(session, township, f"{name}{number + 1}镇", RegionLevel.township, code)
                    services.add_institution(session, f"{tenant_code.upper()}-T{number + 1}",
                                             f"{name}{number + 1}镇卫生院", tenant_code,
                                             InstitutionLevel.township_health_centre.value, township,
                                             InstitutionType.primary_care.value)
            services.add_institution(session, "YAODU-V1", "尧都区1镇东关村卫生室", "yaodu",
                                     InstitutionLevel.village_clinic.value, "141002100",
                                     InstitutionType.primary_care.value)
            accounts.add_user(session, LEAD, [Role.family_doctor], "YAODU-T1", PASSWORD)
            accounts.add_user(session, VILLAGE, [Role.clinician], "YAODU-V1", PASSWORD)
            accounts.add_user(session, ADMIN, [Role.health_admin], "LF-HC", PASSWORD)
            session.flush()
            ids = dict(session.execute(select(Institution.code, Institution.id)).all())
            users = dict(session.execute(select(User.username, User.id)).all())
            for tenant_code, _code, _name, townships in COUNTIES:
                for number in range(townships):
                    for letter in "ABC":
                        session.add(Team(code=f"{tenant_code[0].upper()}{number + 1}-{letter}",
                                         name=f"{number + 1}镇{letter}队",
                                         institution_id=ids[f"{tenant_code.upper()}-T{number + 1}"]))
            session.flush()
            team_id = session.scalar(select(Team.id).where(Team.code == TEAM))
            session.add_all([TeamMember(user_id=users[LEAD], team_id=team_id, team_role=TeamRole.lead_doctor),
                             TeamMember(user_id=users[VILLAGE], team_id=team_id, team_role=TeamRole.village_doctor)])
    client = app.test_client()
    token = client.post("/api/v1/auth/token", json={"username": LEAD, "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    rng = random.Random(SEED)
    contracts = []
    for index in range(residents):
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 40))
        body = f"141002{born:%Y%m%d}{rng.randrange(1000):03d}"
        response = client.post("/api/v1/patients", headers=headers, json={
            "mrn": f"T1-{index:05d}", "name": "王" + rng.choice(("秀英", "建国", "志强", "春梅", "玉兰", "国庆")),
            "sex": rng.choice("MF"), "birth_date": born.isoformat(), "id_number": body + check_digit(body),
            "phone": f"139{rng.randrange(10**8):08d}", "address": f"尧都区1镇东关村{index + 1}号"})
        assert response.status_code == 201, response.get_data(as_text=True)[:300]
        signed = client.post("/api/v1/family-doctor/contracts", headers=headers, json={
            "patient_id": response.get_json()["id"], "packages": ["basic", "hypertension"],
            "priority_groups": ["hypertension"]})
        assert signed.status_code == 201, signed.get_data(as_text=True)[:300]
        contracts.append(signed.get_json()["id"])
    return app, contracts


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _insert(app: Flask, model: Any, rows: list[dict[str, Any]], size: int = 5000) -> None:
    with app.extensions["hie.engines"].platform.begin() as conn:
        for chunk in _chunks(rows, size):
            conn.execute(insert(model), chunk)


def _contract_row(rng: random.Random, team: tuple[int, int, str], now: datetime, packages: list[str],
                  groups: list[str]) -> dict[str, Any]:
    person = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    signed = now - timedelta(days=rng.randrange(20, 360), minutes=rng.randrange(1440))
    starts = signed.date()
    return {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "team_id": team[0], "institution_id": team[1],
            "tenant_code": team[2], "patient_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "master_person_id": person, "active_person_id": person, "packages": packages, "priority_groups": groups,
            "region_code": None, "status": ContractStatus.active, "starts_on": starts,
            "ends_on": starts + timedelta(days=364), "signed_by": 1, "signed_at": signed, "ended_at": None,
            "ended_by": None, "end_reason": None, "previous_id": None}


def _follow_up(contract: dict[str, Any], condition: str, due: date, done: datetime | None,
               rng: random.Random) -> dict[str, Any]:
    hypertension = condition == "hypertension"
    return {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "contract_id": contract["id"],
            "team_id": contract["team_id"], "institution_id": contract["institution_id"],
            "master_person_id": contract["master_person_id"], "condition": condition,
            "status": FollowUpStatus.done if done else FollowUpStatus.scheduled, "due_on": due, "done_at": done,
            "done_by": 1 if done else None, "face_to_face": True if done else None, "form": None,
            "systolic": rng.gauss(138, 14) if done and hypertension else None,
            "diastolic": rng.gauss(86, 9) if done and hypertension else None,
            "fasting_glucose": rng.gauss(7.2, 1.8) if done and not hypertension else None,
            "classification": None, "vitals_id": None, "referral_id": None, "created_at": now_utc()}


def now_utc() -> datetime:
    return datetime.now(UTC)


def load_worklist(app: Flask, residents: int) -> float:
    """Team Y1-A up to `residents` active contracts, each with its next hypertension follow-up (due from 30 days ago
    to 60 days ahead), one in ten with an open alert; contracts end over the coming year."""
    start, rng, now = time.perf_counter(), random.Random(SEED + 1), now_utc()
    with session_scope(app.extensions["hie.engines"].platform) as session:
        team = session.execute(select(Team.id, Team.institution_id).where(Team.code == TEAM)).one()
        have = session.scalar(select(Contract.id).where(Contract.team_id == team[0]).limit(1)) is not None
    contracts, follow_ups, alerts = [], [], []
    for _ in range(residents - (50 if have else 0)):
        row = _contract_row(rng, (team[0], team[1], "yaodu"), now, ["basic", "hypertension"], ["hypertension"])
        row["ends_on"] = now.date() + timedelta(days=rng.randrange(1, 365))
        contracts.append(row)
        follow_ups.append(_follow_up(row, "hypertension", now.date() + timedelta(days=rng.randrange(-30, 60)), None,
                                     rng))
        if rng.random() < 0.1:
            alerts.append({"team_id": team[0], "contract_id": row["id"], "master_person_id": row["master_person_id"],
                           "kind": "reading", "message": "收缩压 ≥ 180 mmHg", "created_at": now - timedelta(
                               hours=rng.randrange(1, 500))})
    _insert(app, Contract, contracts)
    _insert(app, FollowUp, follow_ups)
    _insert(app, Alert, alerts)
    return time.perf_counter() - start


def load_region(app: Flask, persons: int, readings: int) -> tuple[float, int, int, int]:
    """`persons` contracted residents over every team of the region (package mix PACKAGES), the chronic ones with a
    year of quarterly follow-ups (one in eight stopped coming after the first) and `readings` staff and home
    readings spread over them across 13 months; registered populations per township."""
    start, rng, now = time.perf_counter(), random.Random(SEED + 2), now_utc()
    with session_scope(app.extensions["hie.engines"].platform) as session:
        teams = [(tid, iid, code) for tid, iid, code in session.execute(
            select(Team.id, Team.institution_id, Institution.code).join(Institution,
                                                                          Institution.id == Team.institution_id))]
        towns = dict(session.execute(select(Institution.code, Institution.region_code)).all())
    mix = [(packages, groups) for packages, groups, share in PACKAGES for _ in range(share)]
    contracts, follow_ups, chronic = [], [], []
    for _ in range(persons):
        team_id, institution_id, code = rng.choice(teams)
        packages, groups = rng.choice(mix)
        row = _contract_row(rng, (team_id, institution_id, code.split("-")[0].lower()), now, packages, groups)
        contracts.append(row)
        conditions = [c for c in ("hypertension", "diabetes") if c in packages]
        if conditions:
            chronic.append(row)
        dropped = rng.random() < 0.125
        for condition in conditions:
            due = row["starts_on"] + timedelta(days=14)
            while due < now.date() + timedelta(days=90):
                late = timedelta(days=rng.choice((0, 0, 0, 1, 3, 10)), hours=rng.randrange(1, 10))
                done_at = datetime.combine(due, datetime.min.time(), UTC) + late
                done = done_at if done_at < now and not (dropped and due > row["starts_on"] + timedelta(30)) else None
                follow_ups.append(_follow_up(row, condition, due, done, rng))
                if done is None:
                    break
                due += timedelta(days=90)
    _insert(app, Contract, contracts)
    _insert(app, FollowUp, follow_ups)
    vitals = []
    for number in range(readings):
        row = rng.choice(chronic) if rng.random() < 0.9 else rng.choice(contracts)
        setting = rng.choice((Setting.clinic, Setting.clinic, Setting.home_visit, Setting.self_device))
        hypertension = "hypertension" in row["packages"] or rng.random() < 0.5
        vitals.append({
            "user_id": 1, "client_id": f"bulk-{number}", "master_person_id": row["master_person_id"],
            "tenant_code": row["tenant_code"], "patient_id": row["patient_id"],
            "institution_id": row["institution_id"], "team_id": row["team_id"], "contract_id": row["id"],
            "taken_at": now - timedelta(minutes=rng.randrange(395 * 1440)), "setting": setting,
            "self_reported": setting is Setting.self_device,
            "systolic": rng.gauss(136, 15) if hypertension else None,
            "diastolic": rng.gauss(85, 9) if hypertension else None, "heart_rate": rng.gauss(76, 8),
            "fasting_glucose": None if hypertension else rng.gauss(7.1, 1.7), "random_glucose": None,
            "weight": None, "height": None, "bmi": None, "waist": None, "spo2": None, "temperature": None,
            "observations": [], "created_at": now})
        if len(vitals) == 50_000:
            _insert(app, Vitals, vitals, 10_000)
            vitals.clear()
    _insert(app, Vitals, vitals, 10_000)
    populations = [{"region_code": towns[code], "priority_group": group, "year": now.year,
                    "persons": persons // len(teams) * 3 * share // 10, "loaded_at": now}
                   for code in {team[2] for team in teams}
                   for group, share in (("hypertension", 7), ("diabetes", 3), ("elderly_65", 5))]
    _insert(app, Population, populations)
    with app.extensions["hie.engines"].platform.connect() as conn:
        conn.exec_driver_sql("ANALYZE TABLE fd_contracts, fd_follow_ups, fd_vitals, fd_alerts")
    return time.perf_counter() - start, len(follow_ups), len(contracts), len(teams)


# --- the three measurements -------------------------------------------------------------------------------------


def batch_body(contracts: list[str], serial: int) -> dict[str, Any]:
    """200 entries: four readings a day over the residents, as a village doctor's device collects them."""
    rng = random.Random(serial)
    day = now_utc() - timedelta(days=1 + serial)
    entries = []
    for number in range(200):
        entries.append({"client_id": f"dev1-{serial}-{number}", "contract_id": contracts[number % len(contracts)],
                        "setting": "home_visit", "taken_at": (day + timedelta(minutes=number)).isoformat(),
                        "systolic": rng.randrange(110, 175), "diastolic": rng.randrange(65, 100),
                        "heart_rate": rng.randrange(55, 100)})
    return {"entries": entries}


def run_batches(port: int, token: str, contracts: list[str], batches: int) -> tuple[list[float], float, str]:
    """`batches` uploads of 200 new entries each, then the first one retried; seconds each and the retry's."""
    client = Client(port, token)
    times, summary = [], ""
    for serial in range(batches):
        seconds, answer = client.call("POST", "/api/v1/family-doctor/vitals:batch", batch_body(contracts, serial))
        times.append(seconds)
        summary = json.dumps({k: v for k, v in answer.items() if k != "results"}, ensure_ascii=False)
    retry, _ = client.call("POST", "/api/v1/family-doctor/vitals:batch", batch_body(contracts, 0))
    return times, retry, summary


def probe(port: int, token: str, path: str) -> int:
    """The status a GET answers (routes being written by another helper may not exist yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


class _Printer(list):
    """Report lines, printed as they come (a long phase that fails keeps what was measured before it)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def query_times(app: Flask) -> list[str]:
    """Each query of the figures' total, timed on its own in process: where the request's time goes."""
    from zoneinfo import ZoneInfo

    from hie.family_doctor import stats
    from hie.family_doctor.models import Condition

    zone = ZoneInfo(app.config["HIE"].timezone)
    window = stats.default_window(zone)
    columns, lines = stats._Columns(), []  # noqa: SLF001 - the bench looks inside on purpose
    with session_scope(app.extensions["hie.engines"].platform) as session:
        codes = {"141000", *session.scalars(text("SELECT code FROM regions")).all()}
        steps = {"held contracts and priority groups": lambda: stats._state(  # noqa: SLF001
            session, columns, [], codes, window.until, zone),
                 "contracts signed, follow-ups due": lambda: stats._events(  # noqa: SLF001
                     session, columns, [], codes, window, False)}
        for condition in Condition:
            steps[f"HEARTS {condition.value}"] = lambda c=condition: stats._hearts(  # noqa: SLF001
                session, columns, [], codes, window.until, zone, c)
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            lines.append(f"{name:<36} {(time.perf_counter() - start) * 1000:8.0f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--vitals", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=120_000, help="contracted residents of the region")
    parser.add_argument("--team", type=int, default=5_000, help="contracted residents of the worklist's team")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--reads", type=int, default=300, help="worklist requests per section and concurrency")
    parser.add_argument("--figures", type=int, default=5, help="requests per figures query")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    drop_databases(args.mysql)
    out = _Printer()
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(Path(home), args.mysql, args.redis)
        app, contracts = build(env, 50)
        port = free_port()
        server = start_server(env, port, args.workers, args.threads, Path(home) / "serve.log")
        try:
            tokens = {name: token_of(port, name) for name in (LEAD, VILLAGE, ADMIN)}
            out.append("(a) a village doctor's offline batch, POST /api/v1/family-doctor/vitals:batch, 200 entries")
            if probe(port, tokens[VILLAGE], "/api/v1/family-doctor/vitals:batch") == 404:
                out.append("    not run: the route does not exist yet")
            else:
                times, retry, summary = run_batches(port, tokens[VILLAGE], contracts, args.batches)
                worst = max(times) * 1000
                out.append(f"    {len(times)} batches: " + ", ".join(f"{t * 1000:.0f}" for t in times)
                           + f" ms; retry of the first (all duplicates) {retry * 1000:.0f} ms; "
                           + verdict(worst, 2000, "slowest"))
                out.append(f"    last answer: {summary}")
            loaded_team = load_worklist(app, args.team)
            out.append(f"(b) the worklist of team {TEAM}: {args.team:,} active contracts with follow-ups and "
                       f"alerts, bulk-loaded in {loaded_team:.0f} s")
            paths = {"worklist": "/api/v1/family-doctor/worklist",
                     **{f"worklist section={s}": f"/api/v1/family-doctor/worklist?section={s}"
                        for s in ("due", "overdue", "alerts", "expiring")}}
            answering = {name: path for name, path in paths.items() if probe(port, tokens[LEAD], path) == 200}
            if not answering:
                out.append("    not run: GET /api/v1/family-doctor/worklist answers "
                           f"{probe(port, tokens[LEAD], paths['worklist'])} (the route does not exist yet)")
            else:
                out.append("    " + HEADER)
                for clients in (1, 8):
                    for name, timings in repeat_get(port, tokens[LEAD], clients, args.reads, answering).items():
                        out.append("    " + timings.line(f"GET {name}", clients, verdict(timings.p(0.99), 50, "p99")))
            loaded, follow_ups, persons, teams = load_region(app, args.persons, args.vitals)
            out.append(f"(c) the region's figures: {args.vitals:,} vitals, {follow_ups:,} follow-ups and "
                       f"{persons:,} contracts over {teams} teams bulk-loaded in {loaded:.0f} s")
            admin = Client(port, tokens[ADMIN])
            admin.connection.timeout = 3600
            body = None
            for name, query in (("total", ""), ("by team", "?group_by=team"),
                                ("by county", "?group_by=county"),
                                ("by township and month", "?group_by=township,month")):
                times = []
                for _ in range(args.figures):
                    seconds, body = admin.call("GET", f"/api/v1/stats/family-doctor{query}")
                    times.append(seconds * 1000)
                out.append(f"    GET /api/v1/stats/family-doctor {name:<22} {len(body['groups']):>3} groups  "
                           f"median {statistics.median(times):7.0f} ms  max {max(times):7.0f} ms")
                if name == "total":
                    total = body["total"]
            out.append("    in process, one query at a time (the request above runs each once for the total and "
                       "once for the groups):")
            for line in query_times(app):
                out.append("      " + line)
        finally:
            stop_server(server)
            app.extensions["hie.redis"].flushdb()
            app.extensions["hie.engines"].dispose()
            drop_databases(args.mysql)
    print(f"MariaDB + Redis, `hie serve` (gunicorn gthread, {args.workers} workers x {args.threads} threads) on "
          f"127.0.0.1; {os.cpu_count()} cores shared by client, server and databases; run took "
          f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print("the region's figures at now (total):")
    for block in ("contracts", "follow_ups", "hypertension", "diabetes"):
        print(f"  {block}: {json.dumps(total[block])}")
    for row in total["coverage"]:
        if row["persons"]:
            print(f"  coverage {row['priority_group']}: {json.dumps(row)}")


if __name__ == "__main__":
    main()
