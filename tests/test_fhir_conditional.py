"""Idempotent re-sends: conditional create, update and delete, update as create, conditional reads, Prefer: return."""

from __future__ import annotations

import json
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from hie.empi.models import PersonRecord
from hie.platform.audit.models import AuditEvent
from tests.conftest import shard_engine
from tests.fhir_helpers import ID_WANG, clinical, create, patient

LAB = "urn:lab:yaodu"


def _rows(app, tenant: str, table: str = "fhir_resources") -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()  # noqa: S608  (a fixed table name)


def _observation(subject: str, accession: str, value: int = 150) -> dict:
    body = clinical("Observation", f"Patient/{subject}")
    body["identifier"] = [{"system": LAB, "value": accession}]
    body["valueQuantity"] = {"value": value, "unit": "mmHg"}
    return body


def _events(platform_db, response) -> list[tuple]:
    platform_db.rollback()
    rows = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"])
                               .order_by(AuditEvent.seq)).all()
    return [(e.action, e.outcome, e.resource_type, e.patient) for e in rows]


@pytest.fixture
def wang(client, as_user) -> dict:
    return create(client, as_user("yaodu.doctor"), patient())


def test_conditional_create_stores_once_and_answers_the_match(client, app, as_user, wang, platform_db):
    doctor = as_user("yaodu.doctor")
    headers = {**doctor, "If-None-Exist": f"identifier={LAB}|A-1"}
    first = client.post("/fhir/Observation", json=_observation(wang["id"], "A-1"), headers=headers)
    assert first.status_code == 201, first.get_json()
    again = client.post("/fhir/Observation", json=_observation(wang["id"], "A-1"), headers=headers)
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert again.headers["ETag"] == 'W/"1"'
    assert again.headers["Location"].endswith(f"{first.get_json()['id']}/_history/1")
    assert _rows(app, "yaodu") == 2 and _rows(app, "yaodu", "fhir_resource_versions") == 2
    patient_headers = {**doctor, "If-None-Exist": f"Patient?identifier=urn:hie:id:CN-RIC|{ID_WANG}"}
    same = client.post("/fhir/Patient", json=patient(), headers=patient_headers)
    assert same.status_code == 200 and same.get_json()["id"] == wang["id"]
    platform_db.rollback()
    assert platform_db.scalar(select(PersonRecord.id).where(PersonRecord.patient_id == wang["id"])) is not None
    assert len(platform_db.scalars(select(PersonRecord.id)).all()) == 1, "the re-sent Patient registered nobody"


def test_conditional_create_with_several_matches_is_412_and_stores_nothing(client, app, as_user, wang, platform_db):
    doctor = as_user("yaodu.doctor")
    create(client, doctor, _observation(wang["id"], "DUP"))
    create(client, doctor, _observation(wang["id"], "DUP"))
    stored = _rows(app, "yaodu")
    response = client.post("/fhir/Observation", json=_observation(wang["id"], "DUP"),
                           headers={**doctor, "If-None-Exist": f"identifier={LAB}|DUP"})
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["expression"] == ["If-None-Exist"]
    assert _rows(app, "yaodu") == stored
    assert ("create", "failure", "Observation", None) in _events(platform_db, response)


@pytest.mark.parametrize(("criteria", "why"), [
    ("", "needs search criteria"), ("_count=1", "cannot select"), ("colour=blue", "cannot select"),
    ("patient=urn:uuid:1", "urn:uuid"), ("date=yesterday", None),
])
def test_bad_criteria_are_refused_naming_the_header(client, app, as_user, wang, criteria, why):
    stored = _rows(app, "yaodu")
    response = client.post("/fhir/Observation", json=_observation(wang["id"], "B-1"),
                           headers={**as_user("yaodu.doctor"), "If-None-Exist": criteria})
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == ["If-None-Exist"] and (why is None or why in issue["diagnostics"])
    assert _rows(app, "yaodu") == stored


