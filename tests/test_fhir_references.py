"""References beyond the subject: to patients the writer may see, to records about the same patient, existing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import shard_engine
from tests.fhir_helpers import clinical, create, patient


def _stored(app, tenant: str) -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM fhir_resources")).scalar()


@pytest.fixture
def world(client, as_user):
    """Two yaodu patients with records, and a quwo patient yaodu may not see."""
    doctor = as_user("yaodu.doctor")
    wang = create(client, doctor, patient())
    li = create(client, doctor, patient(name="李四", id_number=None, phone="13700000000"))
    return {
        "wang": wang, "li": li,
        "wang_obs": create(client, doctor, clinical("Observation", f"Patient/{wang['id']}")),
        "wang_enc": create(client, doctor, clinical("Encounter", f"Patient/{wang['id']}")),
        "li_obs": create(client, doctor, clinical("Observation", f"Patient/{li['id']}")),
        "quwo": create(client, as_user("quwo.doctor"), patient(name="赵六", id_number=None, phone="13600000000")),
    }


def _refused(client, app, headers, resource, expression):
    before = _stored(app, "yaodu")
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 422, response.get_json()
    issue = response.get_json()["issue"][0]
    assert response.get_json()["resourceType"] == "OperationOutcome" and issue["expression"] == [expression]
    assert _stored(app, "yaodu") == before


def test_references_to_other_patients_records_or_unseen_patients_are_refused(client, app, as_user, world):
    doctor, wang = as_user("yaodu.doctor"), world["wang"]["id"]
    _refused(client, app, doctor, {**clinical("DiagnosticReport", f"Patient/{wang}"),
                                   "result": [{"reference": f"Observation/{world['wang_obs']['id']}"},
                                              {"reference": f"Observation/{world['li_obs']['id']}"}]},
             "DiagnosticReport.result[1]")
    _refused(client, app, doctor, {**clinical("Observation", f"Patient/{wang}"),
                                   "focus": [{"reference": f"Patient/{world['quwo']['id']}"}]}, "Observation.focus[0]")
    _refused(client, app, doctor, {**clinical("Observation", f"Patient/{wang}"),
                                   "performer": [{"reference": "Patient/no-such-patient"}]}, "Observation.performer[0]")
    _refused(client, app, doctor, {**clinical("Observation", f"Patient/{wang}"),
                                   "encounter": {"reference": "Encounter/yaodu.nothing"}}, "Observation.encounter")
    _refused(client, app, doctor, {**clinical("Procedure", f"Patient/{wang}"),
                                   "basedOn": [{"reference": f"MedicationRequest/{world['li_obs']['id']}"}]},
             "Procedure.basedOn[0]")


def test_references_to_the_same_patients_records_are_kept(client, as_user, world):
    doctor, wang = as_user("yaodu.doctor"), world["wang"]["id"]
    report = create(client, doctor, {**clinical("DiagnosticReport", f"Patient/{wang}"),
                                     "result": [{"reference": f"Observation/{world['wang_obs']['id']}"}],
                                     "encounter": {"reference": f"Encounter/{world['wang_enc']['id']}"},
                                     "performer": [{"reference": "Practitioner/external-1"}]})
    assert report["result"] == [{"reference": f"Observation/{world['wang_obs']['id']}"}]
    focus = create(client, doctor, {**clinical("Observation", f"Patient/{wang}"),
                                    "focus": [{"reference": f"Patient/{world['li']['id']}"}]})
    assert focus["focus"] == [{"reference": f"Patient/{world['li']['id']}"}]


def test_references_inside_a_transaction_must_be_about_the_same_patient(client, app, as_user, world):
    doctor = as_user("yaodu.doctor")
    before = _stored(app, "yaodu")

    def bundle(result_subject):
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:obs", "resource": clinical("Observation", result_subject),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {**clinical("DiagnosticReport", f"Patient/{world['wang']['id']}"),
                          "result": [{"reference": "urn:uuid:obs"}]},
             "request": {"method": "POST", "url": "DiagnosticReport"}}]}

    refused = client.post("/fhir", json=bundle(f"Patient/{world['li']['id']}"), headers=doctor)
    assert refused.status_code == 422
    assert refused.get_json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.result[0]"]
    assert _stored(app, "yaodu") == before
    kept = client.post("/fhir", json=bundle(f"Patient/{world['wang']['id']}"), headers=doctor)
    assert kept.status_code == 200, kept.get_json()
    assert _stored(app, "yaodu") == before + 2
