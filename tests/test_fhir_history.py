"""Versions as FHIR sees them: _history of an instance and a type, DELETE as a version, 410 Gone, isolation."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, text

from hie.platform.audit.models import AuditEvent
from tests.conftest import shard_engine
from tests.fhir_helpers import clinical, create, patient


def _rows(app, tenant: str, table: str) -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()  # noqa: S608  (a fixed table name)


def _events(platform_db, response) -> list[tuple]:
    platform_db.rollback()
    rows = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"])
                               .order_by(AuditEvent.seq)).all()
    return [(e.action, e.outcome, e.resource_id, e.patient) for e in rows]


def _follow(client, headers, url: str) -> list[dict]:
    """Every entry of a history, following next links to the end."""
    entries: list[dict] = []
    while url:
        page = client.get(url, headers=headers)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert body["type"] == "history"
        entries += body["entry"]
        link = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        url = urlsplit(link).path + "?" + urlsplit(link).query if link else ""
    return entries


@pytest.fixture
def record(client, as_user) -> tuple[dict, dict]:
    """A yaodu Patient and an Observation about them, updated twice (versions 1 to 3)."""
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    stored = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    for value in (151, 152):
        body = {**stored, "valueQuantity": {"value": value, "unit": "mmHg"}}
        body.pop("meta")
        assert client.put(f"/fhir/Observation/{stored['id']}", json=body, headers=doctor).status_code == 200
    return subject, stored


def test_instance_history_after_two_updates_newest_first(client, as_user, record, platform_db):
    subject, stored = record
    doctor = as_user("yaodu.doctor")
    response = client.get(f"/fhir/Observation/{stored['id']}/_history", headers=doctor)
    body = response.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "history" and body["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in body["entry"]] == ["3", "2", "1"]
    assert [e["resource"]["valueQuantity"]["value"] for e in body["entry"]] == [152, 151, 150]
    assert [(e["request"]["method"], e["response"]["status"]) for e in body["entry"]] == [
        ("PUT", "200 OK"), ("PUT", "200 OK"), ("POST", "201 Created")]
    assert body["entry"][0]["response"]["etag"] == 'W/"3"' and body["entry"][0]["fullUrl"].endswith(stored["id"])
    assert _events(platform_db, response) == [("read", "success", stored["id"], f"yaodu/{subject['id']}")]
    paged = _follow(client, doctor, f"/fhir/Observation/{stored['id']}/_history?_count=1")
    assert [e["resource"]["meta"]["versionId"] for e in paged] == ["3", "2", "1"]
    first = body["entry"][2]["resource"]["meta"]["lastUpdated"]
    second = body["entry"][1]["resource"]["meta"]["lastUpdated"]
    since = client.get(f"/fhir/Observation/{stored['id']}/_history", query_string={"_since": second},
                       headers=doctor).get_json()
    assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["3", "2"] and first < second
    assert client.get(f"/fhir/Observation/{stored['id']}/_history?_count=500", headers=doctor).status_code == 200
    for bad in ("_since=yesterday", "_count=-1", "_cursor=x", "colour=blue"):
        refused = client.get(f"/fhir/Observation/{stored['id']}/_history?{bad}", headers=doctor)
        assert refused.status_code == 400 and refused.get_json()["issue"][0]["expression"] == [bad.split("=")[0]]


def test_patient_history_of_a_registered_and_a_stored_patient(client, as_user):
    from tests.conftest import new_patient

    doctor = as_user("yaodu.doctor")
    registered = new_patient(client, doctor)
    body = client.get(f"/fhir/Patient/{registered['id']}/_history", headers=doctor).get_json()
    assert body["total"] == 1 and body["entry"][0]["resource"]["id"] == registered["id"]
    stored = create(client, doctor, patient(name="李四", id_number=None, phone="13700000000"))
    history = client.get(f"/fhir/Patient/{stored['id']}/_history", headers=doctor).get_json()
    assert [e["resource"]["name"] for e in history["entry"]] == [[{"text": "李四"}]]


def test_delete_is_a_version_then_410_and_history_shows_it(client, app, as_user, record, platform_db):
    subject, stored = record
    doctor, url = as_user("yaodu.doctor"), f"/fhir/Observation/{stored['id']}"
    response = client.delete(url, headers=doctor)
    assert response.status_code == 204 and response.headers["ETag"] == 'W/"4"'
    assert _events(platform_db, response) == [("delete", "success", stored["id"], f"yaodu/{subject['id']}")]
    gone = client.get(url, headers=doctor)
    assert gone.status_code == 410 and gone.get_json()["issue"][0]["code"] == "deleted"
    assert _events(platform_db, gone) == [("read", "failure", stored["id"], f"yaodu/{subject['id']}")]
    assert client.get(f"{url}/_history/2", headers=doctor).get_json()["valueQuantity"]["value"] == 151
    assert client.get(f"{url}/_history/4", headers=doctor).status_code == 410
    history = client.get(f"{url}/_history", headers=doctor).get_json()
    assert history["total"] == 4 and "resource" not in history["entry"][0]
    assert history["entry"][0]["request"] == {"method": "DELETE", "url": f"Observation/{stored['id']}"}
    found = client.get(f"/fhir/Observation?patient={subject['id']}", headers=doctor).get_json()
    assert found["total"] == 0
    everything = client.get(f"/fhir/Patient/{subject['id']}/$everything", headers=doctor).get_json()
    assert stored["id"] not in {e["resource"]["id"] for e in everything["entry"]}
    with shard_engine(app, "yaodu").connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM fhir_tokens WHERE resource_id = :id"),
                            {"id": stored["id"]}).scalar() == 0
    versions = _rows(app, "yaodu", "fhir_resource_versions")
    again = client.delete(url, headers=doctor)
    assert again.status_code == 204 and _rows(app, "yaodu", "fhir_resource_versions") == versions
    body = {k: v for k, v in stored.items() if k != "meta"}
    revived = client.put(url, json=body, headers=doctor)
    assert revived.status_code == 201 and revived.get_json()["meta"]["versionId"] == "5"
    assert client.get(url, headers=doctor).status_code == 200
    assert client.get(f"{url}/_history/4", headers=doctor).status_code == 410


def test_a_patient_is_not_deleted_and_unknown_ids_are_404(client, as_user, record, platform_db):
    subject, _ = record
    doctor = as_user("yaodu.doctor")
    refused = client.delete(f"/fhir/Patient/{subject['id']}", headers=doctor)
    assert refused.status_code == 405 and refused.get_json()["resourceType"] == "OperationOutcome"
    assert _events(platform_db, refused) == [("delete", "denied", subject["id"], f"yaodu/{subject['id']}")]
    assert client.get(f"/fhir/Patient/{subject['id']}", headers=doctor).status_code == 200
    unknown = client.delete("/fhir/Observation/yaodu.nothing", headers=doctor)
    assert unknown.status_code == 404
    assert _events(platform_db, unknown) == [("delete", "not_found", "yaodu.nothing", None)]
    assert client.get("/fhir/Observation/yaodu.nothing/_history", headers=doctor).status_code == 404


def test_type_history_shows_only_what_the_caller_may_see(client, as_user, record):
    subject, stored = record
    doctor, quwo = as_user("yaodu.doctor"), as_user("quwo.doctor")
    theirs = create(client, quwo, patient(name="赵六", id_number=None, phone="13600000000"))
    create(client, quwo, clinical("Observation", f"Patient/{theirs['id']}"))
    condition = create(client, doctor, clinical("Condition", f"Patient/{subject['id']}"))
    assert client.delete(f"/fhir/Condition/{condition['id']}", headers=doctor).status_code == 204
    mine = _follow(client, doctor, "/fhir/Observation/_history?_count=2")
    assert [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in mine] == [
        (stored["id"], "3"), (stored["id"], "2"), (stored["id"], "1")]
    conditions = client.get("/fhir/Condition/_history", headers=doctor).get_json()
    assert [e["request"]["method"] for e in conditions["entry"]] == ["DELETE", "POST"]
    theirs_seen = client.get("/fhir/Observation/_history", headers=quwo).get_json()
    assert theirs_seen["total"] == 1 and stored["id"] not in str(theirs_seen)
    clinic = client.get("/fhir/Observation/_history", headers=as_user("yaodu.fd")).get_json()
    assert clinic["total"] == 0, "another institution of the same tenant without a care relationship"


def test_another_tenant_can_neither_read_the_history_of_nor_delete_a_record(client, app, as_user, record,
                                                                          platform_db):
    subject, stored = record
    quwo, url = as_user("quwo.doctor"), f"/fhir/Observation/{stored['id']}"
    history = client.get(f"{url}/_history", headers=quwo)
    assert history.status_code == 404
    assert _events(platform_db, history) == [("read", "denied", stored["id"], f"yaodu/{subject['id']}")]
    versions = _rows(app, "yaodu", "fhir_resource_versions")
    refused = client.delete(url, headers=quwo)
    assert refused.status_code == 404 and _rows(app, "yaodu", "fhir_resource_versions") == versions
    assert _events(platform_db, refused) == [("delete", "denied", stored["id"], f"yaodu/{subject['id']}")]
    assert client.delete(url, headers=as_user("yaodu.doctor")).status_code == 204
    after = client.get(url, headers=quwo)
    assert after.status_code == 404, "a deletion is news only to whoever could read the record"
    assert client.get(f"{url}/_history/1", headers=quwo).status_code == 404
    assert client.get(f"{url}/_history", headers=quwo).status_code == 404
    put_back = client.put(url, json={k: v for k, v in stored.items() if k != "meta"}, headers=quwo)
    assert put_back.status_code == 404 and _rows(app, "yaodu", "fhir_resource_versions") == versions + 1
