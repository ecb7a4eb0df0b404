"""`hie demo` loads linked patients across tenants, visible to the demo clinicians, and a rerun adds nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hie.platform.app import create_app
from hie.platform.config import load_config
from tests.conftest import MYSQL_URL

PASSWORD = "Linfen-Demo-2026"
LOINC = "http://loinc.org"
LAB_CODES = ("58410-2", "1742-6", "2160-0", "4548-4", "1558-6")
DEMO_BIND = "127.0.0.1:5077"
PLATFORM_TABLES = ("users", "empi_persons", "empi_records", "exchange_registry", "care_relationships")

pytestmark = pytest.mark.skipif(bool(MYSQL_URL), reason="reads the demo's SQLite files directly")


def _hie(home: Path, *args: str, bind: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIE_")}
    env["HIE_HOME"] = str(home)
    if bind:
        env["HIE_BIND"] = bind
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", *args], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def _query(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def _counts(home: Path) -> dict[str, int]:
    counts = {table: _query(home / "platform.db", f"SELECT COUNT(*) FROM {table}")[0][0] for table in PLATFORM_TABLES}
    for shard in sorted((home / "tenants").glob("*.db")):
        for table in ("patients", "fhir_resources", "fhir_tokens"):
            counts[f"{shard.stem}.{table}"] = _query(shard, f"SELECT COUNT(*) FROM {table}")[0][0]
    return counts


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One demo build for the module: it is the slow part."""
    home = tmp_path_factory.mktemp("demo-data")
    yield home, _hie(home, "init", "--with-demo", bind=DEMO_BIND).stdout


def test_patients_in_several_tenants_with_coded_labs(demo: tuple[Path, str]) -> None:
    home, output = demo
    assert "demo records: 300 patients" in output
    shards = {shard.stem: _query(shard, "SELECT COUNT(*) FROM patients")[0][0]
              for shard in (home / "tenants").glob("*.db")}
    assert sum(count >= 50 for count in shards.values()) >= 3
    assert sum(shards.values()) >= 300
    labs = {code: 0 for code in LAB_CODES}
    for shard in (home / "tenants").glob("*.db"):
        for code, count in _query(shard, "SELECT code, COUNT(*) FROM fhir_tokens WHERE param = 'code' AND system = ?"
                                  " AND code IN (?, ?, ?, ?, ?) GROUP BY code", LOINC, *LAB_CODES):
            labs[code] += count
    assert all(labs.values()), labs
    types = {row[0] for shard in (home / "tenants").glob("*.db")
             for row in _query(shard, "SELECT DISTINCT resource_type FROM fhir_resources")}
    assert {"Observation", "DiagnosticReport", "ImagingStudy", "DocumentReference", "Condition",
            "MedicationRequest", "Encounter", "Immunization"} <= types


@pytest.mark.parametrize(("username", "institution", "tenants"), [
    ("yaodu.familydoctor", "YAODU-T1", ("linfen", "yaodu")),
    ("quwo.doctor", "QUWO-CH", ("linfen", "quwo")),
])
def test_everything_shows_records_from_both_tenants(demo: tuple[Path, str], username: str, institution: str,
                                                    tenants: tuple[str, str]) -> None:
    home, _ = demo
    rows = _query(home / "platform.db", """
        SELECT r.patient_id FROM care_relationships c
        JOIN institutions i ON i.id = c.institution_id
        JOIN empi_records r ON r.person_id = c.master_person_id AND r.institution_id = i.id
        WHERE i.code = ? AND (SELECT COUNT(*) FROM exchange_registry x WHERE x.master_person_id = c.master_person_id
                              AND x.tenant_code IN (?, ?)) = 2""", institution, *tenants)
    assert rows, f"no patient of {institution} with a care relationship and records in {tenants}"
    app = create_app(load_config({"HIE_HOME": str(home)}))
    try:
        with app.test_client() as client:
            token = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
            response = client.get(f"/fhir/Patient/{rows[0][0]}/$everything", headers=headers)
    finally:
        app.extensions["hie.engines"].dispose()
    assert response.status_code == 200, response.get_json()
    resources = [entry["resource"] for entry in response.get_json()["entry"]]
    shards = {r["id"].split(".", 1)[0] for r in resources if r["resourceType"] != "Patient"}
    assert set(tenants) <= shards, shards
    assert sum(r["resourceType"] == "Patient" for r in resources) >= 2


