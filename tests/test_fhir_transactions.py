"""Transactions as the spec resolves them: fullUrls in any form, conditional references, processing order, the
entry limit, all or nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select, text

from hie.platform.audit.models import AuditEvent
from tests.conftest import shard_engine
from tests.fhir_helpers import ID_WANG, clinical, create, patient

SYNTHEA = Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json"
BASE = "http://localhost/fhir/"  # the test client's own base


def _rows(app, tenant: str = "yaodu", table: str = "fhir_resources") -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()  # noqa: S608  (a fixed table name)


def _counts(app) -> tuple[int, ...]:
    return tuple(_rows(app, "yaodu", table) for table in ("fhir_resources", "fhir_resource_versions", "patients"))


def _transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _post(resource: dict, full_url: str | None = None) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    return {"fullUrl": full_url, **entry} if full_url else entry


@pytest.fixture
def wang(client, as_user) -> dict:
    return create(client, as_user("yaodu.doctor"), patient())


def test_synthea_bundle_with_absolute_full_urls_and_relative_references_is_stored(client, app, as_user):
    """The Synthea bundle as a sender with absolute fullUrls writes it: relative references between its entries."""
    bundle = json.loads(SYNTHEA.read_text())
    types = {entry["fullUrl"]: entry["resource"]["resourceType"] for entry in bundle["entry"]}
    for entry in bundle["entry"]:
        entry["fullUrl"] = f"http://example.org/fhir/{types[entry['fullUrl']]}/{entry['fullUrl'][9:]}"
    written = re.sub(r'"(urn:uuid:[0-9a-f-]+)"', lambda m: f'"{types[m[1]]}/{m[1][9:]}"', json.dumps(bundle))
    response = client.post("/fhir", data=written, content_type="application/fhir+json",
                           headers=as_user("yaodu.doctor"))
    assert response.status_code == 200, response.get_json()
    entries = response.get_json()["entry"]
    assert len(entries) == 45 and {e["response"]["status"] for e in entries} == {"201 Created"}
    stored = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
    patient_id = entries[0]["resource"]["id"]
    assert entries[0]["resource"]["resourceType"] == "Patient"
    for entry in entries[1:]:
        resource = entry["resource"]
        subject = resource.get("subject") or resource.get("patient")
        assert subject["reference"] == f"Patient/{patient_id}"
        encounter = resource.get("encounter") or (resource.get("context") or {}).get("encounter", [None])[0]
        if encounter is not None:
            assert encounter["reference"] in stored
    read = client.get(f"/fhir/{entries[1]['response']['location'].split('/_history')[0]}",
                      headers=as_user("yaodu.doctor")).get_json()
    assert read["subject"]["reference"] == f"Patient/{patient_id}"


def test_references_by_urn_absolute_relative_and_this_servers_own_base(client, app, as_user, wang):
    doctor = as_user("yaodu.doctor")
    newcomer = patient("李四", None, "13800138000")
    bundle = _transaction(
        _post(clinical("Observation", "https://emr.example/fhir/Patient/p1"), "urn:uuid:1a2b"),
        _post(clinical("Observation", "Patient/p1") | {"hasMember": [{"reference": "urn:uuid:1a2b"}]},
              "https://emr.example/fhir/Observation/o2"),
        _post(clinical("Observation", f"{BASE}Patient/{wang['id']}")),
        _post(clinical("Observation", f"{BASE}Patient/p1"), "urn:uuid:3c4d"),
        _post(newcomer, "https://emr.example/fhir/Patient/p1"),
    )
    response = client.post("/fhir", json=bundle, headers=doctor)
    assert response.status_code == 200, response.get_json()
    entries = [e["resource"] for e in response.get_json()["entry"]]
    new_patient = f"Patient/{entries[4]['id']}"
    assert entries[4]["id"] != "p1"
    assert [e["subject"]["reference"] for e in entries[:4]] == [new_patient, new_patient, f"Patient/{wang['id']}",
                                                                 new_patient]
    assert entries[1]["hasMember"] == [{"reference": f"Observation/{entries[0]['id']}"}]
    stored = client.get(f"/fhir/Observation/{entries[2]['id']}", headers=doctor).get_json()
    assert stored["subject"]["reference"] == f"Patient/{wang['id']}"


def test_an_absolute_reference_to_this_server_is_checked_like_a_relative_one(client, app, as_user):
    other = create(client, as_user("quwo.doctor"), patient("赵六", None, "13700137000"))
    before = _counts(app)
    observation = clinical("Observation", f"Patient/{other['id']}") | {
        "derivedFrom": [{"reference": f"{BASE}Patient/{other['id']}"}]}
    refused = client.post("/fhir", json=_transaction(_post(observation)), headers=as_user("yaodu.doctor"))
    assert refused.status_code == 422
    assert _counts(app) == before


def test_conditional_references_resolve_to_the_one_visible_match(client, app, as_user, wang, platform_db):
    doctor = as_user("yaodu.doctor")
    by_identifier = f"Patient?identifier=urn:hie:id:CN-RIC|{ID_WANG}"
    response = client.post("/fhir", json=_transaction(_post(clinical("Observation", by_identifier))), headers=doctor)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{wang['id']}"
    before = _counts(app)
    nobody = _transaction(_post(patient("张三", None, "13600136000")),
                          _post(clinical("Observation", "Patient?identifier=urn:hie:id:CN-RIC|nobody")))
    missing = client.post("/fhir", json=nobody, headers=doctor)
    assert missing.status_code == 404
    assert missing.get_json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject"]
    create(client, doctor, patient("王秀兰", None, "13500135000"))
    before = _counts(app)
    several = client.post("/fhir", json=_transaction(_post(clinical("Observation", "Patient?gender=female"))),
                          headers=doctor)
    assert several.status_code == 412
    assert several.get_json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject"]
    assert _counts(app) == before
    platform_db.rollback()
    failures = platform_db.scalars(select(AuditEvent.detail).where(AuditEvent.request_id == several.headers[
        "X-Request-Id"], AuditEvent.outcome == "failure")).all()
    assert any("conditional reference matches several" in detail for detail in failures)


def test_a_conditional_reference_never_finds_what_the_caller_may_not_see(client, app, as_user):
    create(client, as_user("quwo.doctor"), patient())
    before = _counts(app)
    bundle = _transaction(_post(clinical("Observation", f"Patient?identifier=urn:hie:id:CN-RIC|{ID_WANG}")))
    refused = client.post("/fhir", json=bundle, headers=as_user("yaodu.doctor"))
    assert refused.status_code == 404 and "matches no Patient" in refused.get_json()["issue"][0]["diagnostics"]
    assert _counts(app) == before


def test_entries_are_processed_delete_post_put_and_answered_in_request_order(client, app, as_user, wang,
                                                                              platform_db):
    doctor = as_user("yaodu.doctor")
    gone = create(client, doctor, clinical("Observation", f"Patient/{wang['id']}"))
    kept = create(client, doctor, clinical("Observation", f"Patient/{wang['id']}", when="2026-10-01"))
    bundle = _transaction(
        {"resource": kept | {"status": "amended"}, "request": {"method": "PUT", "url": f"Observation/{kept['id']}"}},
        _post(clinical("Observation", f"Patient/{wang['id']}", when="2026-11-02")),
        {"request": {"method": "DELETE", "url": f"Observation/{gone['id']}"}},
    )
    response = client.post("/fhir", json=bundle, headers=doctor)
    assert response.status_code == 200, response.get_json()
    assert [e["response"]["status"] for e in response.get_json()["entry"]] == ["200 OK", "201 Created",
                                                                                "204 No Content"]
    platform_db.rollback()
    actions = platform_db.scalars(select(AuditEvent.action).where(
        AuditEvent.request_id == response.headers["X-Request-Id"], AuditEvent.resource_type == "Observation",
        AuditEvent.action.in_(("create", "update", "delete"))).order_by(AuditEvent.seq)).all()
    assert actions == ["delete", "create", "update"]


def test_a_failing_entry_stores_nothing_of_the_transaction(client, app, as_user):
    other = create(client, as_user("quwo.doctor"), patient("赵六", None, "13700137000"))
    before = _counts(app)
    bundle = _transaction(_post(patient("张三", None, "13600136000"), "urn:uuid:5e6f"),
                          _post(clinical("Observation", "urn:uuid:5e6f")),
                          _post(clinical("Observation", f"Patient/{other['id']}")))
    refused = client.post("/fhir", json=bundle, headers=as_user("yaodu.doctor"))
    assert refused.status_code == 422
    assert refused.get_json()["issue"][0]["expression"] == ["Bundle.entry[2].resource.subject"]
    assert _counts(app) == before


def test_bundles_beyond_the_configured_entry_limit_are_refused(client, app, as_user, wang, monkeypatch):
    doctor = as_user("yaodu.doctor")
    monkeypatch.setitem(app.config["HIE"].extra, "HIE_FHIR_MAX_BUNDLE_ENTRIES", "3")
    capability = client.get("/fhir/metadata").get_json()
    assert "at most 3 entries" in capability["rest"][0]["documentation"]
    before = _counts(app)
    entries = [_post(clinical("Observation", f"Patient/{wang['id']}")) for _ in range(4)]
    for kind in ("transaction", "batch"):
        refused = client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": entries},
                              headers=doctor)
        assert refused.status_code == 413
        issue = refused.get_json()["issue"][0]
        assert issue["expression"] == ["Bundle.entry"] and "at most 3" in issue["diagnostics"]
    assert _counts(app) == before
    accepted = client.post("/fhir", json=_transaction(*entries[:3]), headers=doctor)
    assert accepted.status_code == 200, accepted.get_json()
    monkeypatch.delitem(app.config["HIE"].extra, "HIE_FHIR_MAX_BUNDLE_ENTRIES")
    assert "at most 10000 entries" in client.get("/fhir/metadata").get_json()["rest"][0]["documentation"]
