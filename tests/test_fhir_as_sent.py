"""Exactly what was sent: official R4B examples and a Synthea patient read back as their senders wrote them (numbers
compared by their text, so 4.50 is not 4.5), required bindings refused by element, telecoms of any country."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from hie.exchange.literal_json import Number, dumps, loads
from hie.exchange.resources import PATIENT_FIELD
from tests.conftest import shard_engine
from tests.fhir_helpers import clinical, create, patient

EXAMPLES = Path(__file__).parent / "data" / "fhir_examples"
OFFICIAL = sorted((EXAMPLES / "r4b").glob("*-*.json"))
SYNTHEA = EXAMPLES / "synthea" / "sample_complete_patient_first_entries.json"
SERVER_SET = ("versionId", "lastUpdated")  # all the server adds to a resource, besides its id
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def exact(value: Any) -> Any:
    """A structure equal to another only if every number has the same text (Decimal('4.50') == Decimal('4.5'))."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [exact(item) for item in value]
    if isinstance(value, Number):
        return ("number", value.literal)
    if isinstance(value, int) and not isinstance(value, bool):
        return ("number", str(value))
    assert not isinstance(value, float), "numbers are parsed with their literals"
    return value


def as_sent(resource: dict[str, Any]) -> Any:
    """The resource without what the server sets (id, meta.versionId, meta.lastUpdated), numbers as text."""
    out = {key: value for key, value in resource.items() if key != "id"}
    meta = {key: value for key, value in (out.pop("meta", None) or {}).items() if key not in SERVER_SET}
    if meta:
        out["meta"] = meta
    return exact(out)


def post(client: Any, headers: dict[str, str], resource: dict[str, Any]) -> Any:
    return client.post(f"/fhir/{resource['resourceType']}", data=dumps(resource), headers={**headers, **FHIR_JSON})


