"""Standard FHIR search on official R4B examples: the spec's parameter names, token forms, result parameters,
lenient handling, _revinclude, sorting, exact _lastUpdated and cursor paging that survives concurrent writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from sqlalchemy import delete, select

from hie.exchange.models import FhirToken
from hie.exchange.reindex import reindex_all
from hie.exchange.search_index import FhirDate
from hie.platform.audit.models import AuditEvent
from hie.platform.db import session_scope
from tests.conftest import TENANTS, new_patient, shard_engine
from tests.fhir_helpers import create

EXAMPLES = Path(__file__).parent / "data" / "fhir_examples" / "r4b"
OBS_STATUS = "http://hl7.org/fhir/observation-status"


def example(name: str, patient_id: str) -> dict[str, Any]:
    """An official example as published, its patient reference pointed at a patient of this exchange."""
    resource = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    resource.pop("id", None)
    field = "patient" if resource["resourceType"] in ("AllergyIntolerance", "Immunization") else "subject"
    resource[field] = {"reference": f"Patient/{patient_id}"}
    return resource


def search(client, headers, query: str, status: int = 200, **extra: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{query}", headers={**headers, **extra})
    assert response.status_code == status, response.get_json()
    return response.get_json()


def total(client, headers, query: str) -> int:
    return search(client, headers, query)["total"]


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


@pytest.fixture
def stored(client, as_user) -> dict[str, Any]:
    """A register patient of 尧都区人民医院 and five official examples about them."""
    doctor = as_user("yaodu.doctor")
    patient = new_patient(client, doctor)
    names = ("AllergyIntolerance-fishallergy", "MedicationRequest-medrx0314", "Condition-example", "Encounter-f001",
             "Observation-blood-pressure")
    return {"patient": patient, **{name.split("-")[0]: create(client, doctor, example(name, patient["id"]))
                                   for name in names}}


@pytest.mark.parametrize(("query", "expected"), [
    ("AllergyIntolerance?category=food", 1), ("AllergyIntolerance?category=medication", 0),
    ("AllergyIntolerance?category=http://hl7.org/fhir/allergy-intolerance-category|food", 1),
    ("AllergyIntolerance?clinical-status=active", 1), ("AllergyIntolerance?criticality=high", 0),
    ("AllergyIntolerance?date=2015-08", 1), ("AllergyIntolerance?date=2015-08-06T21:37:31Z", 1),
    ("AllergyIntolerance?verification-status=confirmed", 1),
    ("AllergyIntolerance?code:text=canned", 1), ("AllergyIntolerance?code:text=fish - dietary", 1),
    ("MedicationRequest?authoredon=2015-01-15", 1), ("MedicationRequest?authoredon=gt2015-01-15", 0),
    ("MedicationRequest?intent=order", 1), ("MedicationRequest?intent=plan", 0),
    ("MedicationRequest?status=http://hl7.org/fhir/CodeSystem/medicationrequest-status|completed", 1),
    ("Condition?onset-date=2012-05-24", 1), ("Condition?onset-date=lt2012-05-24", 0),
    ("Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active", 1),
    ("Condition?clinical-status=resolved", 0), ("Condition?category=encounter-diagnosis", 1),
    ("Encounter?class=AMB", 1), ("Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB", 1),
    ("Encounter?class=IMP", 0), ("Encounter?status=http://hl7.org/fhir/encounter-status|finished", 1),
    (f"Observation?status={OBS_STATUS}|final", 1), ("Observation?status=|final", 0),
    (f"Observation?status={OBS_STATUS}|", 1), ("Observation?status=final", 1), ("Observation?status:not=final", 0),
    ("Observation?status:not=amended", 1), ("Observation?code:text=blood", 1), ("Observation?code:text=pressure", 1),
    ("Observation?code:text=glucose", 0), ("Observation?component-code=http://loinc.org|8480-6", 1),
    ("Observation?combo-code=85354-9", 1), ("Observation?date=2012-09-17", 1),
    ("Observation?category:not=vital-signs", 0),
])
def test_official_examples_are_found_by_standard_parameters(client, as_user, stored, query, expected):
    assert total(client, as_user("yaodu.doctor"), query) == expected


def test_encounter_references_are_searchable_and_reverse_included(client, as_user, stored):
    doctor = as_user("yaodu.doctor")
    encounter = stored["Encounter"]
    observation = example("Observation-blood-pressure", stored["patient"]["id"])
    observation["encounter"] = {"reference": f"Encounter/{encounter['id']}"}
    linked = create(client, doctor, observation)
    assert ids(search(client, doctor, f"Observation?encounter=Encounter/{encounter['id']}")) == [linked["id"]]
    assert ids(search(client, doctor, f"Observation?encounter={encounter['id']}")) == [linked["id"]]
    bundle = search(client, doctor, f"Encounter?_id={encounter['id']}&_revinclude=Observation:encounter")
    assert ids(bundle) == [encounter["id"]] and ids(bundle, "include") == [linked["id"]]
    assert search(client, doctor, "Observation?encounter=Patient/x", 400)["issue"][0]["expression"] == ["encounter"]


def test_revinclude_of_patients_and_its_isolation(client, as_user, stored):
    doctor, quwo = as_user("yaodu.doctor"), as_user("quwo.doctor")
    patient_id = stored["patient"]["id"]
    bundle = search(client, doctor, f"Patient?_id={patient_id}&_revinclude=Observation:subject"
                                    "&_revinclude=AllergyIntolerance:patient")
    assert ids(bundle) == [patient_id]
    assert sorted(ids(bundle, "include")) == sorted([stored["Observation"]["id"], stored["AllergyIntolerance"]["id"]])
    other = new_patient(client, quwo, mrn="Q-9", name="赵六", id_number=None, phone="13700000001")
    create(client, quwo, example("Observation-blood-pressure", other["id"]))
    for query in (f"Patient?_id={patient_id}&_revinclude=Observation:subject",
                  "Patient?_revinclude=Observation:subject", f"Observation?_id={stored['Observation']['id']}"):
        seen = json.dumps(search(client, quwo, query).get("entry", []))
        assert stored["Observation"]["id"] not in seen and patient_id not in seen
    own = search(client, quwo, "Patient?_revinclude=Observation:subject")
    assert ids(own) == [other["id"]] and len(ids(own, "include")) == 1
    refused = search(client, doctor, "Patient?_revinclude=Observation:code", 400)
    assert refused["issue"][0]["expression"] == ["_revinclude"]


def test_id_total_summary_elements_and_format(client, as_user, stored):
    doctor = as_user("yaodu.doctor")
    observation, condition = stored["Observation"], stored["Condition"]
    assert ids(search(client, doctor, f"Observation?_id={observation['id']},nope")) == [observation["id"]]
    assert total(client, doctor, f"Observation?_id={condition['id']}") == 0
    counted = search(client, doctor, "Observation?_summary=count")
    assert counted["total"] == 1 and "entry" not in counted or counted["entry"] == []
    assert "total" not in search(client, doctor, "Observation?_total=none")
    assert total(client, doctor, "Observation?_total=accurate") == 1
    (entry,) = search(client, doctor, "Observation?_elements=code,effective")["entry"]
    resource = entry["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "code", "status", "effectiveDateTime"}
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
            "display": "subsetted"} in resource["meta"]["tag"]
    summary = search(client, doctor, "Observation?_summary=true")["entry"][0]["resource"]
    assert "component" in summary and "interpretation" not in summary and "text" not in summary
    text = search(client, doctor, "Observation?_summary=text")["entry"][0]["resource"]
    assert "text" in text and "component" not in text
    data = search(client, doctor, "Observation?_summary=data")["entry"][0]["resource"]
    assert "text" not in data and "interpretation" in data
    full = search(client, doctor, "Observation?_summary=false")["entry"][0]["resource"]
    assert "text" in full and "SUBSETTED" not in json.dumps(full["meta"])
    for fmt in ("json", "application/fhir%2Bjson", "application/json"):
        assert total(client, doctor, f"Observation?_format={fmt}") == 1
    refused = search(client, doctor, "Observation?_format=xml", 406)
    assert refused["issue"][0]["code"] == "not-supported" and refused["issue"][0]["expression"] == ["_format"]
    assert search(client, doctor, "Observation?_elements=nonsense", 400)["issue"][0]["expression"] == ["_elements"]
    assert search(client, doctor, "Observation?_total=maybe", 400)["issue"][0]["expression"] == ["_total"]


def test_count_above_the_maximum_is_capped_and_said_so(client, as_user, stored):
    bundle = search(client, as_user("yaodu.doctor"), "Observation?_count=5000")
    assert bundle["total"] == 1 and len(bundle["entry"]) == 1
    assert dict(parse_qsl(urlsplit(link(bundle, "self")).query))["_count"] == "100"


def test_unknown_parameters_follow_prefer_handling(client, as_user, stored):
    doctor = as_user("yaodu.doctor")
    strict = search(client, doctor, "Observation?status=final&colour=blue", 400)
    assert strict["issue"][0]["expression"] == ["colour"]
    search(client, doctor, "Observation?colour=blue", 400, Prefer="handling=strict")
    lenient = search(client, doctor, "Observation?status=final&colour=blue&code:missing=true",
                     Prefer="handling=lenient")
    assert lenient["total"] == 1 and ids(lenient) == [stored["Observation"]["id"]]
    (outcome,) = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in outcome["resource"]["issue"]] == [["colour"], ["code:missing"]]
    assert dict(parse_qsl(urlsplit(link(lenient, "self")).query)) == {"status": "final"}
    malformed = search(client, doctor, "Observation?date=2024-13", 400, Prefer="handling=lenient")
    assert malformed["issue"][0]["expression"] == ["date"]


def test_sort_by_any_date_or_token_parameter_and_ids(client, as_user):
    doctor = as_user("yaodu.doctor")
    patient = new_patient(client, doctor)
    made = []
    for status, when in (("final", "2024-03-01"), ("amended", "2023-01-01"), ("preliminary", "2025-06-30")):
        body = example("Observation-blood-pressure", patient["id"]) | {"status": status, "effectiveDateTime": when}
        made.append(create(client, doctor, body))

    def order(sort: str) -> list[str]:
        return ids(search(client, doctor, f"Observation?_sort={sort}"))

    by_id = sorted(m["id"] for m in made)
    assert order("_id") == by_id and order("-_id") == by_id[::-1]
    assert order("date") == [made[1]["id"], made[0]["id"], made[2]["id"]]
    assert order("-date") == order("date")[::-1]
    assert order("status") == [made[1]["id"], made[0]["id"], made[2]["id"]]
    assert order("-status") == order("status")[::-1]
    assert order("_lastUpdated") == [m["id"] for m in made] and order("-_lastUpdated") == [m["id"] for m in made][::-1]
    assert search(client, doctor, "Observation?_sort=status,date", 400)["issue"][0]["expression"] == ["_sort"]


def test_last_updated_is_exactly_meta_last_updated(client, as_user):
    doctor = as_user("yaodu.doctor")
    patient = create(client, doctor, {"resourceType": "Patient", "name": [{"text": "李四"}], "gender": "male",
                                      "birthDate": "1990-01-01"})
    observation = create(client, doctor, example("Observation-blood-pressure", patient["id"]))
    for kind, resource in (("Observation", observation), ("Patient", patient)):
        stamp = quote(resource["meta"]["lastUpdated"])
        assert ids(search(client, doctor, f"{kind}?_lastUpdated={stamp}")) == [resource["id"]], kind
        assert ids(search(client, doctor, f"{kind}?_lastUpdated=ge{stamp}")) == [resource["id"]], kind
        assert ids(search(client, doctor, f"{kind}?_lastUpdated=le{stamp}")) == [resource["id"]], kind
        assert ids(search(client, doctor, f"{kind}?_lastUpdated=gt{stamp}")) == [], kind
    assert ids(search(client, doctor, f"Patient?_lastUpdated=lt{quote(patient['meta']['lastUpdated'])}")) == []


@pytest.mark.parametrize("sort", ["-_lastUpdated", "date", "-status", "_id"])
def test_cursor_paging_never_repeats_or_skips_while_records_arrive(client, as_user, sort):
    doctor = as_user("yaodu.doctor")
    patient = new_patient(client, doctor)

    def add(day: int) -> str:
        body = example("Observation-blood-pressure", patient["id"]) | {"effectiveDateTime": f"2024-05-{day:02d}"}
        return create(client, doctor, body)["id"]

    before = {add(day) for day in (3, 9, 15, 21, 27)}
    url: str | None = f"Observation?_count=2&_sort={sort}"
    seen: list[str] = []
    while url:
        page = search(client, doctor, url.removeprefix("http://localhost/fhir/"))
        seen += ids(page)
        if len(seen) == 2:
            add(1), add(28), add(16)  # before, after and between the pages already shown
        url = link(page, "next")
    assert len(seen) == len(set(seen)) and before <= set(seen)


def test_cursors_are_tamper_checked_and_bound_to_their_search(client, as_user, stored):
    doctor = as_user("yaodu.doctor")
    for day in (2, 3):
        create(client, doctor, example("Observation-blood-pressure", stored["patient"]["id"])
               | {"effectiveDateTime": f"2024-01-{day:02d}"})
    following = link(search(client, doctor, "Observation?_count=1"), "next")
    cursor = dict(parse_qsl(urlsplit(following).query))["_cursor"]
    body, _, mac = cursor.partition(".")
    for query in (f"Observation?_count=1&_cursor={body}.{mac[::-1]}", f"Observation?_count=2&_cursor={cursor}",
                  f"Observation?_count=1&status=final&_cursor={cursor}"):
        outcome = search(client, doctor, query, 400)
        assert outcome["issue"][0]["expression"] == ["_cursor"]
    assert search(client, doctor, f"Observation?_count=1&_cursor={cursor}")["total"] == 3


def test_reindex_rebuilds_the_search_index(app, client, as_user, stored):
    doctor = as_user("yaodu.doctor")
    for code in TENANTS:
        with session_scope(shard_engine(app, code)) as shard:
            shard.execute(delete(FhirToken))
            shard.execute(delete(FhirDate))
    assert total(client, doctor, "Encounter?class=AMB") == 0
    counts = reindex_all(app)
    assert counts["yaodu"] == (5, 1)
    assert total(client, doctor, "Encounter?class=AMB") == 1
    assert total(client, doctor, "MedicationRequest?authoredon=2015-01-15") == 1
    assert total(client, doctor, "Patient?name=王") == 1


def test_search_audit_names_parameters_not_values(client, as_user, platform_db, stored):
    search(client, as_user("yaodu.doctor"), "Observation?code:text=blood&_revinclude=DiagnosticReport:result")
    detail = platform_db.scalars(select(AuditEvent.detail).where(AuditEvent.action == "search")
                                 .order_by(AuditEvent.seq.desc())).first()
    assert "code:text" in detail and "_revinclude" in detail and "blood" not in detail


def test_a_synthea_patient_is_searchable_by_what_it_populates(client, as_user):
    doctor = as_user("yaodu.doctor")
    bundle = json.loads((Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json")
                        .read_text(encoding="utf-8"))
    response = client.post("/fhir", json=bundle, headers=doctor)
    assert response.status_code == 200, response.get_json()
    patient_id = search(client, doctor, "Patient?family=Keeling57")["entry"][0]["resource"]["id"]
    for query in ("Patient?family=keel", "Patient?given=bob", "Patient?name=Bob965%20Keeling57", "Patient?gender=male",
                  "Patient?phone=555-814-8772", "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-12-9623",
                  "Patient?family:exact=Keeling57", "Patient?birthdate=1991-07-08"):
        assert ids(search(client, doctor, query)) == [patient_id], query
    assert total(client, doctor, "Patient?family:exact=keeling57") == 0
    observations = len([e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"])
    assert total(client, doctor, f"Observation?subject=Patient/{patient_id}") == observations
    assert total(client, doctor, "Observation?category=survey") == 29
    assert total(client, doctor, "Observation?code:text=weight") == 1
    assert total(client, doctor, "Observation?code:text=hiv") == 3
    assert total(client, doctor, "Encounter?class=AMB") == 2
    assert total(client, doctor, "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|140") == 2
    url: str | None = f"Observation?patient={patient_id}&_sort=-date&_count=7"
    seen: list[str] = []
    while url:
        page = search(client, doctor, url.removeprefix("http://localhost/fhir/"))
        seen += ids(page)
        url = link(page, "next")
    assert len(seen) == len(set(seen)) == observations
    revincluded = search(client, doctor, f"Patient?_id={patient_id}&_revinclude=Encounter:subject")
    assert len(ids(revincluded, "include")) == 3
