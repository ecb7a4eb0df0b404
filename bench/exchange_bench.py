"""Exchange figures on MariaDB: Bundle ingest, cross-tenant Patient/$everything, search over 1M Observations.

Everything goes through the real stack (Flask test client, Bearer token, tenant routing, access policy, audit),
in process and on one thread, so the figures are the application's and the database's own cost. The search
shard is bulk-loaded (LOAD DATA LOCAL INFILE) with the rows store.create() would have written; the generated
files are cached under /tmp. The script creates and drops its own databases (hie_xbench_*) and flushes its
Redis database.

    .venv/bin/python bench/exchange_bench.py [--mysql mysql+pymysql://root@127.0.0.1:3306]
        [--redis redis://127.0.0.1:6379/13] [--bundles 50] [--calls 200] [--patients 10000] [--per-patient 100]
        [--searches 500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hie.empi import services as empi  # noqa: E402
from hie.empi.models import BlockingKey, MasterPerson, PersonRecord, PersonStatus  # noqa: E402
from hie.empi.normalize import normalize_record  # noqa: E402
from hie.exchange.models import RecordLocation  # noqa: E402
from hie.exchange.resources import RESIDENT_ID_SYSTEM, index_entry, validate  # noqa: E402
from hie.exchange.store import everything_cache_key  # noqa: E402
from hie.patients.models import SEALED_FIELDS, Patient  # noqa: E402
from hie.patients.sealing import seal  # noqa: E402
from hie.platform import care  # noqa: E402
from hie.platform.app import create_app  # noqa: E402
from hie.platform.auth import accounts  # noqa: E402
from hie.platform.auth.models import Role  # noqa: E402
from hie.platform.config import load_config  # noqa: E402
from hie.platform.db import session_scope  # noqa: E402
from hie.platform.standards import check_digit  # noqa: E402
from hie.tenants import services  # noqa: E402
from hie.tenants.models import Institution, InstitutionLevel, RegionLevel  # noqa: E402

PASSWORD = "Bench-pass-2026"
PREFIX = "hie_xbench_"
SEED = 20261122
FORMAT = 1  # bump when the generated load files change shape
CACHE_ROOT = Path("/tmp/hie_xbench_cache")
CHINA = timezone(timedelta(hours=8))
LOADED_AT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
# (tenant, region code, region name, hospital code, hospital name)
TENANTS = (
    ("yaodu", "141002", "尧都区", "YAODU-CH", "尧都区人民医院"),
    ("quwo", "141021", "曲沃县", "QUWO-CH", "曲沃县人民医院"),
    ("xiangfen", "141023", "襄汾县", "XF-CH", "襄汾县人民医院"),
    ("hongtong", "141024", "洪洞县", "HT-CH", "洪洞县人民医院"),
)
SEARCH_TENANT = "hongtong"
# LOINC code, Chinese label, category, unit, typical value, spread
OBSERVATIONS = (
    ("8480-6", "收缩压", "vital-signs", "mm[Hg]", 132, 15), ("8462-4", "舒张压", "vital-signs", "mm[Hg]", 82, 9),
    ("8867-4", "心率", "vital-signs", "/min", 76, 10), ("9279-1", "呼吸频率", "vital-signs", "/min", 17, 2),
    ("8310-5", "体温", "vital-signs", "Cel", 36.6, 0.3), ("29463-7", "体重", "vital-signs", "kg", 64, 9),
    ("8302-2", "身高", "vital-signs", "cm", 163, 8), ("39156-5", "体重指数", "vital-signs", "kg/m2", 24, 3),
    ("14749-6", "空腹血糖", "laboratory", "mmol/L", 6.1, 1.2), ("4548-4", "糖化血红蛋白", "laboratory", "%", 6.4, 0.8),
    ("14647-2", "总胆固醇", "laboratory", "mmol/L", 5.0, 0.8),
    ("14927-8", "甘油三酯", "laboratory", "mmol/L", 1.7, 0.5),
    ("718-7", "血红蛋白", "laboratory", "g/L", 132, 14), ("6690-2", "白细胞计数", "laboratory", "10*9/L", 6.5, 1.6),
    ("777-3", "血小板计数", "laboratory", "10*9/L", 220, 50), ("14682-9", "肌酐", "laboratory", "umol/L", 78, 16),
    ("1742-6", "丙氨酸氨基转移酶", "laboratory", "U/L", 26, 9),
    ("1920-8", "天门冬氨酸氨基转移酶", "laboratory", "U/L", 24, 7),
    ("2951-2", "钠", "laboratory", "mmol/L", 140, 2.5), ("2823-3", "钾", "laboratory", "mmol/L", 4.2, 0.35),
)
CONDITIONS = (("I10", "原发性高血压"), ("E11.9", "2型糖尿病"), ("E78.5", "高脂血症"), ("J44.9", "慢性阻塞性肺疾病"),
              ("K21.9", "胃食管反流病"), ("N18.3", "慢性肾脏病3期"), ("I25.1", "冠状动脉粥样硬化性心脏病"),
              ("M17.9", "膝关节骨关节病"))
MEDICATIONS = (("C08CA01", "氨氯地平片 5mg 每日一次"), ("A10BA02", "二甲双胍片 0.5g 每日三次"),
               ("C10AA05", "阿托伐他汀钙片 20mg 每晚一次"), ("B01AC06", "阿司匹林肠溶片 100mg 每日一次"),
               ("C09CA01", "氯沙坦钾片 50mg 每日一次"), ("A02BC01", "奥美拉唑肠溶胶囊 20mg 每日一次"))
PROCEDURES = (("29303009", "心电图检查"), ("45036003", "腹部超声检查"), ("399208008", "胸部X线摄影"),
              ("252416005", "肺功能检查"))
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = ("秀英", "桂英", "建国", "志强", "丽华", "海燕", "国庆", "春梅", "晓东", "玉兰", "文杰", "淑珍")


@dataclass(frozen=True)
class Figures:
    """Timings of one case, in seconds per call."""

    timings: list[float]

    def p(self, quantile: float) -> float:
        """A quantile in milliseconds (nearest rank, as api_bench does)."""
        ordered = sorted(self.timings)
        return ordered[max(int(len(ordered) * quantile) - 1, 0)] * 1000

    @property
    def p50(self) -> float:
        """Median in milliseconds."""
        return statistics.median(self.timings) * 1000


# --- realistic content ------------------------------------------------------------------------------------------


def resident_id(rng: random.Random, region: str, born: date) -> str:
    """A GB 11643 resident ID with a valid check digit."""
    body = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return body + check_digit(body)


def person(rng: random.Random) -> dict[str, Any]:
    """Demographics of one resident of 临汾."""
    born = date(1935, 1, 1) + timedelta(days=rng.randrange(365 * 70))
    return {"name": rng.choice(SURNAMES) + rng.choice(GIVEN), "sex": rng.choice("MF"), "birth_date": born,
            "id_number": resident_id(rng, "141002", born), "phone": f"139{rng.randrange(10**8):08d}",
            "address": f"尧都区{rng.choice(['屯里镇', '县底镇', '乔李镇', '汾河街道'])}{rng.randrange(1, 90)}号"}


def patient_resource(who: dict[str, Any]) -> dict[str, Any]:
    """The FHIR Patient a hospital system sends for these demographics."""
    return {"resourceType": "Patient", "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": who["id_number"]}],
            "name": [{"text": who["name"]}], "gender": {"M": "male", "F": "female"}[who["sex"]],
            "birthDate": who["birth_date"].isoformat(), "telecom": [{"system": "phone", "value": who["phone"]}],
            "address": [{"text": who["address"]}]}


def observation(code: tuple[str, str, str, str, float, float], subject: str, when: datetime,
                value: float) -> dict[str, Any]:
    """A vital sign or laboratory result coded with LOINC and UCUM."""
    loinc, label, category, unit, _, _ = code
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": loinc}], "text": label},
            "subject": {"reference": subject}, "effectiveDateTime": when.isoformat(timespec="seconds"),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _value(rng: random.Random, code: tuple[str, str, str, str, float, float]) -> float:
    return round(max(code[4] + rng.gauss(0, code[5]), 0.1), 1)


def clinical_entries(rng: random.Random, subject: str, count: int) -> list[dict[str, Any]]:
    """count clinical resources about one subject, in the proportions of an outpatient history."""
    def entry(resource: dict[str, Any]) -> dict[str, Any]:
        return {"fullUrl": f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}", "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]}}

    visits = max(count // 25, 1)
    start = datetime(2022, 1, 1, 8, 0, tzinfo=CHINA)
    days = sorted(start + timedelta(days=rng.randrange(1400), minutes=rng.randrange(480)) for _ in range(visits))
    encounters = [entry({"resourceType": "Encounter", "status": "finished",
                         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                         "type": [{"coding": [{"system": SNOMED, "code": "185349003"}], "text": "门诊就诊"}],
                         "subject": {"reference": subject},
                         "period": {"start": day.isoformat(timespec="seconds"),
                                    "end": (day + timedelta(minutes=20)).isoformat(timespec="seconds")}})
                  for day in days]
    out = list(encounters)
    kinds = ["Observation"] * 70 + ["Condition"] * 8 + ["MedicationRequest"] * 8 + ["Procedure"] * 5 + \
        ["DiagnosticReport"] * 3 + ["Immunization", "AllergyIntolerance"]
    results: list[str] = []
    while len(out) < count:
        kind = kinds[(len(out) - visits) % len(kinds)]
        visit = rng.randrange(visits)
        when, encounter = days[visit] + timedelta(minutes=rng.randrange(60)), encounters[visit]["fullUrl"]
        stamp = when.isoformat(timespec="seconds")
        if kind == "Observation":
            code = OBSERVATIONS[rng.randrange(len(OBSERVATIONS))]
            resource = observation(code, subject, when, _value(rng, code))
            resource["encounter"] = {"reference": encounter}
        elif kind == "Condition":
            icd, label = rng.choice(CONDITIONS)
            resource = {"resourceType": "Condition", "subject": {"reference": subject}, "recordedDate": stamp,
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                       "condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": ICD10, "code": icd}], "text": label},
                        "encounter": {"reference": encounter}}
        elif kind == "MedicationRequest":
            atc, label = rng.choice(MEDICATIONS)
            resource = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                        "subject": {"reference": subject}, "authoredOn": stamp,
                        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc}], "text": label},
                        "dosageInstruction": [{"text": label.split(" ", 1)[1]}]}
        elif kind == "Procedure":
            sct, label = rng.choice(PROCEDURES)
            resource = {"resourceType": "Procedure", "status": "completed", "subject": {"reference": subject},
                        "performedDateTime": stamp, "code": {"coding": [{"system": SNOMED, "code": sct}],
                                                             "text": label}}
        elif kind == "DiagnosticReport":
            resource = {"resourceType": "DiagnosticReport", "status": "final", "subject": {"reference": subject},
                        "code": {"coding": [{"system": LOINC, "code": "24323-8"}], "text": "综合代谢检查"},
                        "effectiveDateTime": stamp, "result": [{"reference": ref} for ref in results[-6:]]}
        elif kind == "Immunization":
            resource = {"resourceType": "Immunization", "status": "completed", "patient": {"reference": subject},
                        "occurrenceDateTime": stamp,
                        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "141"}],
                                        "text": "流感疫苗"}}
        else:
            resource = {"resourceType": "AllergyIntolerance", "patient": {"reference": subject},
                        "recordedDate": stamp, "code": {"text": "青霉素"},
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                       "allergyintolerance-clinical", "code": "active"}]}}
        item = entry(resource)
        if kind == "Observation":
            results.append(item["fullUrl"])
        out.append(item)
    return out


def transaction(rng: random.Random, who: dict[str, Any], size: int) -> dict[str, Any]:
    """A transaction Bundle: the Patient and size - 1 clinical resources referring to it by urn:uuid."""
    subject = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}"
    entries = [{"fullUrl": subject, "resource": patient_resource(who),
                "request": {"method": "POST", "url": "Patient"}}]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries + clinical_entries(rng, subject,
                                                                                                 size - 1)}


# --- the region ---------------------------------------------------------------------------------------------------


def build(home: Path, mysql: str, redis_url: str) -> Flask:
    """A fresh region on hie_xbench_* databases: four county tenants, one hospital and one clinician each."""
    drop_databases(mysql)
    env = {"HIE_HOME": str(home), "HIE_SECRET_KEY": "x" * 40, "HIE_PLATFORM_DB_URL": f"{mysql}/{PREFIX}platform",
           "HIE_TENANT_DB_URL_TEMPLATE": f"{mysql}/{PREFIX}{{tenant}}", "HIE_REDIS_URL": redis_url}
    app = create_app(load_config(env))
    app.extensions["hie.redis"].flushdb()
    engines = app.extensions["hie.engines"]
    with app.app_context():
        services.upgrade_all(engines)
        with session_scope(engines.platform) as session:
            services.ensure_region(session, "141000", "临汾市", RegionLevel.city, None)
            for code, region, region_name, hospital, hospital_name in TENANTS:
                services.ensure_region(session, region, region_name, RegionLevel.county, "141000")
                tenant = services.add_tenant(session, app.config["HIE"], code, region_name, region)
                services.provision(engines, tenant)
                services.add_institution(session, hospital, hospital_name, code,
                                         InstitutionLevel.secondary_hospital.value)
                accounts.add_user(session, f"{code}.doctor", [Role.clinician], hospital, PASSWORD)
    return app


def drop_databases(mysql: str) -> None:
    """Every database this bench made (also those of an interrupted run)."""
    engine = create_engine(mysql)
    with engine.begin() as conn:
        names = conn.execute(text("SHOW DATABASES LIKE :p"), {"p": PREFIX.replace("_", "\\_") + "%"}).scalars()
        for name in list(names):
            conn.execute(text(f"DROP DATABASE `{name}`"))
    engine.dispose()


def login(client: FlaskClient, tenant: str) -> dict[str, str]:
    """Bearer headers of a tenant's clinician."""
    token = client.post("/api/v1/auth/token", json={"username": f"{tenant}.doctor", "password": PASSWORD})
    return {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def institution_id(app: Flask, code: str) -> int:
    """The platform id of a hospital."""
    with session_scope(app.extensions["hie.engines"].platform) as session:
        return session.scalar(select(Institution.id).where(Institution.code == code))


def timed(client: FlaskClient, method: str, url: str, headers: dict[str, str], **kwargs: Any) -> tuple[float, Any]:
    """One request: seconds taken and the JSON answer (asserting success)."""
    start = time.perf_counter()
    response = client.open(url, method=method, headers=headers, **kwargs)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, (url, response.status_code, response.get_data(as_text=True)[:500])
    return elapsed, response.get_json()


# --- 1. ingest ----------------------------------------------------------------------------------------------------


def bench_ingest(app: Flask, bundles: int, size: int) -> Figures:
    """POST transaction Bundles of size resources (a new patient each) as the yaodu clinician."""
    rng = random.Random(SEED)
    client = app.test_client()
    headers = login(client, "yaodu")
    payloads = [transaction(rng, person(rng), size) for _ in range(bundles + 3)]
    for payload in payloads[:3]:
        timed(client, "POST", "/fhir", headers, json=payload)
    timings = []
    for payload in payloads[3:]:
        elapsed, answer = timed(client, "POST", "/fhir", headers, json=payload)
        assert len(answer["entry"]) == size
        timings.append(elapsed)
    return Figures(timings)


# --- 2. $everything -----------------------------------------------------------------------------------------------


def bench_everything(app: Flask, total: int, calls: int) -> tuple[Figures, Figures]:
    """One person registered in three tenants' hospitals with total resources; read by the yaodu clinician."""
    rng = random.Random(SEED + 1)
    client = app.test_client()
    who = person(rng)
    shares = [total // 3 + (1 if index < total % 3 else 0) for index in range(3)]
    patient_ids = []
    for (tenant, *_), share in zip(TENANTS[:3], shares, strict=True):
        _, answer = timed(client, "POST", "/fhir", login(client, tenant), json=transaction(rng, who, share))
        patient_ids.append(answer["entry"][0]["resource"]["id"])
    engines = app.extensions["hie.engines"]
    with session_scope(engines.platform) as session:
        persons = set(session.scalars(select(PersonRecord.person_id).where(PersonRecord.patient_id.in_(patient_ids))))
        assert len(persons) == 1, f"the EMPI did not link the three registrations: {persons}"
        person_id = persons.pop()
        care.grant(session, institution_id(app, "YAODU-CH"), person_id, care.CareKind.referral, "bench-referral")
    headers = login(client, "yaodu")
    url = f"/fhir/Patient/{patient_ids[0]}/$everything"
    _, answer = timed(client, "GET", url, headers)
    assert answer["total"] == total, answer["total"]
    cache, key = app.extensions["hie.cache"], everything_cache_key(person_id)
    cold = []
    for _ in range(calls + 10):
        cache.invalidate(key)
        cold.append(timed(client, "GET", url, headers)[0])
    cached = [timed(client, "GET", url, headers)[0] for _ in range(calls + 10)]
    return Figures(cold[10:]), Figures(cached[10:])


# --- 3. search over a bulk-loaded shard --------------------------------------------------------------------------


def _tsv(*values: object) -> str:
    """One LOAD DATA line: backslash, tab and newline escaped, None as \\N."""
    fields = []
    for value in values:
        if value is None:
            fields.append("\\N")
        else:
            fields.append(str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))
    return "\t".join(fields) + "\n"


def _db_time(value: datetime) -> str:
    """A UTCDateTime as MariaDB stores it: naive UTC with microseconds."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def search_patient_ids(count: int) -> list[str]:
    """Stable patient ids, so cached load files stay valid across runs."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"hie-xbench/{SEARCH_TENANT}/{index}")) for index in range(count)]


def _templates() -> list[tuple[dict[str, Any], list[tuple[str, str | None, str]]]]:
    """Each Observation code validated once, as the API would, with its index tokens."""
    out = []
    for code in OBSERVATIONS:
        resource = validate(observation(code, "Patient/template", LOADED_AT, code[4]), "Observation")
        out.append((resource, index_entry(resource).tokens))
    return out


def generate_load_files(directory: Path, patients: int, per_patient: int) -> None:
    """fhir_resources and fhir_tokens rows as store.create() writes them, sorted by primary key, in TSV."""
    rng = random.Random(SEED + 2)
    templates = _templates()
    meta = {"versionId": "1", "lastUpdated": LOADED_AT.isoformat(timespec="milliseconds")}
    rows: list[tuple[str, str, str, str, str]] = []
    first = datetime(2021, 1, 1, 8, 0, tzinfo=CHINA)
    for patient_id in search_patient_ids(patients):
        for index in range(per_patient):
            template, template_tokens = templates[index % len(templates)]
            resource_id = f"{SEARCH_TENANT}.{uuid.UUID(int=rng.getrandbits(128)).hex}"
            when = first + timedelta(days=rng.randrange(1800), minutes=rng.randrange(600))
            resource = dict(template)
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
            resource["effectiveDateTime"] = when.isoformat(timespec="seconds")
            resource["valueQuantity"] = {**template["valueQuantity"],
                                         "value": _value(rng, OBSERVATIONS[index % len(OBSERVATIONS)])}
            resource["id"] = resource_id
            resource["meta"] = meta
            content = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
            rows.append((resource_id, patient_id, _db_time(when), content,
                         "".join(_tsv("Observation", resource_id, param, system, code)
                                 for param, system, code in template_tokens)))
    entry = index_entry(json.loads(rows[0][3]))
    assert entry.patient_ref == rows[0][1] and _db_time(entry.date) == rows[0][2]
    rows.sort()
    tmp = directory.with_suffix(".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with (tmp / "fhir_resources.tsv").open("w", encoding="utf-8") as out:
        out.writelines(_tsv("Observation", resource_id, patient_id, "final", when, content)
                       for resource_id, patient_id, when, content, _ in rows)
    with (tmp / "fhir_tokens.tsv").open("w", encoding="utf-8") as out:
        out.writelines(lines for *_, lines in rows)
    tmp.rename(directory)


def _load_engine(url: str) -> Engine:
    return create_engine(url, connect_args={"local_infile": True})


def bulk_load(app: Flask, patients: int, per_patient: int) -> tuple[float, float]:
    """Register the search shard's patients in the shard and the EMPI, then LOAD DATA its Observations."""
    digest = hashlib.sha256(f"{FORMAT}:{SEED}:{patients}:{per_patient}:{SEARCH_TENANT}".encode()).hexdigest()[:12]
    directory = CACHE_ROOT / f"p{patients}-o{per_patient}-{digest}"
    generate_seconds = 0.0
    if not directory.exists():
        start = time.perf_counter()
        generate_load_files(directory, patients, per_patient)
        generate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hospital = institution_id(app, "HT-CH")
    engines = app.extensions["hie.engines"]
    ring = app.extensions["hie.keyring"]
    rng = random.Random(SEED + 3)
    shard_rows, persons, records, keys, registry = [], [], [], [], []
    for index, patient_id in enumerate(search_patient_ids(patients)):
        who = person(rng)
        mrn = f"HT{index:07d}"
        patient = Patient(id=patient_id, institution_id=hospital, mrn=mrn, sex=who["sex"],
                          birth_date=who["birth_date"], created_at=LOADED_AT, updated_at=LOADED_AT, version=1)
        for field in SEALED_FIELDS:
            seal(ring, SEARCH_TENANT, patient, field, who[field])
        shard_rows.append({column.key: getattr(patient, column.key) for column in Patient.__table__.columns})
        person_id, record_id = str(uuid.uuid4()), str(uuid.uuid4())
        raw = empi.clean_demographics({**who, "birth_date": who["birth_date"].isoformat(), "id_type": "CN-RIC"})
        normalized = normalize_record({"rec_id": mrn, **raw})
        persons.append({"id": person_id, "status": PersonStatus.active, "created_at": LOADED_AT,
                        "updated_at": LOADED_AT})
        records.append({"id": record_id, "institution_id": hospital, "tenant_code": SEARCH_TENANT, "local_id": mrn,
                        "patient_id": patient_id, "person_id": person_id, "match_weight": None,
                        "demographics_enc": empi.seal_demographics(ring, record_id, raw, normalized),
                        "fingerprint": empi.fingerprint_of(ring, raw), "created_at": LOADED_AT,
                        "updated_at": LOADED_AT})
        keys += [{"key_hash": key, "record_id": record_id} for key in empi.key_hashes(ring, normalized)]
        registry.append({"master_person_id": person_id, "tenant_code": SEARCH_TENANT, "last_updated": LOADED_AT})
    with engines.platform.begin() as conn:
        for model, batch in ((MasterPerson, persons), (PersonRecord, records), (BlockingKey, keys),
                             (RecordLocation, registry)):
            for chunk in _chunks(batch, 5000):
                conn.execute(insert(model), chunk)
    shard_url = app.config["HIE"].tenant_db_url(SEARCH_TENANT)
    with engines.engine(shard_url).begin() as conn:
        for chunk in _chunks(shard_rows, 5000):
            conn.execute(insert(Patient), chunk)
    loader = _load_engine(shard_url)
    with loader.begin() as conn:
        conn.exec_driver_sql(
            f"LOAD DATA LOCAL INFILE '{directory / 'fhir_resources.tsv'}' INTO TABLE fhir_resources "
            "CHARACTER SET utf8mb4 (resource_type, id, patient_id, status, date, content) "
            f"SET version = 1, institution_id = {hospital}, last_updated = '{_db_time(LOADED_AT)}', sealed = 0")
        conn.exec_driver_sql(
            f"LOAD DATA LOCAL INFILE '{directory / 'fhir_tokens.tsv'}' INTO TABLE fhir_tokens "
            "CHARACTER SET utf8mb4 (resource_type, resource_id, param, system, code)")
        conn.exec_driver_sql("ANALYZE TABLE fhir_resources, fhir_tokens")
    loader.dispose()
    return generate_seconds, time.perf_counter() - start


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def bench_search(app: Flask, patients: int, per_patient: int, searches: int) -> Figures:
    """GET /fhir/Observation?patient=&code=loinc|code for random patients and codes of the loaded shard."""
    rng = random.Random(SEED + 4)
    client = app.test_client()
    headers = login(client, SEARCH_TENANT)
    ids = search_patient_ids(patients)
    expected = per_patient // len(OBSERVATIONS)
    timings = []
    for _ in range(searches + 20):
        code = OBSERVATIONS[rng.randrange(min(len(OBSERVATIONS), per_patient))][0]
        url = f"/fhir/Observation?patient={rng.choice(ids)}&code={LOINC}|{code}"
        elapsed, answer = timed(client, "GET", url, headers)
        assert answer["total"] == expected, (url, answer["total"])
        timings.append(elapsed)
    return Figures(timings[20:])


# --- report -------------------------------------------------------------------------------------------------------


def row(label: str, count: int, rate: str, figures: Figures, target_ms: float | None) -> str:
    """One line of the table; the target is a p99 in milliseconds."""
    verdict = "" if target_ms is None else f"p99 < {target_ms:g} ms  " + ("met" if figures.p(0.99) < target_ms
                                                                          else "MISSED")
    return f"{label:<44} {count:>5} {rate:>26} {figures.p50:>9.1f} {figures.p(0.99):>9.1f}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--bundles", type=int, default=50)
    parser.add_argument("--bundle-size", type=int, default=100)
    parser.add_argument("--everything-resources", type=int, default=500)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--patients", type=int, default=10000)
    parser.add_argument("--per-patient", type=int, default=100)
    parser.add_argument("--searches", type=int, default=500)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        app = build(Path(home), args.mysql, args.redis)
        try:
            ingest = bench_ingest(app, args.bundles, args.bundle_size)
            cold, cached = bench_everything(app, args.everything_resources, args.calls)
            generated, loaded = bulk_load(app, args.patients, args.per_patient)
            search = bench_search(app, args.patients, args.per_patient, args.searches)
        finally:
            app.extensions["hie.redis"].flushdb()
            app.extensions["hie.engines"].dispose()
            drop_databases(args.mysql)
    observations = args.patients * args.per_patient
    seconds = sum(ingest.timings)
    print(f"MariaDB + Redis, in-process WSGI, one thread; run took {time.perf_counter() - started:.0f} s")
    print(f"{'case':<44} {'n':>5} {'rate':>26} {'p50 ms':>9} {'p99 ms':>9}  target")
    print(row(f"ingest: transaction Bundle of {args.bundle_size}", args.bundles,
              f"{args.bundles / seconds:.2f} bundles/s {args.bundles * args.bundle_size / seconds:.0f} res/s",
              ingest, None))
    print(row(f"$everything {args.everything_resources} res / 3 tenants, cold", args.calls, "", cold, 50))
    print(row(f"$everything {args.everything_resources} res / 3 tenants, cached", args.calls, "", cached, 10))
    print(row(f"search patient+code, {observations:,} Observations", args.searches, "", search, 50))
    print(f"search shard load: {observations:,} Observations, {args.patients:,} patients: "
          f"{loaded:.0f} s load" + (f" + {generated:.0f} s generating files (cached now)" if generated else
                                    " (files cached)"))


if __name__ == "__main__":
    main()