def test_rerun_changes_nothing(demo: tuple[Path, str]) -> None:
    home, _ = demo
    before = _counts(home)
    again = _hie(home, "demo")
    assert "demo records: already loaded" in again.stdout
    assert _counts(home) == before


@pytest.fixture(scope="module")
def demo_client(demo: tuple[Path, str]) -> Iterator[Any]:
    """A client on the demo home, with a login helper for the demo accounts."""
    home, _ = demo
    app = create_app(load_config({"HIE_HOME": str(home)}))
    with app.test_client() as client:
        yield client
    app.extensions["hie.engines"].dispose()


def _demo_login(client: Any, username: str) -> dict[str, str]:
    token = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert token.status_code == 200, token.get_json()
    return {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def test_resident_sees_own_records_through_the_portal_and_fhir(demo: tuple[Path, str], demo_client: Any) -> None:
    headers = _demo_login(demo_client, "yaodu.resident")
    found = demo_client.get("/fhir/Patient", headers=headers).get_json()
    own = [entry["resource"]["id"] for entry in found["entry"]]
    assert own, "the resident finds no Patient of their own"
    assert demo_client.get("/api/v1/auth/me", headers=headers).get_json()["patient_id"] == own[0]
    record = demo_client.get(f"/api/v1/patients/{own[0]}", headers=headers)
    assert record.status_code == 200, record.get_json()
    assert record.get_json()["access_basis"] == "self" and record.get_json()["master_person_id"]
    everything = demo_client.get(f"/fhir/Patient/{own[0]}/$everything", headers=headers)
    assert everything.status_code == 200, everything.get_json()
    resources = [entry["resource"] for entry in everything.get_json()["entry"]]
    shards = {r["id"].split(".", 1)[0] for r in resources if r["resourceType"] != "Patient"}
    assert {"yaodu", "linfen"} <= shards, "the township centre's and the city hospital's records"
    observations = demo_client.get(f"/fhir/Observation?patient={own[0]}", headers=headers).get_json()
    assert observations["total"] > 0 and observations["entry"]


def test_init_shows_where_to_log_in_at_the_configured_address(demo: tuple[Path, str]) -> None:
    _, output = demo
    assert f"curl -s -X POST http://{DEMO_BIND}/api/v1/auth/token" in output
    assert f"http://{DEMO_BIND}/docs" in output and "127.0.0.1:5000" not in output


def test_steward_login_has_an_open_review_to_decide(demo: tuple[Path, str], demo_client: Any) -> None:
    _, output = demo
    assert "linfen.steward" in output and "data_steward" in output
    headers = _demo_login(demo_client, "linfen.steward")
    reviews = demo_client.get("/api/v1/empi/reviews", headers=headers)
    assert reviews.status_code == 200, reviews.get_json()
    pairs = {(r["record"]["local_id"], r["candidate"]["institution_code"]) for r in reviews.get_json()}
    assert ("QUWOCH900001", "YAODU-CH") in pairs
    person = reviews.get_json()[0]["candidate"]["master_person_id"]
    history = demo_client.get(f"/api/v1/empi/persons/{person}/history", headers=headers)
    assert history.status_code == 200, history.get_json()


def test_referrals_in_every_state_made_once(demo: tuple[Path, str]) -> None:
    home, out = demo
    assert "demo referrals: 16 referrals from YAODU-T1" in out
    platform = home / "platform.db"
    states = {status for (status,) in _query(platform, "SELECT DISTINCT status FROM referrals")}
    assert states == {"requested", "accepted", "declined", "arrived", "completed", "cancelled", "no_show"}
    assert _query(platform, "SELECT COUNT(*) FROM referrals WHERE follow_up_of IS NOT NULL")[0][0] == 2
    slots = _query(platform, "SELECT COUNT(DISTINCT institution_id), SUM(booked) FROM referral_slots")[0]
    assert slots[0] == 2 and slots[1] > 0, "both hospitals publish slots, and accepting booked some"
    before = _query(platform, "SELECT COUNT(*), (SELECT COUNT(*) FROM referral_steps) FROM referrals")
    assert "demo referrals: already made" in _hie(home, "demo").stdout
    assert _query(platform, "SELECT COUNT(*), (SELECT COUNT(*) FROM referral_steps) FROM referrals") == before


def test_family_doctor_care_shows_on_the_worklist_the_portal_and_the_figures(demo: tuple[Path, str],
                                                                             demo_client: Any) -> None:
    home, out = demo
    assert "demo family doctor: 3 teams" in out and "yaodu.village1" in out and "yaodu.publichealth" in out
    summary = demo_client.get("/api/v1/family-doctor/worklist/summary",
                              headers=_demo_login(demo_client, "yaodu.familydoctor")).get_json()
    assert summary["team"] == "YAODU-T1-A" and min(summary["due"], summary["overdue"], summary["alerts"],
                                                   summary["expiring"]) > 0, summary
    resident = _demo_login(demo_client, "yaodu.resident")
    contract = demo_client.get("/api/v1/me/contract", headers=resident).get_json()
    assert contract["team"]["code"] == "YAODU-T1-A"
    assert "hypertension" in {package["code"] for package in contract["packages"]}
    readings = demo_client.get("/api/v1/me/vitals", headers=resident).get_json()["readings"]
    assert {reading["source"] for reading in readings} == {"self", "team"}
    assert demo_client.get("/api/v1/me/education", headers=resident).get_json(), "articles were delivered"
    total = demo_client.get("/api/v1/stats/family-doctor",
                            headers=_demo_login(demo_client, "healthadmin")).get_json()["total"]
    hearts = total["hypertension"]
    assert hearts["registered"] > 100 and 0.5 < hearts["controlled_share"] < 0.95 and hearts["lost_to_follow_up"] > 0
    platform = home / "platform.db"
    classes = {c for (c,) in _query(platform, "SELECT DISTINCT classification FROM fd_follow_ups WHERE status='done'")}
    assert classes == {"controlled", "not_controlled", "urgent"}
    before = _query(platform, "SELECT COUNT(*), (SELECT COUNT(*) FROM fd_vitals) FROM fd_contracts")
    assert "demo family doctor: already made" in _hie(home, "demo").stdout
    assert _query(platform, "SELECT COUNT(*), (SELECT COUNT(*) FROM fd_vitals) FROM fd_contracts") == before


def test_consultations_in_every_state_and_lectures(demo: tuple[Path, str], demo_client: Any) -> None:
    home, out = demo
    assert "demo consultations: 12 from" in out
    platform = home / "platform.db"
    states = {status for (status,) in _query(platform, "SELECT DISTINCT status FROM consultations")}
    assert states == {"requested", "accepted", "declined", "in_session", "opinion_given", "acknowledged", "closed",
                      "cancelled"}
    specialist = _demo_login(demo_client, "specialist")
    answered = demo_client.get("/api/v1/consultations?box=incoming&status=closed", headers=specialist).get_json()
    verified = demo_client.get(f"/api/v1/consultations/{answered[0]['id']}/opinion/verify", headers=specialist)
    assert verified.get_json()["valid"] is True
    queue = demo_client.get("/api/v1/reading-queue?kind=imaging_read", headers=specialist).get_json()
    assert queue, "open imaging reads wait in the queue"
    credits = demo_client.get("/api/v1/teaching/me", headers=_demo_login(demo_client, "yaodu.familydoctor")).get_json()
    assert credits["total_credits"] >= 1, credits
    assert "demo consultations: already made" in _hie(home, "demo").stdout
