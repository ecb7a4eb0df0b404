"""The FHIR shared health record: round trips, versions, bundles, $everything across tenants, refusals."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from hie.platform import care
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.conftest import add_resident, shard_engine
from tests.fhir_helpers import ID_WANG, LOINC, clinical, create, patient

TYPES = ("Encounter", "Condition", "Observation", "DiagnosticReport", "MedicationRequest", "Procedure",
         "AllergyIntolerance", "Immunization", "DocumentReference", "ImagingStudy")


def _stored(app, tenant: str) -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM fhir_resources")).scalar()


def test_capability_statement_tells_the_version_and_types(client):
    body = client.get("/fhir/metadata").get_json()
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.3.0"
    types = {r["type"] for r in body["rest"][0]["resource"]}
    # ServiceRequest and Task: referrals; Group: the bulk export's institution groups ($export only)
    assert set(TYPES) | {"Patient", "AuditEvent", "ServiceRequest", "Task", "Group"} == types


@pytest.mark.parametrize("resource_type", TYPES)
def test_round_trip_with_versions(client, as_user, resource_type):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    stored = create(client, headers, clinical(resource_type, f"Patient/{subject['id']}"))
    assert stored["id"].startswith("yaodu.") and stored["meta"]["versionId"] == "1"
    url = f"/fhir/{resource_type}/{stored['id']}"
    read = client.get(url, headers=headers)
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    assert read.get_json() == stored
    changed = {**stored, "meta": None, "language": "zh-CN"}  # a change: an identical PUT stores no new version
    changed.pop("meta")
    updated = client.put(url, json=changed, headers={**headers, "If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.get_json()["meta"]["versionId"] == "2"
    stale = client.put(url, json=changed, headers={**headers, "If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.get_json()["resourceType"] == "OperationOutcome"
    first = client.get(f"{url}/_history/1", headers=headers)
    assert first.status_code == 200 and first.get_json()["meta"]["versionId"] == "1"
    assert client.get(f"{url}/_history/9", headers=headers).status_code == 404


def test_patient_round_trip_is_sealed_and_linked_to_the_empi(client, app, as_user):
    headers = as_user("yaodu.doctor")
    stored = create(client, headers, patient())
    assert client.get(f"/fhir/Patient/{stored['id']}", headers=headers).get_json()["name"] == [{"text": "王秀英"}]
    with shard_engine(app, "yaodu").connect() as conn:
        raw = repr(conn.execute(text("SELECT * FROM fhir_resources")).all())
        raw += repr(conn.execute(text("SELECT * FROM fhir_resource_versions")).all())
        raw += repr(conn.execute(text("SELECT * FROM fhir_tokens")).all())
    assert "王秀英" not in raw and "13935712345" not in raw and ID_WANG not in raw
    found = client.get(f"/fhir/Patient?identifier=urn:hie:id:CN-RIC|{ID_WANG}", headers=headers).get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == [stored["id"]]
    mine = client.get(f"/api/v1/patients/{stored['id']}", headers=headers).get_json()
    assert mine["master_person_id"]


def _transaction(*entries):
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _entry(resource, full_url=None):
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_transaction_resolves_urn_uuid_references(client, app, as_user):
    bundle = _transaction(
        _entry(clinical("Observation", "urn:uuid:p1"), None),
        _entry(patient(), "urn:uuid:p1"),
        _entry(clinical("Condition", "urn:uuid:p1")),
    )
    response = client.post("/fhir", json=bundle, headers=as_user("yaodu.doctor"))
    assert response.status_code == 200, response.get_json()
    entries = response.get_json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 3
    patient_id = entries[1]["resource"]["id"]
    assert entries[0]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert _stored(app, "yaodu") == 3


def test_transaction_with_one_bad_entry_stores_nothing(client, app, as_user, platform_db):
    bad = clinical("Observation", "urn:uuid:p1")
    bad["effectiveDateTime"] = "last tuesday"
    bundle = _transaction(_entry(patient(), "urn:uuid:p1"), _entry(clinical("Condition", "urn:uuid:p1")),
                          _entry(bad))
    response = client.post("/fhir", json=bundle, headers=as_user("yaodu.doctor"))
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[2].resource")
    assert _stored(app, "yaodu") == 0
    from hie.empi.models import PersonRecord

    assert platform_db.scalar(select(func.count()).select_from(PersonRecord)) == 0
    dangling = _transaction(_entry(clinical("Condition", "urn:uuid:nobody")))
    assert client.post("/fhir", json=dangling, headers=as_user("yaodu.doctor")).status_code == 400


def test_batch_keeps_good_entries(client, app, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    bad = clinical("Observation", f"Patient/{subject['id']}")
    bad["effectiveDateTime"] = "last tuesday"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _entry(clinical("Observation", f"Patient/{subject['id']}")), _entry(bad)]}
    response = client.post("/fhir", json=bundle, headers=headers).get_json()
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created", "400"]
    assert _stored(app, "yaodu") == 2


@pytest.mark.parametrize(("body", "status"), [
    ({"resourceType": "Observation", "status": "final"}, 400),
    ({"resourceType": "Spaceship"}, 400),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": "high"}, 400),
    ("not even an object", 400),
])
def test_malformed_resources_are_refused_with_operation_outcome(client, app, as_user, body, status):
    response = client.post("/fhir/Observation", json=body, headers=as_user("yaodu.doctor"))
    assert response.status_code == status
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert _stored(app, "yaodu") == 0


def test_unknown_type_and_reference_to_an_invisible_patient_are_refused(client, app, as_user):
    assert client.post("/fhir/Spaceship", json={"resourceType": "Spaceship"},
                       headers=as_user("yaodu.doctor")).status_code == 404
    other = create(client, as_user("quwo.doctor"), patient())
    response = client.post("/fhir/Observation", json=clinical("Observation", f"Patient/{other['id']}"),
                           headers=as_user("yaodu.doctor"))
    assert response.status_code == 422
    assert response.get_json()["issue"][0]["expression"] == ["Observation.subject"]
    assert _stored(app, "yaodu") == 0


def test_oversize_payload_is_refused(client, app, as_user):
    big = clinical("Observation", "Patient/x")
    big["note"] = [{"text": "x" * (app.config["HIE"].max_request_bytes + 1)}]
    response = client.post("/fhir/Observation", json=big, headers=as_user("yaodu.doctor"))
    assert response.status_code == 413 and response.get_json()["resourceType"] == "OperationOutcome"


def _institution_id(platform_db, code):
    return platform_db.scalar(select(Institution.id).where(Institution.code == code))


def _same_person_in_two_tenants(client, as_user):
    yaodu = create(client, as_user("yaodu.doctor"), patient())
    create(client, as_user("yaodu.doctor"), clinical("Observation", f"Patient/{yaodu['id']}"))
    quwo = create(client, as_user("quwo.doctor"), patient(phone="13935712345"))
    create(client, as_user("quwo.doctor"), clinical("Condition", f"Patient/{quwo['id']}"))
    return yaodu, quwo


def test_everything_follows_the_master_person_across_tenants(client, app, as_user, platform_db):
    yaodu, quwo = _same_person_in_two_tenants(client, as_user)
    own_only = client.get(f"/fhir/Patient/{quwo['id']}/$everything", headers=as_user("quwo.doctor")).get_json()
    assert {e["resource"]["resourceType"] for e in own_only["entry"]} == {"Patient", "Condition"}
    person = client.get(f"/api/v1/patients/{quwo['id']}", headers=as_user("quwo.doctor")).get_json()
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "QUWO-CH"), person["master_person_id"],
                   care.CareKind.referral)
    everything = client.get(f"/fhir/Patient/{quwo['id']}/$everything", headers=as_user("quwo.doctor")).get_json()
    kinds = sorted(e["resource"]["resourceType"] for e in everything["entry"])
    assert kinds == ["Condition", "Observation", "Patient", "Patient"]
    assert everything["total"] == 4
    assert len({e["resource"]["id"] for e in everything["entry"]}) == 4


def test_everything_is_404_for_an_unauthorised_clinician(client, as_user):
    yaodu, _ = _same_person_in_two_tenants(client, as_user)
    for username in ("lfph.specialist", "quwo.doctor"):
        response = client.get(f"/fhir/Patient/{yaodu['id']}/$everything", headers=as_user(username))
        assert response.status_code == 404
    assert client.get(f"/fhir/Patient/{yaodu['id']}/$everything", headers=as_user("yaodu.fd")).status_code == 404


def test_write_invalidates_the_cached_everything(client, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    first = client.get(f"/fhir/Patient/{subject['id']}/$everything", headers=headers).get_json()
    create(client, headers, clinical("Condition", f"Patient/{subject['id']}"))
    second = client.get(f"/fhir/Patient/{subject['id']}/$everything", headers=headers).get_json()
    assert second["total"] == first["total"] + 1


def test_resident_sees_only_their_own_everything(client, app, as_user):
    from tests.conftest import login

    yaodu, quwo = _same_person_in_two_tenants(client, as_user)
    stranger = create(client, as_user("yaodu.doctor"), patient(name="李四", id_number=None, phone="13700000000"))
    add_resident(app, "YAODU-CH", yaodu["id"])
    headers = login(client, "resident.wang")
    mine = client.get(f"/fhir/Patient/{yaodu['id']}/$everything", headers=headers).get_json()
    assert mine["total"] == 4
    assert client.get(f"/fhir/Patient/{stranger['id']}/$everything", headers=headers).status_code == 404
    assert client.post("/fhir/Observation", json=clinical("Observation", f"Patient/{yaodu['id']}"),
                       headers=headers).status_code == 403


def test_cross_tenant_read_by_id_needs_a_right(client, app, as_user, platform_db):
    yaodu, quwo = _same_person_in_two_tenants(client, as_user)
    observation = client.get(f"/fhir/Patient/{yaodu['id']}/$everything", headers=as_user("yaodu.doctor")) \
        .get_json()["entry"]
    obs_id = next(e["resource"]["id"] for e in observation if e["resource"]["resourceType"] == "Observation")
    assert client.get(f"/fhir/Observation/{obs_id}", headers=as_user("quwo.doctor")).status_code == 404
    reason = {"X-Break-Glass-Reason": "unconscious patient, prior records needed"}
    assert client.get(f"/fhir/Observation/{obs_id}", headers={**as_user("quwo.doctor"), **reason}).status_code == 200


def test_prior_results_tell_where_and_when(client, as_user):
    yaodu, quwo = _same_person_in_two_tenants(client, as_user)
    ct = clinical("ImagingStudy", f"Patient/{yaodu['id']}")
    from datetime import date, timedelta

    ct["started"] = f"{(date.today() - timedelta(days=5)).isoformat()}T09:00:00Z"
    create(client, as_user("yaodu.doctor"), ct)
    response = client.get(f"/fhir/Patient/{quwo['id']}/$prior-results?code=CT&days=30",
                          headers=as_user("quwo.doctor"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["parameter"][0] == {"name": "found", "valueBoolean": True}
    parts = {p["name"]: p for p in body["parameter"][1]["part"]}
    assert parts["institution"]["valueString"] == "尧都区人民医院"
    assert parts["visible"]["valueBoolean"] is False and "result" not in parts
    assert client.get(f"/fhir/Patient/{quwo['id']}/$prior-results", headers=as_user("quwo.doctor")).status_code \
        == 400
    none = client.get(f"/fhir/Patient/{quwo['id']}/$prior-results?code={LOINC}|2345-7",
                      headers=as_user("quwo.doctor")).get_json()
    assert none["parameter"] == [{"name": "found", "valueBoolean": False}]


def test_auditor_reads_audit_events_as_fhir(client, as_user):
    headers = as_user("yaodu.doctor")
    create(client, headers, patient())
    events = client.get("/api/v1/audit?action=create", headers=as_user("auditor")).get_json()
    seq = events[0]["seq"]
    response = client.get(f"/fhir/AuditEvent/{seq}", headers=as_user("auditor"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["resourceType"] == "AuditEvent" and body["action"] == "C"
    from fhir.resources.R4B.auditevent import AuditEvent

    AuditEvent.model_validate(body)
    assert client.get(f"/fhir/AuditEvent/{seq}", headers=headers).status_code == 403
    assert client.get(f"/fhir/AuditEvent/{seq}", headers=as_user("yaodu.auditor")).status_code == 200
    assert client.put(f"/fhir/AuditEvent/{seq}", json=body, headers=headers).status_code == 405


def test_dates_without_a_zone_are_local_time(client, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    create(client, headers, clinical("Observation", f"Patient/{subject['id']}", when="2024-03-05T07:00:00+08:00"))
    same_day = client.get(f"/fhir/Observation?patient={subject['id']}&date=2024-03-05", headers=headers).get_json()
    assert same_day["total"] == 1
    utc_day = client.get(f"/fhir/Observation?patient={subject['id']}&date=2024-03-04", headers=headers).get_json()
    assert utc_day["total"] == 0
