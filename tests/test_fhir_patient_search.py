"""FHIR Patient search covers the local register: patients registered through /api/v1/patients are found too."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from hie.patients.name_index import PatientSearchToken
from tests.conftest import new_patient, shard_engine, valid_id
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
    assert _ids(client, doctor, "?_sort=birthdate") == (2, [registered["id"], submitted["id"]])
    assert _ids(client, doctor, "?_count=0") == (2, [])
    found = client.get(f"/fhir/Patient?identifier={ID_WANG}", headers=doctor).get_json()["entry"][0]["resource"]
    assert found["name"] == [{"text": "王秀英"}] and found["meta"]["versionId"] == "1"


def test_register_patients_of_others_stay_hidden(client, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    assert _ids(client, as_user("quwo.doctor"), f"?identifier={ID_WANG}") == (0, [])
    assert _ids(client, as_user("quwo.doctor"), "") == (0, [])
    assert _ids(client, as_user("yaodu.fd"), "") == (0, [])


SYNTHEA_NAME = {"use": "official", "family": "Abbott774", "given": ["Aaron697", "Brian"], "prefix": ["Mr."]}


def _synthea_like(client, doctor) -> dict:
    """A Patient with a structured Latin name as Synthea writes them, and a second phone."""
    return create(client, doctor, {"resourceType": "Patient", "name": [SYNTHEA_NAME], "gender": "other",
                                   "birthDate": "1984-07-02",
                                   "telecom": [{"system": "phone", "value": "13612345678"},
                                               {"system": "phone", "value": "+86 139 0000 1111"}]})


@pytest.mark.parametrize(("query", "who"), [
    ("name=王", "register"), ("name=王秀", "register"), ("name=王秀英", "register"), ("name=秀", "register"),
    ("family=王", "register"), ("given=秀英", "register"), ("given=王", None), ("family=秀英", None),
    ("name=wang", "register"), ("name=WangXiuying", "register"), ("given=xiuy", "register"), ("family=wa", "register"),
    ("name:exact=王秀英", "register"), ("name:exact=王秀", None), ("name=李", None),
    ("family=abb", "fhir"), ("family=Abbott774", "fhir"), ("given=aaron", "fhir"), ("given=BRI", "fhir"),
    ("name=aaron abbott", "fhir"), ("name=mr", "fhir"), ("family:exact=Abbott774", "fhir"),
    ("family:exact=abbott774", None), ("given:exact=Brian", "fhir"), ("name=brian,王", "both"),
    ("gender=female", "register"), ("gender=other", "fhir"), ("gender=male", None),
    ("gender=http://hl7.org/fhir/administrative-gender|female", "register"), ("gender:not=female", "fhir"),
    ("phone=13935712345", "register"), ("phone=139-3571-2345", "register"), ("phone=13612345678", "fhir"),
    ("phone=13900001111", "fhir"), ("phone=13000000000", None), ("birthdate=1984", "fhir"),
    ("name=王&gender=female&birthdate=1958-03-12", "register"), ("name=王&gender=male", None),
])
def test_patients_are_found_by_name_gender_phone_while_sealed(client, as_user, query, who):
    doctor = as_user("yaodu.doctor")
    register = new_patient(client, doctor)
    fhir = _synthea_like(client, doctor)
    expected = {"register": [register["id"]], "fhir": [fhir["id"]], "both": sorted([register["id"], fhir["id"]]),
                None: []}[who]
    total, found = _ids(client, doctor, f"?{query}&_sort=_id")
    assert (total, sorted(found)) == (len(expected), expected)


def test_name_index_holds_no_plaintext_and_hides_other_tenants(client, app, as_user):
    doctor = as_user("yaodu.doctor")
    new_patient(client, doctor)
    _synthea_like(client, doctor)
    with shard_engine(app, "yaodu").connect() as shard:
        rows = shard.execute(select(PatientSearchToken.param, PatientSearchToken.token)).all()
    assert rows and all(re.fullmatch(r"[0-9a-f]{32}", token) for _, token in rows)
    assert {param for param, _ in rows} == {"name", "family", "given", "name:exact", "family:exact", "given:exact",
                                            "phone"}
    quwo = as_user("quwo.doctor")
    for query in ("?name=王", "?family=abbott", "?phone=13935712345", "?gender=female",
                  "?_revinclude=Observation:subject"):
        assert _ids(client, quwo, query) == (0, [])


def test_register_renames_move_the_name_index(client, as_user):
    doctor = as_user("yaodu.doctor")
    registered = new_patient(client, doctor)
    response = client.patch(f"/api/v1/patients/{registered['id']}", json={"name": "李秀英"},
                            headers={**doctor, "If-Match": str(registered["version"])})
    assert response.status_code == 200, response.get_json()
    assert _ids(client, doctor, "?family=李") == (1, [registered["id"]])
    assert _ids(client, doctor, "?family=王") == (0, [])


def test_patient_pages_follow_the_cursor(client, as_user):
    doctor = as_user("yaodu.doctor")
    made = [new_patient(client, doctor, mrn=f"P-{n}", name=f"王{given}", id_number=None, phone=f"1370000000{n}",
                        birth_date=f"19{60 + n}-01-01")["id"] for n, given in enumerate(("一", "二", "三", "四", "五"))]
    url: str | None = "/fhir/Patient?family=王&_count=2&_sort=-birthdate"
    seen: list[str] = []
    while url:
        body = client.get(url.removeprefix("http://localhost"), headers=doctor).get_json()
        assert body["total"] == 5
        seen += [entry["resource"]["id"] for entry in body["entry"]]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert seen == made[::-1]