def about(resource: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """An example pointed at a patient of this exchange (the examples' own patients are not here)."""
    if resource["resourceType"] != "Patient":
        field = PATIENT_FIELD.get(resource["resourceType"], "subject")
        resource[field] = {**resource.get(field, {}), "reference": f"Patient/{patient_id}"}
    return resource


def _rows(app: Any, tenant: str, table: str = "fhir_resources") -> list[Any]:
    with shard_engine(app, tenant).connect() as conn:
        return list(conn.execute(text(f"SELECT resource_type, id, sealed, content FROM {table}")))


@pytest.mark.parametrize("resource_type", sorted({path.name.split("-")[0] for path in OFFICIAL}))
def test_official_examples_read_back_exactly_as_sent(client, as_user, resource_type):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    for path in (p for p in OFFICIAL if p.name.startswith(f"{resource_type}-")):
        sent = about(loads(path.read_text(encoding="utf-8")), subject["id"])
        response = post(client, headers, sent)
        assert response.status_code == 201, (path.name, response.get_json())
        assert b"fhir_comments" not in response.data
        stored = loads(response.data)
        assert as_sent(stored) == as_sent(sent), path.name
        read = client.get(f"/fhir/{resource_type}/{stored['id']}", headers=headers)
        assert as_sent(loads(read.data)) == as_sent(sent) and b"fhir_comments" not in read.data, path.name


def test_decimals_keep_their_precision_on_every_path(client, app, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    sent = about(loads((EXAMPLES / "r4b" / "Observation-decimal.json").read_text(encoding="utf-8")), subject["id"])
    literals = [b'"value":1.0,', b'"value":1.00,', b'"value":1E-22,', b'"value":1000000000000000000,',
                b'"value":1.000000000000000000E-245,', b'"value":-1.000000000000000000E+245,']
    created = post(client, headers, sent)
    assert created.status_code == 201 and all(literal in created.data for literal in literals)
    stored = loads(created.data)
    url = f"/fhir/Observation/{stored['id']}"
    row = next(r for r in _rows(app, "yaodu") if r.id == stored["id"])
    assert all(literal.decode() in row.content for literal in literals)  # the row holds the text as sent

    stored["component"][0]["valueQuantity"]["value"] = Number("4.50")
    stored["component"][1]["valueQuantity"]["value"] = Number("3.90")
    updated = client.put(url, data=dumps(stored), headers={**headers, **FHIR_JSON})
    assert updated.status_code == 200 and b'"value":4.50,' in updated.data and b'"value":3.90,' in updated.data
    for path in (url, f"{url}/_history/2", f"/fhir/Observation?patient={subject['id']}",
                 f"/fhir/Patient/{subject['id']}/$everything"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200 and b'"value":4.50,' in answer.data, path
        assert b'"value":-1.000000000000000000E+245,' in answer.data, path
    first = client.get(f"{url}/_history/1", headers=headers)
    assert as_sent(loads(first.data)) == as_sent(sent)


def test_a_transaction_keeps_each_entry_as_sent(client, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    sent = about(loads((EXAMPLES / "r4b" / "Observation-body-height.json").read_text(encoding="utf-8")),
                 subject["id"])
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": sent, "request": {"method": "POST", "url": "Observation"}}]}
    response = client.post("/fhir", data=dumps(bundle), headers={**headers, **FHIR_JSON})
    assert response.status_code == 200 and b'"value":66.899999999999991,' in response.data
    stored = loads(response.data)["entry"][0]["resource"]
    assert as_sent(stored) == as_sent(sent)


def test_synthea_patient_with_a_us_phone_is_kept_as_sent_and_not_matched_on(client, app, as_user):
    headers = as_user("yaodu.doctor")
    bundle = loads(SYNTHEA.read_text(encoding="utf-8"))
    sent = [entry["resource"] for entry in bundle["entry"]]
    response = client.post("/fhir", data=dumps(bundle), headers={**headers, **FHIR_JSON})
    assert response.status_code == 200, response.get_json()
    stored = [entry["resource"] for entry in loads(response.data)["entry"]]
    patient_id, encounter_id = stored[0]["id"], stored[1]["id"]
    read = loads(client.get(f"/fhir/Patient/{patient_id}", headers=headers).data)
    assert as_sent(read) == as_sent(sent[0])
    assert b'"valueDecimal":2.0028929627142285' in client.get(f"/fhir/Patient/{patient_id}", headers=headers).data
    # urn:uuid references became this server's ids; nothing else differs
    sent[1]["subject"]["reference"] = sent[2]["subject"]["reference"] = f"Patient/{patient_id}"
    sent[2]["encounter"]["reference"] = f"Encounter/{encounter_id}"
    assert [as_sent(r) for r in stored[1:]] == [as_sent(r) for r in sent[1:]]
    raw = repr(_rows(app, "yaodu")) + repr(_rows(app, "yaodu", "fhir_resource_versions"))
    assert "Gerlach374" not in raw and "555-450-5873" not in raw  # the Patient is still sealed
    register = client.get(f"/api/v1/patients/{patient_id}", headers=headers).get_json()
    assert register["phone"] is None and register["name"] == "Gerlach374Lindsay928"


def test_a_chinese_number_is_normalised_for_the_empi_and_kept_as_sent(client, as_user):
    headers = as_user("yaodu.doctor")
    sent = patient()
    sent["telecom"] = [{"system": "phone", "value": "555-450-5873", "use": "home"},
                       {"system": "phone", "value": "+86 139-3571-2345", "use": "mobile"}]
    stored = create(client, headers, sent)
    assert stored["telecom"] == sent["telecom"]
    register = client.get(f"/api/v1/patients/{stored['id']}", headers=headers).get_json()
    assert register["phone"] == "13935712345"
    quwo = create(client, as_user("quwo.doctor"), patient(phone="13935712345"))
    same = client.get(f"/api/v1/patients/{quwo['id']}", headers=as_user("quwo.doctor")).get_json()
    assert same["master_person_id"] == register["master_person_id"]  # the EMPI matched on the normalised number


def _wrong(resource_type: str, change: Any) -> dict[str, Any]:
    resource = patient() if resource_type == "Patient" else clinical(resource_type, "Patient/SUBJECT")
    change(resource)
    return resource


def _set(path: str, value: Any) -> Any:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = resource
        for name in parents:
            node = node[int(name)] if name.isdigit() else node[name]
        node[last] = value
    return change


WRONG_CODES = [
    ("Observation", _set("status", "bogus"), "Observation.status"),
    ("Encounter", _set("status", "completed"), "Encounter.status"),  # an R5 code, not R4B
    ("MedicationRequest", _set("intent", "wish"), "MedicationRequest.intent"),
    ("Patient", _set("gender", "M"), "Patient.gender"),
    ("Condition", _set("clinicalStatus", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                      "condition-clinical", "code": "gone"}]}),
     "Condition.clinicalStatus.coding[0].code"),
    ("Condition", _set("clinicalStatus", {"coding": [{"code": "active"}]}),
     "Condition.clinicalStatus.coding[0].system"),
    ("AllergyIntolerance", _set("clinicalStatus", {"text": "active"}), "AllergyIntolerance.clinicalStatus"),
    ("Observation", _set("valueQuantity.comparator", "~"), "Observation.valueQuantity.comparator"),
    ("Patient", _set("telecom", [{"system": "fax2", "value": "1"}]), "Patient.telecom[0].system"),
    ("Patient", _set("telecom", [{"value": "13935712345"}]), "Patient.telecom[0].system"),
    ("Patient", _set("telecom", [{"system": "phone", "value": "1" * 257}]), "Patient.telecom[0].value"),
]


@pytest.mark.parametrize(("resource_type", "change", "element"), WRONG_CODES)
def test_a_wrong_code_is_refused_naming_the_element_and_nothing_is_stored(client, app, as_user, resource_type,
                                                                          change, element):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient(name="张三", id_number=None, phone="13700000000"))
    before = _rows(app, "yaodu")
    body = loads(dumps(_wrong(resource_type, change)).replace("SUBJECT", subject["id"]))
    response = post(client, headers, body)
    assert response.status_code == 422, response.get_json()
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [element] and issue["diagnostics"].startswith(element)
    assert _rows(app, "yaodu") == before
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient(name="李四", id_number=None, phone="13700000001"),
                         "request": {"method": "POST", "url": "Patient"}},
                        {"resource": body, "request": {"method": "POST", "url": resource_type}}]}
    response = client.post("/fhir", data=dumps(bundle), headers={**headers, **FHIR_JSON})
    assert response.status_code == 422
    in_bundle = element.replace(resource_type, "Bundle.entry[1].resource", 1)
    assert response.get_json()["issue"][0]["expression"] == [in_bundle]
    assert _rows(app, "yaodu") == before


