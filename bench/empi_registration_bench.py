"""Real-time EMPI registration against a large index: one register() plus its commit, on MariaDB.

Builds an index of --persons master persons from hie.empi.synthetic in bulk (rows computed on every core,
loaded with LOAD DATA LOCAL INFILE) in exactly the stored format register() writes, then times
--registrations fresh registrations (about half new people, half noisy further records of indexed people)
at --small persons and again at the full size, each inside an app context and committed the way the
registration API's request is. Load files are cached under /tmp, so a rerun skips generation.

    .venv/bin/python bench/empi_registration_bench.py [--persons 1000000] [--small 100000]
        [--registrations 2000] [--mysql mysql+pymysql://root@127.0.0.1:3306] [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hie.empi import services as empi  # noqa: E402
from hie.empi import synthetic  # noqa: E402
from hie.empi.normalize import normalize_record  # noqa: E402
from hie.platform.app import create_app  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.crypto import KeyRing  # noqa: E402
from hie.platform.db import finish_unit_of_work, new_id, platform_session, session_scope  # noqa: E402
from hie.platform.migrate import create_database, upgrade  # noqa: E402
from hie.tenants import services as tenancy  # noqa: E402
from hie.tenants.models import InstitutionLevel, RegionLevel  # noqa: E402

DATABASE = "hie_bench_empi_platform"
CACHE_ROOT = Path(tempfile.gettempdir()) / "hie_empi_registration_bench"
FORMAT = 1
SEED = 2026
WARMUP = 100
REGION, TENANT = "141002", "bench"
SOURCES = tuple(f"H{i:02d}" for i in range(1, 13))
TARGET_P99_MS = 20.0
PUBLISHED_MS = 110.0
CHUNK = 2000
STAMP = "2026-01-01 00:00:00.000000"
_FINGERPRINTED = ("hie/empi/normalize.py", "hie/empi/features.py", "hie/empi/synthetic.py",
                  "hie/empi/matching/blocking.py")
_worker_ring: list[KeyRing] = []


@dataclass(frozen=True)
class Stage:
    """One index size and the registrations timed against it."""

    persons: int
    files: list[str]
    registrations: list[dict[str, str]]


def _demographics(row: dict[str, str]) -> dict[str, str]:
    """A synthetic row as the registration API hands it to the EMPI."""
    return {k: row[k] for k in ("name", "sex", "birth_date", "id_type", "id_number", "phone", "address")}


def _init_worker(ring_path: str) -> None:
    """Each worker opens the bench's key ring once."""
    _worker_ring.append(KeyRing(Path(ring_path)))


def _index_lines(chunk: list[tuple[str, dict[str, str]]]) -> tuple[str, str]:
    """TSV lines of empi_records and empi_blocking_keys, computed as register() computes them."""
    ring = _worker_ring[0]
    records, keys = [], []
    for person_id, row in chunk:
        record_id = new_id()
        raw = empi.clean_demographics(_demographics(row))
        normalized = normalize_record({"rec_id": row["rec_id"], **raw})
        sealed = empi.seal_demographics(ring, record_id, raw, normalized)
        records.append(f"{record_id}\t{row['source']}\t{TENANT}\t{row['rec_id']}\t{person_id}\t{sealed}\t"
                       f"{empi.fingerprint_of(ring, raw)}\n")
        keys.extend(f"{h}\t{record_id}\n" for h in empi.key_hashes(ring, normalized))
    return "".join(records), "".join(keys)


