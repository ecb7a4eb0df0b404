"""FHIR conformance details: a truthful CapabilityStatement, Bundle requests, error paths, routing, _count=0."""

from __future__ import annotations

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select, text

from hie.exchange.resources import WRITABLE
from hie.platform.audit.models import AuditEvent
from tests.conftest import shard_engine
from tests.fhir_helpers import clinical, create, patient

SAMPLE = {"reference": "Patient/nobody", "token": "urn:x|y", "date": "ge2020-01-01", "string": "x"}
CANDIDATES = ("patient", "subject", "identifier", "code", "type", "vaccine-code", "category", "status",
              "clinical-status", "modality", "date", "birthdate", "_lastUpdated", "name", "family", "gender",
              "encounter", "performer", "_id", "_text", "address", "phone", "telecom", "value-quantity")


def _stored(app, tenant: str) -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM fhir_resources")).scalar()


def _declared(client) -> dict[str, dict]:
    statement = client.get("/fhir/metadata").get_json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    return {resource["type"]: resource for resource in statement["rest"][0]["resource"]}


@pytest.mark.parametrize("resource_type", WRITABLE)
def test_capability_declares_exactly_the_search_parameters_search_accepts(client, as_user, resource_type):
    doctor = as_user("yaodu.doctor")
    declared = {p["name"]: p["type"] for p in _declared(client)[resource_type]["searchParam"]}
    for name in set(CANDIDATES) | set(declared):
        value = SAMPLE[declared[name]] if name in declared else "x"
        response = client.get(f"/fhir/{resource_type}", query_string={name: value}, headers=doctor)
        unknown = response.status_code == 400 and "Unknown search parameter" in \
            response.get_json()["issue"][0]["diagnostics"]
        assert unknown is (name not in declared), (name, response.get_json())


def test_capability_declares_the_operations_and_interactions_that_answer(client, as_user):
    doctor = as_user("yaodu.doctor")
    declared = _declared(client)
    subject = create(client, doctor, patient())
    urls = {"everything": ("GET", f"/fhir/Patient/{subject['id']}/$everything"),
            "prior-results": ("GET", f"/fhir/Patient/{subject['id']}/$prior-results?code=8480-6"),
            "match": ("POST", "/fhir/Patient/$match")}
    operations = {operation["name"] for operation in declared["Patient"]["operation"]}
    assert operations == set(urls) | {"export"}  # Patient/$export answers 202: tests/test_fhir_bulk_export.py
    for method, url in urls.values():
        body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()}]}
        response = client.open(url, method=method, headers=doctor, json=body if method == "POST" else None)
        assert response.status_code == 200, (url, response.get_json())
    assert {i["code"] for i in declared["Observation"]["interaction"]} == {"read", "vread", "update", "create",
                                                                          "search-type", "delete", "history-instance",
                                                                          "history-type"}
    assert declared["AuditEvent"]["interaction"] == [{"code": "read"}]
    assert declared["Observation"]["searchInclude"] == ["Observation:subject", "Observation:encounter"]


def _put_entry(resource, if_match=None):
    request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    if if_match:
        request["ifMatch"] = if_match
    body = {key: value for key, value in resource.items() if key != "meta"}
    return {"resource": body, "request": request}


def test_transaction_honours_if_match_and_fails_whole(client, app, as_user):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    observation = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    new = {"resource": clinical("Condition", f"Patient/{subject['id']}"), "request": {"method": "POST",
                                                                                      "url": "Condition"}}
    stored = _stored(app, "yaodu")
    stale = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        new, _put_entry({**observation, "status": "amended"}, 'W/"2"')]}, headers=doctor)
    assert stale.status_code == 412 and stale.get_json()["resourceType"] == "OperationOutcome"
    assert _stored(app, "yaodu") == stored
    assert client.get(f"/fhir/Observation/{observation['id']}", headers=doctor).get_json()["meta"]["versionId"] == "1"
    fresh = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        new, _put_entry({**observation, "status": "amended"}, 'W/"1"')]}, headers=doctor)
    assert fresh.status_code == 200, fresh.get_json()
    assert fresh.get_json()["entry"][1]["response"]["etag"] == 'W/"2"'


@pytest.mark.parametrize(("change", "element"), [
    ({"ifNoneExist": "colour=blue"}, "ifNoneExist"), ({"ifNoneMatch": "*"}, "ifNoneMatch"),
    ({"url": "Observation?identifier=urn:x|1"}, "url"), ({"ifMatch": "yesterday"}, "ifMatch"),
])
def test_conditional_bundle_requests_are_refused_clearly(client, app, as_user, change, element):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    stored = _stored(app, "yaodu")
    entry = {"resource": clinical("Observation", f"Patient/{subject['id']}"),
             "request": {"method": "PUT" if element == "ifMatch" else "POST", "url": "Observation/yaodu.x", **change}}
    if element in ("ifNoneExist", "ifNoneMatch"):
        entry["request"]["url"] = "Observation"
        entry["request"]["method"] = "POST"
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]},
                           headers=doctor)
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [f"Bundle.entry[0].request.{element}"]
    assert _stored(app, "yaodu") == stored