def test_records_the_caller_may_not_see_never_match(client, app, as_user, wang, platform_db):
    yaodu = create(client, as_user("yaodu.doctor"), _observation(wang["id"], "SECRET"))
    quwo = as_user("quwo.doctor")
    theirs = create(client, quwo, patient(name="赵六", id_number=None, phone="13600000000"))
    response = client.post("/fhir/Observation", json=_observation(theirs["id"], "SECRET"),
                           headers={**quwo, "If-None-Exist": f"identifier={LAB}|SECRET"})
    assert response.status_code == 201 and response.get_json()["id"] != yaodu["id"]
    assert response.get_json()["subject"]["reference"] == f"Patient/{theirs['id']}"
    assert [e for e in _events(platform_db, response) if e[0] == "read"] == [], "nothing of yaodu's was shown"
    same_id = client.post("/fhir/Patient", json=patient(name="王秀英"),
                          headers={**quwo, "If-None-Exist": f"identifier=urn:hie:id:CN-RIC|{ID_WANG}"})
    assert same_id.status_code == 201 and same_id.get_json()["id"] != wang["id"]
    clinic = as_user("yaodu.fd")  # another institution of the same tenant, with no care relationship
    own = create(client, clinic, patient(name="孙七", id_number=None, phone="13700000010"))
    other = client.post("/fhir/Observation", json=_observation(own["id"], "SECRET"),
                        headers={**clinic, "If-None-Exist": f"identifier={LAB}|SECRET"})
    assert other.status_code == 201 and other.get_json()["id"] != yaodu["id"]
    assert client.get(f"/fhir/Observation/{yaodu['id']}", headers=as_user("yaodu.doctor")).get_json() == yaodu


