"""FHIR Patient search covers the local register: patients registered through /api/v1/patients are found too."""

from __future__ import annotations

from tests.conftest import new_patient, valid_id
from tests.fhir_helpers import ID_WANG, create, patient


def _ids(client, headers, query):
    response = client.get(f"/fhir/Patient{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return body["total"], [entry["resource"]["id"] for entry in body["entry"]]


def test_register_patients_are_found_by_fhir_search(client, as_user):
    doctor = as_user("yaodu.doctor")
    registered = new_patient(client, doctor)
    other_id = valid_id("14260119900101001")
    submitted = create(client, doctor, {**patient(name="李四", id_number=other_id, phone="13700000000"),
                                        "birthDate": "1990-01-01"})
    assert _ids(client, doctor, f"?identifier=urn:hie:id:CN-RIC|{ID_WANG}") == (1, [registered["id"]])
    assert _ids(client, doctor, f"?identifier={ID_WANG}") == (1, [registered["id"]])
    assert _ids(client, doctor, "?identifier=urn:hie:mrn:YAODU-CH|MRN-1") == (1, [registered["id"]])
    assert _ids(client, doctor, "?identifier=urn:hie:mrn:QUWO-CH|MRN-1") == (0, [])
    assert _ids(client, doctor, f"?identifier=urn:hie:id:CN-RIC|{other_id}") == (1, [submitted["id"]])
    total, ids = _ids(client, doctor, "")
    assert total == 2 and sorted(ids) == sorted([registered["id"], submitted["id"]])
    assert _ids(client, doctor, "?birthdate=1958-03-12") == (1, [registered["id"]])
    assert _ids(client, doctor, "?birthdate=ge1960") == (1, [submitted["id"]])
    assert _ids(client, doctor, "?_sort=date") == (2, [registered["id"], submitted["id"]])
    assert _ids(client, doctor, "?_count=0") == (2, [])
    found = client.get(f"/fhir/Patient?identifier={ID_WANG}", headers=doctor).get_json()["entry"][0]["resource"]
    assert found["name"] == [{"text": "王秀英"}] and found["meta"]["versionId"] == "1"


def test_register_patients_of_others_stay_hidden(client, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    assert _ids(client, as_user("quwo.doctor"), f"?identifier={ID_WANG}") == (0, [])
    assert _ids(client, as_user("quwo.doctor"), "") == (0, [])
    assert _ids(client, as_user("yaodu.fd"), "") == (0, [])