def test_batch_reports_each_failure_at_its_own_index_with_its_path(client, app, as_user):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    good = {"resource": clinical("Observation", f"Patient/{subject['id']}"),
            "request": {"method": "POST", "url": "Observation"}}
    bad = clinical("Observation", f"Patient/{subject['id']}")
    bad["effectiveDateTime"] = "last tuesday"
    no_request = {"resource": clinical("Observation", f"Patient/{subject['id']}")}
    body = {"resourceType": "Bundle", "type": "batch", "entry": [
        good, {"resource": bad, "request": {"method": "POST", "url": "Observation"}}, no_request,
        {**good, "request": {"method": "POST", "url": "Observation", "ifNoneExist": "colour=1"}}]}
    entries = client.post("/fhir", json=body, headers=doctor).get_json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "400", "400", "400"]
    expressions = [e["response"]["outcome"]["issue"][0]["expression"] for e in entries[1:]]
    assert expressions == [["Bundle.entry[1].resource.effectiveDateTime"], ["Bundle.entry[2].request"],
                           ["Bundle.entry[3].request.ifNoneExist"]]
    assert _stored(app, "yaodu") == 2


def test_nested_error_paths_are_fhirpath(client, app, as_user):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    body = clinical("Observation", f"Patient/{subject['id']}")
    body["component"] = [{"code": {"text": "systolic"}, "valueQuantity": {"value": 150}},
                         {"code": {"text": "diastolic"}, "valueQuantity": {"value": "high"}}]
    response = client.post("/fhir/Observation", json=body, headers=doctor)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["Observation.component[1].valueQuantity.value"]
    assert _stored(app, "yaodu") == 1


@pytest.mark.parametrize(("method", "url", "status"), [
    ("GET", "/fhir/Patient/x/$unknown", 404), ("GET", "/fhir/Observation/x/_history", 404),
    ("DELETE", "/fhir/Observation/x/_history", 405), ("PATCH", "/fhir/Observation/x", 405), ("GET", "/fhir", 405),
    ("DELETE", "/fhir/metadata", 405), ("GET", "/fhir/a/b/c/d/e", 404),
])
def test_unmatched_fhir_urls_answer_operation_outcome(client, as_user, method, url, status):
    response = client.open(url, method=method, headers=as_user("yaodu.doctor"))
    assert response.status_code == status
    assert response.mimetype == "application/fhir+json"
    assert response.get_json()["resourceType"] == "OperationOutcome"
    if status == 405:
        assert response.headers["Allow"]


def test_count_zero_answers_only_the_total(client, as_user):
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    for _ in range(3):
        create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    body = client.get(f"/fhir/Observation?patient={subject['id']}&_count=0", headers=doctor).get_json()
    assert body["total"] == 3 and body["entry"] == []
    assert [link["relation"] for link in body["link"]] == ["self"]


def test_reading_an_audit_event_is_itself_audited(client, as_user, platform_db):
    create(client, as_user("yaodu.doctor"), patient())
    seq = client.get("/api/v1/audit?action=create", headers=as_user("auditor")).get_json()[0]["seq"]
    assert client.get(f"/fhir/AuditEvent/{seq}", headers=as_user("auditor")).status_code == 200
    assert client.get("/fhir/AuditEvent/999999", headers=as_user("auditor")).status_code == 404
    platform_db.rollback()
    rows = platform_db.execute(select(AuditEvent.resource_id, AuditEvent.outcome, AuditEvent.username).where(
        AuditEvent.resource_type == "AuditEvent").order_by(AuditEvent.seq)).all()
    assert [tuple(row) for row in rows] == [(str(seq), "success", "auditor"), ("999999", "not_found", "auditor")]


@pytest.mark.parametrize("resource_type", ["ServiceRequest", "Task"])
def test_capability_declares_the_referral_types_as_their_search_answers(client, as_user, resource_type):
    doctor = as_user("yaodu.doctor")
    entry = _declared(client)[resource_type]
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type"}
    declared = {p["name"] for p in entry["searchParam"]}
    for name in declared | {"code", "authored", "subject"}:
        response = client.get(f"/fhir/{resource_type}", query_string={name: "x"}, headers=doctor)
        unknown = response.status_code == 400 and "Unknown search parameter" in \
            response.get_json()["issue"][0]["diagnostics"]
        assert unknown is (name not in declared), (name, response.get_json())