def _cache_dir(persons: int, small: int, count: int) -> Path:
    """Cached load files are valid only for the same sizes and the same normalisation and blocking code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{FORMAT}:{persons}:{small}:{count}:{SEED}".encode())
    for name in _FINGERPRINTED:
        digest.update((root / name).read_bytes())
    return CACHE_ROOT / f"p{persons}-s{small}-r{count}-{digest.hexdigest()[:12]}"


def _sample(rng: random.Random, by_person: list[list[dict[str, str]]], low: int, high: int, count: int,
            taken: set[int]) -> list[int]:
    """People in [low, high) with a further record to hold out of the index."""
    pool = [key for key in range(low, high) if len(by_person[key]) > 1 and key not in taken]
    chosen = rng.sample(pool, count)
    taken.update(chosen)
    return chosen


def _prepare(directory: Path, persons: int, small: int, count: int) -> tuple[float, list[Stage]]:
    """Generate the population, hold out the timed registrations, write sorted load files (or reuse them)."""
    done = directory / "stages.json"
    if done.exists():
        stages = json.loads(done.read_text())
        return 0.0, [Stage(s["persons"], s["files"], s["registrations"]) for s in stages]
    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    KeyRing.create(directory / "keyring.json")
    per_stage = count + WARMUP
    people_needed = persons + 2 * per_stage
    generated = synthetic.generate(int(people_needed * 1.5 * 1.03) + 1000, seed=SEED)
    by_person: list[list[dict[str, str]]] = [[] for _ in generated.persons]
    for row in generated.rows:
        by_person[generated.truth[row["rec_id"]]].append(row)
    if sum(1 for rows in by_person if rows) < people_needed:
        raise SystemExit("synthetic population too small; raise the generation margin")
    rng = random.Random(SEED)
    taken: set[int] = set()
    bounds = [(0, small), (small, persons)]
    plans = []
    for stage, (_, high) in enumerate(bounds):
        repeats = _sample(rng, by_person, 0, high, per_stage // 2, taken)
        fresh = range(persons + stage * (per_stage - per_stage // 2), persons + (stage + 1) * (per_stage -
                                                                                                   per_stage // 2))
        rows = [by_person[key][-1] for key in repeats] + [by_person[key][0] for key in fresh]
        rng.shuffle(rows)
        plans.append(rows)
    stages = []
    with multiprocessing.Pool(os.cpu_count(), _init_worker, (str(directory / "keyring.json"),)) as pool:
        for stage, (low, high) in enumerate(bounds):
            person_ids = {key: new_id() for key in range(low, high)}
            rows = [(person_ids[key], row) for key in range(low, high)
                    for row in (by_person[key][:-1] if key in taken else by_person[key])]
            files = {name: directory / f"{name}_{stage}.tsv" for name in ("persons", "records", "keys")}
            files["persons"].write_text("".join(f"{pid}\n" for pid in person_ids.values()))
            with files["records"].open("w") as records, files["keys"].open("w") as keys:
                chunks = (rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK))
                for record_lines, key_lines in pool.imap(_index_lines, chunks):
                    records.write(record_lines)
                    keys.write(key_lines)
            for path in files.values():
                subprocess.run(["sort", "-S", "1G", "-o", str(path), str(path)], check=True,
                               env={**os.environ, "LC_ALL": "C"})
            stages.append(Stage(high, [str(files[n]) for n in ("persons", "records", "keys")], plans[stage]))
    done.write_text(json.dumps([s.__dict__ for s in stages], ensure_ascii=False))
    return time.perf_counter() - start, stages


def _build(home: Path, mysql: str, redis_url: str | None, ring_path: Path) -> Flask:
    """A fresh platform database with one region, one tenant (no shard) and the synthetic sources."""
    server = create_engine(mysql)
    with server.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{DATABASE}`"))
    server.dispose()
    env = {"HIE_HOME": str(home), "HIE_SECRET_KEY": "b" * 40, "HIE_KEYRING_FILE": str(ring_path),
           "HIE_PLATFORM_DB_URL": f"{mysql}/{DATABASE}"}
    if redis_url:
        env["HIE_REDIS_URL"] = redis_url
    app = create_app(load_config(env))
    engines = app.extensions["hie.engines"]
    with app.app_context():
        create_database(engines.config.platform_db_url)
        upgrade("platform", engines.platform)
        with session_scope(engines.platform) as session:
            tenancy.ensure_region(session, REGION, "尧都区", RegionLevel.county, None)
            tenancy.add_tenant(session, app.config["HIE"], TENANT, "尧都区", REGION)
            for code in SOURCES:
                tenancy.add_institution(session, code, f"医院{code}", TENANT,
                                        InstitutionLevel.secondary_hospital.value)
    return app


def _institutions(engine: Engine) -> dict[str, int]:
    """Institution ids by code, for mapping the synthetic sources in load files and registrations."""
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT code, id FROM institutions")).all())


def _load(loader: Engine, stage: Stage, institutions: dict[str, int]) -> None:
    """LOAD DATA into the index tables, checks off: the rows are complete and consistent by construction."""
    persons, records, keys = stage.files
    codes = ", ".join(f"'{code}'" for code in SOURCES)
    ids = ", ".join(str(institutions[code]) for code in SOURCES)
    with loader.begin() as conn:
        conn.execute(text("SET foreign_key_checks = 0, unique_checks = 0"))
        conn.execute(text(f"LOAD DATA LOCAL INFILE '{persons}' INTO TABLE empi_persons (id) "
                          f"SET status = 'active', created_at = '{STAMP}', updated_at = '{STAMP}'"))
        conn.execute(text(
            f"LOAD DATA LOCAL INFILE '{records}' INTO TABLE empi_records "
            "(id, @source, tenant_code, local_id, person_id, demographics_enc, fingerprint) "
            f"SET institution_id = ELT(FIELD(@source, {codes}), {ids}), "
            f"created_at = '{STAMP}', updated_at = '{STAMP}'"))
        conn.execute(text(f"LOAD DATA LOCAL INFILE '{keys}' INTO TABLE empi_blocking_keys (key_hash, record_id)"))
    with loader.connect() as conn:
        conn.execute(text("ANALYZE TABLE empi_persons, empi_records, empi_blocking_keys"))


def _register(app: Flask, row: dict[str, str], institution_id: int) -> tuple[float, empi.Registration]:
    """What POST /api/v1/patients does for the EMPI: register in the request, commit at its end."""
    ring, cache = app.extensions["hie.keyring"], app.extensions["hie.cache"]
    with app.app_context():
        start = time.perf_counter()
        registration = empi.register(platform_session(), ring, cache, institution_id=institution_id,
                                     tenant_code=TENANT, local_id=row["rec_id"], demographics=_demographics(row),
                                     region_code=REGION)
        finish_unit_of_work(True)
        return time.perf_counter() - start, registration


def _forget(engine: Engine, registered: list[empi.Registration], marks: dict[str, int]) -> None:
    """Remove what the timed registrations wrote, so the next stage's index holds only loaded rows."""
    record_ids = [r.record.id for r in registered]
    created = [r.person_id for r in registered if r.outcome != "auto_link"]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM empi_reviews WHERE id > :m"), {"m": marks["empi_reviews"]})
        conn.execute(text("DELETE FROM empi_person_events WHERE id > :m"), {"m": marks["empi_person_events"]})
        conn.execute(text("DELETE FROM outbox_events WHERE topic = 'empi.record_linked'"))
        for i in range(0, len(record_ids), 500):
            conn.execute(text("DELETE FROM empi_blocking_keys WHERE record_id IN :ids").bindparams(
                ids=tuple(record_ids[i:i + 500])))
            conn.execute(text("DELETE FROM empi_records WHERE id IN :ids").bindparams(
                ids=tuple(record_ids[i:i + 500])))
        for i in range(0, len(created), 500):
            conn.execute(text("DELETE FROM empi_persons WHERE id IN :ids").bindparams(ids=tuple(created[i:i + 500])))


