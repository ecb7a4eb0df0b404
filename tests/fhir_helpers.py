"""Minimal valid resources and calls for the FHIR tests."""

from __future__ import annotations

from typing import Any

from tests.conftest import valid_id

LOINC = "http://loinc.org"
ID_WANG = valid_id("14100219580312002")

CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def patient(name: str = "王秀英", id_number: str | None = ID_WANG, phone: str = "13935712345") -> dict[str, Any]:
    """A Patient as a clinic's system would send it."""
    resource: dict[str, Any] = {"resourceType": "Patient", "name": [{"text": name}], "gender": "female",
                                "birthDate": "1958-03-12", "telecom": [{"system": "phone", "value": phone}]}
    if id_number:
        resource["identifier"] = [{"system": "urn:hie:id:CN-RIC", "value": id_number}]
    return resource


def clinical(resource_type: str, patient_ref: str, code: str = "8480-6", when: str = "2026-11-01") -> dict[str, Any]:
    """A minimal valid resource of each supported clinical type about a patient."""
    concept = {"coding": [{"system": LOINC, "code": code}]}
    subject = {"reference": patient_ref}
    bodies: dict[str, dict[str, Any]] = {
        "Encounter": {"status": "finished", "class": {"code": "AMB"}, "subject": subject,
                      "period": {"start": when}},
        "Condition": {"subject": subject, "code": concept, "recordedDate": when,
                      "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]}},
        "Observation": {"status": "final", "code": concept, "subject": subject, "effectiveDateTime": when,
                        "category": [{"coding": [{"code": "vital-signs"}]}],
                        "valueQuantity": {"value": 150, "unit": "mmHg"}},
        "DiagnosticReport": {"status": "final", "code": concept, "subject": subject, "effectiveDateTime": when},
        "MedicationRequest": {"status": "active", "intent": "order", "subject": subject, "authoredOn": when,
                              "medicationCodeableConcept": {"text": "氨氯地平 5mg"}},
        "Procedure": {"status": "completed", "subject": subject, "code": concept, "performedDateTime": when},
        "AllergyIntolerance": {"patient": subject, "code": {"text": "青霉素"}, "recordedDate": when},
        "Immunization": {"status": "completed", "patient": subject, "occurrenceDateTime": when,
                         "vaccineCode": {"coding": [{"system": "urn:cvx", "code": "140"}]}},
        "DocumentReference": {"status": "current", "subject": subject, "date": f"{when}T08:00:00Z",
                              "content": [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK",
                                                          "title": "出院小结"}}]},
        "ImagingStudy": {"status": "available", "subject": subject, "started": f"{when}T09:00:00Z",
                         "series": [{"uid": "1.2.3", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                                   "code": "CT"}}]},
    }
    return {"resourceType": resource_type, **bodies[resource_type]}


def create(client: Any, headers: dict[str, str], resource: dict[str, Any]) -> dict[str, Any]:
    """POST a resource and return what the server stored."""
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


class DictRedis:
    """Just enough of a Redis client for hie.platform.cache.Cache, so cache logic is tested without a Redis."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        """The stored value or None."""
        return self.values.get(key)

    def set(self, key: str, value: Any, ex: int | None = None) -> None:
        """Store a value (the time to live is ignored)."""
        self.values[key] = value

    def delete(self, *keys: str) -> None:
        """Drop keys."""
        for key in keys:
            self.values.pop(key, None)


def run_jobs(app: Any) -> None:
    """Deliver queued outbox events: with Redis a real RQ worker in burst mode; inline mode needs nothing."""
    connection = app.extensions["hie.redis"]
    if connection is None:
        return
    from rq import SimpleWorker

    from hie.platform.jobs import tasks
    from hie.platform.jobs.services import QUEUE_NAME

    tasks.bind_app(app)
    SimpleWorker([QUEUE_NAME], connection=connection).work(burst=True)
