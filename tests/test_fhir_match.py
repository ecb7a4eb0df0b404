"""Patient/$match answers Patient records the caller may read (their real ids, readable with GET), each with its
person's score and match grade; another tenant's patients never appear to a caller without access."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from hie.exchange.literal_json import dumps, loads
from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.conftest import new_patient
from tests.fhir_helpers import patient

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
OTHER_RECORDS = "urn:hie:extension:other-records"
OFFICIAL_PATIENT = Path(__file__).parent / "data" / "fhir_examples" / "r4b" / "Patient-example.json"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _match(client, headers, resource, **extra):
    parameters = [{"name": "resource", "resource": resource}, *({"name": k, **v} for k, v in extra.items())]
    return client.post("/fhir/Patient/$match", data=dumps({"resourceType": "Parameters", "parameter": parameters}),
                       headers={**headers, **FHIR_JSON})


def _patients(bundle):
    return [entry for entry in bundle["entry"] if entry["search"]["mode"] == "match"]


def _read_back(client, headers, entry):
    """Each fullUrl answers 200 to the same caller, with the very resource the match returned."""
    path = entry["fullUrl"].removeprefix("http://localhost")
    assert path == f"/fhir/Patient/{entry['resource']['id']}"
    read = client.get(path, headers=headers)
    assert read.status_code == 200, (path, read.get_json())
    assert loads(read.data) == entry["resource"]


def test_an_official_example_patient_is_matched_as_stored_and_reads_back(client, as_user):
    doctor = as_user("yaodu.doctor")
    sent = loads(OFFICIAL_PATIENT.read_text(encoding="utf-8"))
    sent.pop("id")
    stored = client.post("/fhir/Patient", data=dumps(sent), headers={**doctor, **FHIR_JSON})
    assert stored.status_code == 201, stored.get_json()
    response = _match(client, doctor, sent)
    assert response.status_code == 200 and response.content_type == "application/fhir+json"
    bundle = loads(response.data)
    assert bundle["type"] == "searchset" and bundle["total"] == len(_patients(bundle)) == 1
    entry = _patients(bundle)[0]
    assert entry["resource"]["id"] == stored.get_json()["id"]
    assert entry["resource"]["name"] == sent["name"] and entry["resource"]["birthDate"] == sent["birthDate"]
    assert 0 < entry["search"]["score"] <= 1
    assert entry["search"]["extension"][0]["url"] == MATCH_GRADE
    assert entry["search"]["extension"][0]["valueCode"] in ("certain", "probable", "possible")
    _read_back(client, doctor, entry)


def test_matches_are_the_callers_readable_patients_never_another_tenants(client, app, as_user, platform_db):
    yaodu = new_patient(client, as_user("yaodu.doctor"), mrn="Y-SECRET-1")
    quwo_record = new_patient(client, as_user("quwo.doctor"), mrn="Q-1", address="曲沃县史村镇")
    person = yaodu["master_person_id"]
    assert quwo_record["master_person_id"] == person

    quwo = as_user("quwo.doctor")
    bundle = loads(_match(client, quwo, patient()).data)
    assert [e["resource"]["id"] for e in _patients(bundle)] == [quwo_record["id"]] and bundle["total"] == 1
    entry = _patients(bundle)[0]
    assert entry["search"]["extension"] == [{"url": MATCH_GRADE, "valueCode": "certain"},
                                            {"url": OTHER_RECORDS, "valueInteger": 1}]
    _read_back(client, quwo, entry)
    assert yaodu["id"] not in str(bundle) and "Y-SECRET-1" not in str(bundle) and person not in str(bundle)
    assert client.get(f"/fhir/Patient/{yaodu['id']}", headers=quwo).status_code == 404

    stranger = as_user("lfph.specialist")
    refused = _match(client, stranger, patient())
    assert refused.status_code == 200
    body = refused.get_data(as_text=True)
    assert loads(body)["total"] == 0 and _patients(loads(body)) == []
    for secret in (yaodu["id"], quwo_record["id"], person, "Y-SECRET-1", "Q-1"):
        assert secret not in body

    lf_ph = platform_db.scalar(select(Institution.id).where(Institution.code == "LF-PH"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, lf_ph, person, care.CareKind.referral)
    cared = loads(_match(client, stranger, patient()).data)
    assert sorted(e["resource"]["id"] for e in _patients(cared)) == sorted([yaodu["id"], quwo_record["id"]])
    assert cared["total"] == 2
    for entry in _patients(cared):
        assert [x["valueCode"] for x in entry["search"]["extension"]] == ["certain"]
        _read_back(client, stranger, entry)


def test_count_limits_the_patients_and_each_returned_patient_is_audited(client, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    first = new_patient(client, doctor, mrn="Y-1")
    second = new_patient(client, doctor, mrn="Y-2", name="王秀兰", id_number=None, phone="13700000000")
    request_id = "match-audit-1"
    response = client.post("/fhir/Patient/$match", data=dumps({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient()}, {"name": "count", "valueInteger": 1}]}),
        headers={**doctor, **FHIR_JSON, "X-Request-Id": request_id})
    bundle = loads(response.data)
    assert [e["resource"]["id"] for e in _patients(bundle)] == [first["id"]] and bundle["total"] == 1
    platform_db.rollback()
    events = platform_db.execute(select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.patient,
                                        AuditEvent.detail).where(AuditEvent.request_id == request_id)
                                 .order_by(AuditEvent.seq)).all()
    assert [(action, resource_id, patient_ref) for action, resource_id, patient_ref, _ in events] == [
        ("match", None, None), ("read", first["id"], f"yaodu/{first['id']}")]
    assert f"shown={first['master_person_id']}" in events[0].detail
    assert second["id"] not in str(bundle)
    everyone = loads(_match(client, doctor, patient(), count={"valueInteger": 5}).data)
    assert {e["resource"]["id"] for e in _patients(everyone)} <= {first["id"], second["id"]}
    for entry in _patients(everyone):
        _read_back(client, doctor, entry)


def test_a_steward_without_patient_read_is_refused(client, as_user):
    response = _match(client, as_user("steward"), patient())
    assert response.status_code == 403 and response.get_json()["resourceType"] == "OperationOutcome"