def _marks(engine: Engine) -> dict[str, int]:
    """Highest ids before a stage, so cleaning up afterwards removes only what the stage wrote."""
    with engine.connect() as conn:
        return {table: conn.scalar(text(f"SELECT COALESCE(MAX(id), 0) FROM {table}"))
                for table in ("empi_reviews", "empi_person_events")}


def _run_stage(app: Flask, stage: Stage, institutions: dict[str, int]) -> tuple[list[float], Counter[str]]:
    """Time the stage's registrations (after a warm-up) and clean up after them."""
    engine = app.extensions["hie.engines"].platform
    marks = _marks(engine)
    timings, outcomes, registered = [], Counter(), []
    for number, row in enumerate(stage.registrations):
        elapsed, registration = _register(app, row, institutions[row["source"]])
        registered.append(registration)
        if number >= WARMUP:
            timings.append(elapsed)
            outcomes[registration.outcome] += 1
    _forget(engine, registered, marks)
    return timings, outcomes


def _counts(engine: Engine) -> tuple[int, int, int]:
    """Actual table sizes, so the printed index size is what was measured against."""
    with engine.connect() as conn:
        return tuple(conn.scalar(text(f"SELECT COUNT(*) FROM {table}"))  # type: ignore[return-value]
                     for table in ("empi_persons", "empi_records", "empi_blocking_keys"))