def test_conditional_update_creates_updates_or_refuses_by_match_count(client, app, as_user, wang):
    doctor = as_user("yaodu.doctor")
    url = f"/fhir/Observation?identifier={LAB}|U-1"
    created = client.put(url, json=_observation(wang["id"], "U-1"), headers=doctor)
    assert created.status_code == 201 and created.get_json()["meta"]["versionId"] == "1"
    updated = client.put(url, json=_observation(wang["id"], "U-1", 160), headers=doctor)
    assert updated.status_code == 200 and updated.get_json()["id"] == created.get_json()["id"]
    assert updated.get_json()["meta"]["versionId"] == "2" and updated.get_json()["valueQuantity"]["value"] == 160
    mismatch = client.put(url, json={**_observation(wang["id"], "U-1"), "id": "yaodu.other"}, headers=doctor)
    assert mismatch.status_code == 400 and mismatch.get_json()["issue"][0]["expression"] == ["Observation.id"]
    create(client, doctor, _observation(wang["id"], "U-1"))
    stored, versions = _rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions")
    several = client.put(url, json=_observation(wang["id"], "U-1", 170), headers=doctor)
    assert several.status_code == 412
    assert (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions")) == (stored, versions)
    unknown = client.put("/fhir/Observation?colour=blue", json=_observation(wang["id"], "U-1"), headers=doctor)
    assert unknown.status_code == 400 and unknown.get_json()["issue"][0]["expression"] == ["Observation?"]


def test_conditional_delete_by_match_count(client, app, as_user, wang):
    doctor = as_user("yaodu.doctor")
    nothing = client.delete(f"/fhir/Observation?identifier={LAB}|D-0", headers=doctor)
    assert nothing.status_code == 204 and _rows(app, "yaodu", "fhir_resource_versions") == 1
    one = create(client, doctor, _observation(wang["id"], "D-1"))
    deleted = client.delete(f"/fhir/Observation?identifier={LAB}|D-1", headers=doctor)
    assert deleted.status_code == 204 and deleted.headers["ETag"] == 'W/"2"'
    assert client.get(f"/fhir/Observation/{one['id']}", headers=doctor).status_code == 410
    create(client, doctor, _observation(wang["id"], "D-2"))
    create(client, doctor, _observation(wang["id"], "D-2"))
    stored = _rows(app, "yaodu")
    several = client.delete(f"/fhir/Observation?identifier={LAB}|D-2", headers=doctor)
    assert several.status_code == 412 and _rows(app, "yaodu") == stored
    patients = client.delete(f"/fhir/Patient?identifier=urn:hie:id:CN-RIC|{ID_WANG}", headers=doctor)
    assert patients.status_code == 405 and client.get(f"/fhir/Patient/{wang['id']}", headers=doctor).status_code == 200


def test_put_at_a_client_id_creates_and_an_unchanged_resend_stores_nothing(client, app, as_user, wang, platform_db):
    doctor = as_user("yaodu.doctor")
    url = "/fhir/Observation/yaodu.YAODU-CH.lab-A-7"
    created = client.put(url, json=_observation(wang["id"], "A-7"), headers=doctor)
    assert created.status_code == 201 and created.get_json()["id"] == "yaodu.YAODU-CH.lab-A-7"
    assert client.get(url, headers=doctor).get_json() == created.get_json()
    again = client.put(url, json=_observation(wang["id"], "A-7"), headers=doctor)
    assert again.status_code == 200 and again.get_json()["meta"] == created.get_json()["meta"]
    reordered = json.dumps(dict(reversed(list(_observation(wang["id"], "A-7").items()))))
    same = client.put(url, data=reordered, headers={**doctor, "Content-Type": "application/fhir+json"})
    assert same.status_code == 200 and same.get_json()["meta"]["versionId"] == "1", "member order means nothing"
    assert _rows(app, "yaodu", "fhir_resource_versions") == 2
    assert ("update", "success", "Observation", f"yaodu/{wang['id']}") in _events(platform_db, again)
    as_written = json.dumps(_observation(wang["id"], "A-7")).replace('"value": 150', '"value": 150.0')
    decimal = client.put(url, data=as_written, headers={**doctor, "Content-Type": "application/fhir+json"})
    assert decimal.status_code == 200 and decimal.get_json()["meta"]["versionId"] == "2", "150.0 is not 150"
    changed = client.put(url, json=_observation(wang["id"], "A-7", 155), headers=doctor)
    assert changed.status_code == 200 and changed.get_json()["meta"]["versionId"] == "3"
    outside = client.put("/fhir/Observation/yaodu.lab-A-8", json=_observation(wang["id"], "A-8"), headers=doctor)
    assert outside.status_code == 404 and "yaodu.YAODU-CH." in outside.get_json()["issue"][0]["diagnostics"]
    other = client.put("/fhir/Observation/yaodu.YAODU-T1.lab-A-9", json=_observation(wang["id"], "A-9"),
                       headers=doctor)
    assert other.status_code == 404, "another institution's namespace"
    new_patient = client.put("/fhir/Patient/0b5c3f0e-0000-4000-8000-000000000001", json=patient(), headers=doctor)
    assert new_patient.status_code == 404
    assert _rows(app, "yaodu") == 2
    statement = {r["type"]: r for r in client.get("/fhir/metadata").get_json()["rest"][0]["resource"]}
    assert statement["Observation"]["updateCreate"] is True and statement["Patient"]["updateCreate"] is False
    assert statement["Observation"]["conditionalDelete"] == "single"
    assert statement["Patient"]["conditionalDelete"] == "not-supported"
    assert all(statement[t]["conditionalCreate"] and statement[t]["conditionalUpdate"] and statement[t]["readHistory"]
               and statement[t]["conditionalRead"] == "full-support" for t in ("Patient", "Observation"))


def test_reads_carry_etag_and_last_modified_and_answer_304(client, as_user, wang):
    doctor = as_user("yaodu.doctor")
    stored = create(client, doctor, _observation(wang["id"], "R-1"))
    url = f"/fhir/Observation/{stored['id']}"
    read = client.get(url, headers=doctor)
    modified = parsedate_to_datetime(read.headers["Last-Modified"])
    assert read.headers["ETag"] == 'W/"1"' and read.headers["Last-Modified"].endswith(" GMT")
    assert modified.isoformat()[:19] == stored["meta"]["lastUpdated"][:19]
    for version in (f"{url}/_history/1",):
        assert client.get(version, headers=doctor).headers["Last-Modified"] == read.headers["Last-Modified"]
    unchanged = client.get(url, headers={**doctor, "If-None-Match": 'W/"1"'})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == 'W/"1"'
    assert client.get(url, headers={**doctor, "If-None-Match": 'W/"0", W/"1"'}).status_code == 304
    assert client.get(url, headers={**doctor, "If-None-Match": 'W/"0"'}).status_code == 200
    assert client.get(url, headers={**doctor, "If-Modified-Since": read.headers["Last-Modified"]}).status_code == 304
    earlier = format_datetime(modified.replace(year=modified.year - 1), usegmt=True)
    assert client.get(url, headers={**doctor, "If-Modified-Since": earlier}).status_code == 200
    assert client.get(url, headers={**doctor, "If-Modified-Since": "yesterday"}).status_code == 200
    client.put(url, json=_observation(wang["id"], "R-1", 151), headers=doctor)
    assert client.get(url, headers={**doctor, "If-None-Match": 'W/"1"'}).status_code == 200
    patient_read = client.get(f"/fhir/Patient/{wang['id']}", headers=doctor)
    assert patient_read.headers["ETag"] == 'W/"1"' and patient_read.headers["Last-Modified"]


def test_prefer_return_shapes_the_answer_of_writes(client, app, as_user, wang):
    doctor = as_user("yaodu.doctor")
    minimal = client.post("/fhir/Observation", json=_observation(wang["id"], "P-1"),
                          headers={**doctor, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.data == b""
    assert minimal.headers["ETag"] == 'W/"1"' and "/fhir/Observation/" in minimal.headers["Location"]
    location = minimal.headers["Location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
    outcome = client.put(f"/fhir/{location}", json=_observation(wang["id"], "P-1", 140),
                         headers={**doctor, "Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 200 and outcome.get_json()["resourceType"] == "OperationOutcome"
    assert outcome.get_json()["issue"][0]["severity"] == "information" and "version 2" in outcome.data.decode()
    whole = client.post("/fhir/Observation", json=_observation(wang["id"], "P-2"),
                        headers={**doctor, "Prefer": "return=representation"})
    assert whole.status_code == 201 and whole.get_json()["resourceType"] == "Observation"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _observation(wang["id"], "P-3"), "request": {"method": "POST", "url": "Observation"}}]}
    answer = client.post("/fhir", json=bundle, headers={**doctor, "Prefer": "return=minimal"}).get_json()
    assert "resource" not in answer["entry"][0] and answer["entry"][0]["response"]["status"] == "201 Created"
    assert answer["entry"][0]["response"]["etag"] == 'W/"1"' and answer["entry"][0]["response"]["lastModified"]


def test_bundles_take_if_none_exist_conditional_urls_and_deletes(client, app, as_user, wang):
    doctor = as_user("yaodu.doctor")
    gone = create(client, doctor, _observation(wang["id"], "T-0"))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": patient(),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:hie:id:CN-RIC|{ID_WANG}"}},
        {"resource": _observation("x", "T-1") | {"subject": {"reference": "urn:uuid:p"}},
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"identifier={LAB}|T-1"}},
        {"resource": _observation("x", "T-2") | {"subject": {"reference": "urn:uuid:p"}},
         "request": {"method": "PUT", "url": f"Observation?identifier={LAB}|T-2"}},
        {"request": {"method": "DELETE", "url": f"Observation/{gone['id']}"}},
    ]}
    first = client.post("/fhir", json=bundle, headers=doctor)
    assert first.status_code == 200, first.get_json()
    entries = first.get_json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "201 Created", "201 Created", "204 No Content"]
    assert entries[0]["resource"]["id"] == wang["id"]
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{wang['id']}"
    counts = (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions"))
    again = client.post("/fhir", json=bundle, headers=doctor).get_json()["entry"]
    assert [e["response"]["status"] for e in again] == ["200 OK", "200 OK", "200 OK", "204 No Content"]
    assert [e["resource"]["id"] for e in again[:3]] == [e["resource"]["id"] for e in entries[:3]]
    assert (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions")) == counts
    several = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _observation(wang["id"], "T-3"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": "Observation?identifier=urn:x|nothing"}},
        {"resource": _observation(wang["id"], "T-4"),
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"identifier={LAB}|T-1,{LAB}|T-2"}}]}
    refused = client.post("/fhir", json=several, headers=doctor)
    assert refused.status_code == 412
    assert refused.get_json()["issue"][0]["expression"] == ["Bundle.entry[2].request.ifNoneExist"]
    assert (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions")) == counts


def test_another_tenants_records_are_neither_updated_nor_deleted_by_criteria(client, app, as_user, wang, platform_db):
    yaodu = create(client, as_user("yaodu.doctor"), _observation(wang["id"], "X-1"))
    quwo = as_user("quwo.doctor")
    counts = (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions"))
    for method in ("PUT", "DELETE"):
        response = client.open(f"/fhir/Observation?patient={wang['id']}", method=method, headers=quwo,
                               json=_observation(wang["id"], "X-1", 99) if method == "PUT" else None)
        assert response.status_code == 404, response.get_json()
        assert _events(platform_db, response) == [("search", "denied", "Observation", f"yaodu/{wang['id']}")]
    by_identifier = client.delete(f"/fhir/Observation?identifier={LAB}|X-1", headers=quwo)
    assert by_identifier.status_code == 204, "nothing quwo may see matches"
    assert (_rows(app, "yaodu"), _rows(app, "yaodu", "fhir_resource_versions")) == counts
    assert client.get(f"/fhir/Observation/{yaodu['id']}", headers=as_user("yaodu.doctor")).get_json() == yaodu


SYNTHEA = Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json"


def _written_with_conditional_requests(bundle: dict, namespace: str) -> dict:
    """The Synthea bundle as an EMR integration re-sends it: a record with an identifier is a POST with ifNoneExist
    on that identifier; one without is a PUT at an id of the sender's namespace made from Synthea's own id."""
    for entry in bundle["entry"]:
        resource = entry["resource"]
        identifier = (resource.get("identifier") or [None])[0]
        if identifier is not None:
            entry["request"]["ifNoneExist"] = f"identifier={identifier['system']}|{identifier['value']}"
        else:
            entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{namespace}{resource.pop('id')}"}
    return bundle


def _stored_counts(app) -> tuple[int, ...]:
    return tuple(_rows(app, "yaodu", table) for table in ("fhir_resources", "fhir_resource_versions", "fhir_tokens",
                                                          "patients"))


def test_re_sending_a_synthea_bundle_written_with_conditional_requests_stores_nothing_twice(client, app, as_user,
                                                                                           platform_db):
    doctor = as_user("yaodu.doctor")
    bundle = _written_with_conditional_requests(json.loads(SYNTHEA.read_text()), "yaodu.YAODU-CH.")
    first = client.post("/fhir", json=bundle, headers=doctor)
    assert first.status_code == 200, first.get_json()
    entries = first.get_json()["entry"]
    assert {e["response"]["status"] for e in entries} == {"201 Created"} and len(entries) == 45
    counts = _stored_counts(app)
    assert counts[0] == 45 and counts[1] == 45 and counts[3] == 1
    platform_db.rollback()
    people = len(platform_db.scalars(select(PersonRecord.id)).all())
    again = client.post("/fhir", json=bundle, headers=doctor)
    assert again.status_code == 200, again.get_json()
    resent = again.get_json()["entry"]
    assert {e["response"]["status"] for e in resent} == {"200 OK"}
    assert [e["resource"]["id"] for e in resent] == [e["resource"]["id"] for e in entries]
    assert [e["response"]["etag"] for e in resent] == ['W/"1"'] * 45
    assert _stored_counts(app) == counts
    platform_db.rollback()
    assert len(platform_db.scalars(select(PersonRecord.id)).all()) == people
    subject = entries[0]["resource"]["id"]
    found = client.get(f"/fhir/Observation?patient={subject}&_count=0", headers=doctor).get_json()
    assert found["total"] == 30
