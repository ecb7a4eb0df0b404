"""FHIR Bulk Data export ($export, IG v2.0.0): kick-off, status, manifest, NDJSON files, deletion; the records a caller
could read one by one and no others; health administrators' files de-identified; every exported patient audited."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select, update

from hie.exchange.bulk_job import run_export
from hie.exchange.models import BulkExport
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import User
from hie.platform.db import session_scope, utcnow
from tests.conftest import new_patient, valid_id
from tests.fhir_helpers import clinical, create, patient, run_jobs

KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
SYNTHEA = Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json"
ID_ZHAO = valid_id("14102119700101003")


def _path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def kick_off(client: Any, headers: dict[str, str], url: str = "/fhir/$export") -> str:
    """Start an export; the path of its status URL."""
    response = client.get(url, headers={**headers, **KICK_OFF})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["resourceType"] == "OperationOutcome"
    return _path(response.headers["Content-Location"])


def finished(client: Any, app: Any, headers: dict[str, str], status_url: str) -> dict[str, Any]:
    """Run the queued jobs and read the manifest."""
    run_jobs(app)
    response = client.get(status_url, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def files(client: Any, headers: dict[str, str], manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every output file's resources by type, checking the manifest's counts and the NDJSON content type."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        response = client.get(_path(item["url"]), headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/fhir+ndjson"
        lines = response.get_data(as_text=True).splitlines()
        assert len(lines) == item["count"]
        out[item["type"]] = [json.loads(line) for line in lines]
        assert {resource["resourceType"] for resource in out[item["type"]]} == {item["type"]}
    return out


def _ids(found: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str]]:
    return {(kind, resource["id"]) for kind, resources in found.items() for resource in resources}


def _export_events(platform_db: Any, username: str) -> list[AuditEvent]:
    platform_db.rollback()
    return list(platform_db.scalars(select(AuditEvent).where(AuditEvent.action == "export",
                                                             AuditEvent.username == username)
                                    .order_by(AuditEvent.seq)))


@pytest.fixture
def region(client, as_user):
    """Records in two institutions of yaodu and one of quwo; yaodu.fd refers its patient to LF-PH."""
    doctor, fd, quwo = as_user("yaodu.doctor"), as_user("yaodu.fd"), as_user("quwo.doctor")
    fhir_patient = create(client, doctor, patient())
    registered = new_patient(client, doctor, mrn="REG-1", name="李四", id_number=valid_id("14100219800101001"),
                             phone="13800138000")
    mine = {("Patient", fhir_patient["id"]), ("Patient", registered["id"])}
    for kind, code in (("Observation", "8480-6"), ("Condition", "38341003"), ("Observation", "8462-4")):
        mine.add((kind, create(client, doctor, clinical(kind, f"Patient/{fhir_patient['id']}", code))["id"]))
    mine.add(("Encounter", create(client, doctor, clinical("Encounter", f"Patient/{registered['id']}"))["id"]))
    referred = create(client, fd, patient(name="孙七", id_number=None, phone="13700000010"))
    referred_obs = create(client, fd, clinical("Observation", f"Patient/{referred['id']}"))
    other = create(client, quwo, patient(name="赵六", id_number=ID_ZHAO, phone="13700000009"))
    create(client, quwo, clinical("Observation", f"Patient/{other['id']}"))
    referral = client.post("/api/v1/referrals", headers=fd, json={
        "patient_id": referred["id"], "direction": "up", "receiving_institution": "LF-PH", "reason": "会诊"})
    assert referral.status_code == 201, referral.get_json()
    return {"mine": mine, "referred": {("Patient", referred["id"]), ("Observation", referred_obs["id"])},
            "patients": {"doctor": {fhir_patient["id"], registered["id"]}, "referred": referred["id"]}}


def test_a_clinician_exports_exactly_what_they_could_read_one_by_one(client, app, as_user, region, platform_db):
    doctor = as_user("yaodu.doctor")
    status_url = kick_off(client, doctor)
    manifest = finished(client, app, doctor, status_url)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("/fhir/$export")
    assert {item["type"] for item in manifest["output"]} == {"Patient", "Observation", "Condition", "Encounter"}
    found = files(client, doctor, manifest)
    assert _ids(found) == region["mine"]
    for kind, resources in found.items():
        for resource in resources:  # each line is the record as a read by id returns it to the same caller
            read = client.get(f"/fhir/{kind}/{resource['id']}", headers=doctor)
            assert read.status_code == 200 and read.get_json() == resource
    for kind, resource_id in region["referred"]:  # another institution's records are not readable, nor exported
        assert client.get(f"/fhir/{kind}/{resource_id}", headers=doctor).status_code == 404
    events = _export_events(platform_db, "yaodu.doctor")
    assert len([e for e in events if e.detail.startswith("kick-off")]) == 1
    assert sorted(e.resource_type for e in events if e.detail.startswith("download")) == sorted(found)
    exported = sorted(e.patient for e in events if e.patient is not None)
    assert exported == sorted(f"yaodu/{p}" for p in region["patients"]["doctor"])  # once per patient
    assert all(e.purpose == "own_institution" for e in events if e.patient is not None)


def test_a_care_relationship_reaches_another_tenants_records_in_the_export(client, app, as_user, region,
                                                                           platform_db):
    specialist = as_user("lfph.specialist")
    found = files(client, specialist, finished(client, app, specialist, kick_off(client, specialist,
                                                                                  "/fhir/Patient/$export")))
    assert _ids(found) == region["referred"]
    events = _export_events(platform_db, "lfph.specialist")
    assert [(e.patient, e.purpose) for e in events if e.patient] == [
        (f"yaodu/{region['patients']['referred']}", "care_relationship")]


def test_type_and_since_narrow_the_export(client, app, as_user, region):
    doctor = as_user("yaodu.doctor")
    manifest = finished(client, app, doctor, kick_off(client, doctor, "/fhir/$export?_type=Observation,Condition"
                                                      "&_outputFormat=application/fhir%2Bndjson"))
    assert {(item["type"], item["count"]) for item in manifest["output"]} == {("Observation", 2), ("Condition", 1)}
    since = manifest["transactionTime"]
    later = create(client, doctor, clinical("Observation", f"Patient/{sorted(region['patients']['doctor'])[0]}"))
    manifest = finished(client, app, doctor, kick_off(client, doctor, f"/fhir/$export?_since={quote(since)}"))
    assert _ids(files(client, doctor, manifest)) == {("Observation", later["id"])}


@pytest.mark.parametrize(("url", "headers", "element"), [
    ("/fhir/$export", {"Accept": "application/fhir+json"}, "Prefer"),
    ("/fhir/$export", {"Prefer": "respond-async"}, "Accept"),
    ("/fhir/$export?_type=Observation,Spaceship", KICK_OFF, "_type"),
    ("/fhir/$export?_since=yesterday", KICK_OFF, "_since"),
    ("/fhir/$export?_since=2026-11-01", KICK_OFF, "_since"),
    ("/fhir/Patient/$export?_outputFormat=text/csv", KICK_OFF, "_outputFormat"),
    ("/fhir/$export?_typeFilter=Observation%3Fstatus%3Dfinal", KICK_OFF, "_typeFilter"),
    ("/fhir/$export?colour=blue", KICK_OFF, "colour"),
])
def test_a_malformed_kick_off_is_refused_naming_what_and_starts_nothing(client, as_user, platform_db, url, headers,
                                                                        element):
    response = client.get(url, headers={**as_user("yaodu.doctor"), **headers})
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["expression"] == [element]
    platform_db.rollback()
    assert platform_db.scalars(select(BulkExport)).all() == []


def test_lenient_handling_ignores_unknown_parameters(client, app, as_user):
    headers = {**as_user("yaodu.doctor"), **KICK_OFF, "Prefer": "respond-async, handling=lenient"}
    response = client.get("/fhir/$export?colour=blue", headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.mark.parametrize("url", ["/fhir/$export", "/fhir/Patient/$export", "/fhir/Group/institution-YAODU-CH/$export"])
def test_a_kick_off_by_post_is_405_naming_get(client, as_user, platform_db, url):
    response = client.post(url, headers={**as_user("yaodu.doctor"), **KICK_OFF}, json={"resourceType": "Parameters"})
    assert response.status_code == 405 and response.headers["Allow"] == "GET"
    assert response.get_json()["resourceType"] == "OperationOutcome"
    platform_db.rollback()
    assert platform_db.scalars(select(BulkExport)).all() == []


def test_status_files_and_delete_belong_to_the_requester_only(client, app, as_user, region, platform_db):
    doctor, nurse = as_user("yaodu.doctor"), as_user("yaodu.nurse")
    status_url = kick_off(client, doctor)
    manifest = finished(client, app, doctor, status_url)
    export_id = status_url.rsplit("/", 1)[1]
    urls = [status_url, *(_path(item["url"]) for item in manifest["output"])]
    for url in urls:  # a colleague of the same institution, who could read the same records, still gets 404
        response = client.get(url, headers=nurse)
        assert response.status_code == 404 and response.get_json()["resourceType"] == "OperationOutcome"
    assert client.delete(status_url, headers=nurse).status_code == 404
    refused = [(e.outcome, e.resource_id) for e in _export_events(platform_db, "yaodu.nurse")]
    assert refused == [("denied", export_id)] * (len(urls) + 1)
    assert client.get(f"{status_url}/Spaceship.ndjson", headers=doctor).status_code == 404
    assert client.get(status_url, headers=as_user("auditor")).status_code == 403
    assert client.get(status_url, headers=doctor).status_code == 200  # untouched by the refusals


def test_files_are_sealed_on_disk_and_deleting_removes_them(client, app, as_user, region, platform_db):
    doctor = as_user("yaodu.doctor")
    status_url = kick_off(client, doctor)
    manifest = finished(client, app, doctor, status_url)
    directory = Path(app.config["HIE"].home) / "exports" / status_url.rsplit("/", 1)[1]
    on_disk = sorted(path.name for path in directory.iterdir())
    assert on_disk == sorted(f"{item['type']}.ndjson" for item in manifest["output"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        raw = path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"resourceType" not in raw and "王秀英".encode() not in raw and b"13935712345" not in raw
    response = client.delete(status_url, headers=doctor)
    assert response.status_code == 202
    assert not directory.exists()
    assert client.get(status_url, headers=doctor).status_code == 404
    assert client.get(_path(manifest["output"][0]["url"]), headers=doctor).status_code == 404
    platform_db.rollback()
    assert platform_db.get(BulkExport, status_url.rsplit("/", 1)[1]).status == "deleted"


def test_group_is_an_institutions_registered_patients(client, app, as_user, region, platform_db):
    doctor, fd = as_user("yaodu.doctor"), as_user("yaodu.fd")
    manifest = finished(client, app, fd, kick_off(client, fd, "/fhir/Group/institution-YAODU-T1/$export"))
    assert _ids(files(client, fd, manifest)) == region["referred"]
    for group in ("institution-YAODU-T1", "institution-QUWO-CH", "institution-NOWHERE", "YAODU-CH"):
        response = client.get(f"/fhir/Group/{group}/$export", headers={**doctor, **KICK_OFF})
        assert response.status_code == 404, (group, response.get_data(as_text=True))
    outcomes = [(e.outcome, e.resource_id) for e in _export_events(platform_db, "yaodu.doctor")]
    assert outcomes == [("denied", "institution-YAODU-T1"), ("denied", "institution-QUWO-CH"),
                        ("not_found", "institution-NOWHERE"), ("not_found", "YAODU-CH")]


def _identifying_values(resource: dict[str, Any]) -> set[str]:
    """Names, identifier values, phone numbers, address lines and the exact birth date of a Patient as sent."""
    values = {resource["birthDate"], resource["id"]}
    for name in resource.get("name", []):
        values.update([*name.get("given", []), *([name["family"]] if "family" in name else []),
                       *([name["text"]] if "text" in name else [])])
    values.update(identifier["value"] for identifier in resource.get("identifier", []))
    values.update(telecom["value"] for telecom in resource.get("telecom", []))
    for address in resource.get("address", []):
        values.update([*address.get("line", []), *([address["text"]] if "text" in address else [])])
    return values


def test_health_administrators_get_de_identified_files_only(client, app, as_user, region, platform_db):
    doctor, admin = as_user("yaodu.doctor"), as_user("healthadmin")
    synthea = json.loads(SYNTHEA.read_text())
    stored = client.post("/fhir", json=synthea, headers=doctor)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    bob = synthea["entry"][0]["resource"]
    bob_id = stored.get_json()["entry"][0]["response"]["location"].split("/")[1]
    secrets = _identifying_values(bob) | {bob_id, "Shyla233", "王秀英", "李四", "孙七", "赵六", "13935712345",
                                          "13800138000", "13700000010", "13700000009", ID_ZHAO,
                                          valid_id("14100219580312002"), valid_id("14100219800101001"),
                                          "山西省临汾市尧都区屯里镇东关村12号", "1958-03-12"}
    secrets |= {patient_id for patient_id in region["patients"]["doctor"]} | {region["patients"]["referred"]}
    manifest = finished(client, app, admin, kick_off(client, admin))
    found = files(client, admin, manifest)
    text = "\n".join(json.dumps(r, ensure_ascii=False) for resources in found.values() for r in resources)
    assert [secret for secret in sorted(secrets) if secret in text] == []
    patients = {r["id"]: r for r in found["Patient"]}
    assert len(patients) == 5  # every patient of the city: three in yaodu (one Synthea), one in quwo, one register
    assert sorted(r["birthDate"] for r in patients.values()) == sorted(["1958"] * 4 + [bob["birthDate"][:4]])
    assert all("name" not in r and "identifier" not in r and "telecom" not in r and "text" not in r
               for r in patients.values())
    subjects = {r["subject"]["reference"] for r in found["Observation"]}
    assert subjects <= {f"Patient/{pid}" for pid in patients}  # references follow the pseudonyms
    assert len(found["Observation"]) == 4 + sum(e["resource"]["resourceType"] == "Observation"
                                                for e in synthea["entry"])
    again = files(client, admin, finished(client, app, admin, kick_off(client, admin, "/fhir/Patient/$export"
                                                                              "?_type=Patient")))
    assert not set(patients) & {r["id"] for r in again["Patient"]}  # pseudonyms do not link two exports
    events = _export_events(platform_db, "healthadmin")
    assert len([e for e in events if e.patient]) == 10 and {e.purpose for e in events} == {"deidentified"}


def test_a_health_administrators_group_lies_in_their_region(client, app, as_user, region, platform_db):
    admin = as_user("healthadmin")
    manifest = finished(client, app, admin, kick_off(client, admin, "/fhir/Group/institution-QUWO-CH/$export"))
    found = files(client, admin, manifest)
    assert {kind: len(resources) for kind, resources in found.items()} == {"Patient": 1, "Observation": 1}
    assert "赵六" not in json.dumps(found, ensure_ascii=False)


def test_the_requester_losing_access_fails_the_export_with_an_outcome(client, app, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    with session_scope(app.extensions["hie.engines"].platform) as session:
        user_id = session.scalar(select(User.id).where(User.username == "yaodu.doctor"))
        session.add(BulkExport(id="e" * 36, user_id=user_id, level="system", request_url="http://x/fhir/$export",
                               deidentified=False, status="accepted", transaction_time=utcnow()))
        session.execute(update(User).where(User.id == user_id).values(active=False))
    assert run_export(app, "e" * 36) == "failed"
    with session_scope(app.extensions["hie.engines"].platform) as session:
        session.execute(update(User).where(User.id == user_id).values(active=True))
    response = client.get(f"/fhir/$export/{'e' * 36}", headers=doctor)
    assert response.status_code == 500
    assert "no longer active" in response.get_json()["issue"][0]["diagnostics"]
    assert run_export(app, "e" * 36) == "skipped"  # a finished export is never run twice


def test_running_exports_answer_202_with_progress_and_are_limited_per_user(client, app, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    with session_scope(app.extensions["hie.engines"].platform) as session:
        user_id = session.scalar(select(User.id).where(User.username == "yaodu.doctor"))
        for n in range(2):
            session.add(BulkExport(id=f"{n}" * 36, user_id=user_id, level="system", request_url="x",
                                   deidentified=False, status="running", progress=f"{n} resources written",
                                   transaction_time=utcnow()))
    response = client.get("/fhir/$export/" + "1" * 36, headers=doctor)
    assert response.status_code == 202
    assert response.headers["X-Progress"] == "1 resources written" and response.headers["Retry-After"] == "5"
    refused = client.get("/fhir/$export", headers={**doctor, **KICK_OFF})
    assert refused.status_code == 429 and refused.get_json()["resourceType"] == "OperationOutcome"
    assert client.delete("/fhir/$export/" + "0" * 36, headers=doctor).status_code == 202
    assert run_export(app, "0" * 36) == "skipped"
    kick_off(client, doctor)


def test_with_a_queue_the_kick_off_answers_before_the_job_runs(client, app, as_user, region):
    doctor = as_user("yaodu.doctor")
    status_url = kick_off(client, doctor)
    waiting = client.get(status_url, headers=doctor)
    if app.extensions["hie.queue"] is None:
        assert waiting.status_code == 200  # inline: the job ran right after the kick-off committed
    else:
        assert waiting.status_code == 202 and waiting.headers["X-Progress"] == "accepted"
    assert finished(client, app, doctor, status_url)["output"]


def test_the_capability_statement_declares_bulk_export(client):
    statement = client.get("/fhir/metadata").get_json()
    assert statement["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    assert {o["definition"] for o in statement["rest"][0]["operation"]} >= {
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
    by_type = {entry["type"]: entry for entry in statement["rest"][0]["resource"]}
    assert "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export" in {
        o["definition"] for o in by_type["Patient"]["operation"]}
    assert [o["definition"] for o in by_type["Group"]["operation"]] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"]