def _report(persons: int, load_seconds: float, counts: tuple[int, int, int], timings: list[float],
            outcomes: Counter[str]) -> None:
    """One size's figures, beside the target and the published EMPI."""
    ordered = sorted(timings)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000
    verdict = "meets" if p99 < TARGET_P99_MS else "misses"
    print(f"index {persons:>9,} persons  ({counts[0]:,} persons, {counts[1]:,} records, {counts[2]:,} keys; "
          f"loaded in {load_seconds:.1f} s)")
    print(f"  {len(ordered)} registrations  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
          f"{len(ordered) / sum(ordered):6.1f} reg/s  (target p99 < {TARGET_P99_MS:.0f} ms: {verdict}; "
          f"published EMPI ~{PUBLISHED_MS:.0f} ms/registration at 1M: {PUBLISHED_MS / p50:.1f}x our p50)")
    print(f"  outcomes: auto_link {outcomes['auto_link']}  review {outcomes['review']}  "
          f"new {outcomes['new_person']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="empty for no cache")
    parser.add_argument("--buffer-pool-mb", type=int, default=8192,
                        help="InnoDB buffer pool for the run (restored after), sized so the index (about 5.5 GB "
                             "at 1M persons) is in memory as on a production server; 0 leaves the server as it is")
    args = parser.parse_args()
    small = min(args.small, args.persons)
    directory = _cache_dir(args.persons, small, args.registrations)
    print(f"EMPI registration bench: {args.persons:,} persons, load files in {directory}", flush=True)
    prepared, stages = _prepare(directory, args.persons, small, args.registrations)
    print(f"load files {'generated in ' + format(prepared, '.1f') + ' s' if prepared else 'reused from cache'}")
    server = create_engine(args.mysql)
    with server.connect() as conn:
        original_pool = conn.scalar(text("SELECT @@innodb_buffer_pool_size"))
        if args.buffer_pool_mb:
            conn.execute(text(f"SET GLOBAL innodb_buffer_pool_size = {args.buffer_pool_mb * 2**20}"))
    try:
        _run(args, small, stages, directory / "keyring.json")
    finally:
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{DATABASE}`"))
            conn.execute(text(f"SET GLOBAL innodb_buffer_pool_size = {original_pool}"))
        server.dispose()


def _run(args: argparse.Namespace, small: int, stages: list[Stage], ring_path: Path) -> None:
    """Load each size in turn and time the registrations against it."""
    loader = create_engine(f"{args.mysql}/{DATABASE}", connect_args={"local_infile": True})
    with tempfile.TemporaryDirectory() as home:
        app = _build(Path(home), args.mysql, args.redis or None, ring_path)
        engine = app.extensions["hie.engines"].platform
        with engine.connect() as conn:
            pool = conn.scalar(text("SELECT @@innodb_buffer_pool_size"))
        print(f"MariaDB innodb_buffer_pool_size {pool / 2**20:.0f} MiB; cache {'Redis' if args.redis else 'none'}; "
              f"{args.registrations} timed registrations per size after {WARMUP} warm-up")
        institutions = _institutions(engine)
        loaded = 0.0
        for stage in stages if small < args.persons else stages[:1]:
            start = time.perf_counter()
            _load(loader, stage, institutions)
            loaded += time.perf_counter() - start
            timings, outcomes = _run_stage(app, stage, institutions)
            _report(stage.persons, loaded, _counts(engine), timings, outcomes)
        app.extensions["hie.engines"].dispose()
    loader.dispose()


if __name__ == "__main__":
    main()