def test_an_update_with_a_wrong_status_changes_nothing(client, app, as_user):
    headers = as_user("yaodu.doctor")
    subject = create(client, headers, patient())
    stored = create(client, headers, clinical("Observation", f"Patient/{subject['id']}"))
    before = _rows(app, "yaodu", "fhir_resource_versions")
    response = client.put(f"/fhir/Observation/{stored['id']}", json={**stored, "status": "bogus"}, headers=headers)
    assert response.status_code == 422 and response.get_json()["issue"][0]["expression"] == ["Observation.status"]
    assert _rows(app, "yaodu", "fhir_resource_versions") == before
    assert client.get(f"/fhir/Observation/{stored['id']}", headers=headers).get_json() == stored


@pytest.mark.parametrize(("body", "element"), [
    ('{"resourceType":"Observation","status":"final","code":{"text":"x"},"fhir_comments":["a"]}',
     "Observation.fhir_comments"),
    ('{"resourceType":"Observation","status":"final","code":{"text":"x","fhir_comments":["a"]}}',
     "Observation.code.fhir_comments"),
    ('{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":null}', "Observation.issued"),
])
def test_what_fhir_json_does_not_have_is_refused(client, as_user, body, element):
    response = client.post("/fhir/Observation", data=body, headers={**as_user("yaodu.doctor"), **FHIR_JSON})
    assert response.status_code == 400 and response.get_json()["issue"][0]["expression"] == [element]


@pytest.mark.parametrize("body", ['{"resourceType":"Observation","valueQuantity":{"value":NaN}}',
                                  '{"resourceType":"Observation","valueQuantity":{"value":Infinity}}'])
def test_numbers_json_does_not_have_are_refused(client, as_user, body):
    response = client.post("/fhir/Observation", data=body, headers={**as_user("yaodu.doctor"), **FHIR_JSON})
    assert response.status_code == 400 and response.get_json()["issue"][0]["code"] == "structure"
