"""Real FHIR client libraries, unmodified, against the exchange over HTTP: fhirpy's sync client runs its common flows
(count, paging to the end, include, revinclude, history, conditional create) and fhirclient's strict R4 models parse
what the server answers. The data is Synthea's (tests/data/synthea/README.md), put in by the exchange's own API."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirclient.models.bundle import Bundle as StrictBundle
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from fhirpy import SyncFHIRClient
from flask import Flask
from werkzeug.serving import make_server

from tests.conftest import PASSWORD, wipe

SYNTHEA = Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json"
CLINICIAN = "yaodu.doctor"


@dataclass(frozen=True)
class Served:
    """The exchange behind a real HTTP server, a clinician's token, and what the Synthea bundle stored."""

    base_url: str
    token: str
    patient_id: str
    stored: dict[str, list[str]]  # resource type -> ids, in bundle order

    def client(self) -> SyncFHIRClient:
        """fhirpy as an application would configure it: the FHIR base and a bearer token."""
        return SyncFHIRClient(f"{self.base_url}/fhir", authorization=f"Bearer {self.token}")

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(f"{self.base_url}/fhir/{path}", params=params, timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"})


def _login(base_url: str, username: str) -> str:
    response = requests.post(f"{base_url}/api/v1/auth/token", json={"username": username, "password": PASSWORD},
                             timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _load_synthea(base_url: str, token: str) -> tuple[str, dict[str, list[str]]]:
    """The Synthea transaction as published, posted to /fhir; the ids the server assigned, per type."""
    bundle = json.loads(SYNTHEA.read_text())
    response = requests.post(f"{base_url}/fhir", json=bundle, timeout=120,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text
    stored: dict[str, list[str]] = {}
    for entry in response.json()["entry"]:
        assert entry["response"]["status"].startswith("201"), entry
        kind, resource_id = entry["response"]["location"].split("/_history/")[0].split("/")[-2:]
        stored.setdefault(kind, []).append(resource_id)
    return stored["Patient"][0], stored


@pytest.fixture(scope="module")
def served(app: Flask) -> Iterator[Served]:
    """The suite's app on a free port with Bob965's records; everything written is wiped after."""
    wipe(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    try:
        token = _login(base_url, CLINICIAN)
        patient_id, stored = _load_synthea(base_url, token)
        yield Served(base_url, token, patient_id, stored)
    finally:
        server.shutdown()
        thread.join()
        wipe(app)


def _synthea_counts() -> Counter[str]:
    return Counter(entry["resource"]["resourceType"] for entry in json.loads(SYNTHEA.read_text())["entry"])


def test_count_answers_how_many_records_the_bundle_stored(served: Served) -> None:
    client = served.client()
    for resource_type, expected in _synthea_counts().items():
        if resource_type == "Patient":
            continue
        assert client.resources(resource_type).search(patient=served.patient_id).count() == expected, resource_type
    assert client.resources("Patient").search(_id=served.patient_id).count() == 1


def test_count_sends_totalmethod_which_strict_handling_accepts_and_checks(served: Served) -> None:
    """fhirpy's count() adds _totalMethod=count (Aidbox's name for _total): accepted as such under the default strict
    handling, so count() works unmodified; a value it does not define is refused by name."""
    observations = served.client().resources("Observation").search(patient=served.patient_id)
    assert observations.count() == _synthea_counts()["Observation"]
    refused = served.get("Observation", patient=served.patient_id, _totalMethod="exact")
    assert refused.status_code == 400 and "_totalMethod" in refused.text


def test_paging_to_the_end_returns_every_record_once(served: Served) -> None:
    client = served.client()
    pages = client.resources("Observation").search(patient=served.patient_id).limit(7)
    fetched = [resource.id for resource in pages.fetch_all()]
    assert len(fetched) == len(set(fetched)) == 30
    assert set(fetched) == set(served.stored["Observation"])
    assert len(pages.fetch()) == 7
    by_date = client.resources("Observation").search(patient=served.patient_id).sort("date").limit(4).fetch_all()
    dates = [resource["effectiveDateTime"] for resource in by_date]
    assert len(dates) == 30 and dates == sorted(dates)


def test_include_brings_the_patient_the_observations_reference(served: Served) -> None:
    client = served.client()
    bundle = (client.resources("Observation").search(patient=served.patient_id).include("Observation", "subject")
              .limit(5).fetch_raw())
    modes = Counter((entry["resource"]["resourceType"], entry["search"]["mode"]) for entry in bundle["entry"])
    assert modes == {("Observation", "match"): 5, ("Patient", "include"): 1}
    included = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include")
    assert included["id"] == served.patient_id
    assert bundle["total"] == 30


def test_revinclude_brings_the_records_that_reference_the_patient(served: Served) -> None:
    client = served.client()
    bundle = (client.resources("Patient").search(_id=served.patient_id).revinclude("Immunization", "patient")
              .revinclude("Encounter", "subject").fetch_raw())
    found = Counter((entry["resource"]["resourceType"], entry["search"]["mode"]) for entry in bundle["entry"])
    assert found == {("Patient", "match"): 1, ("Immunization", "include"): 5, ("Encounter", "include"): 3}
    assert {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Immunization"} == set(
        served.stored["Immunization"])


def test_history_shows_each_version_a_client_saved(served: Served) -> None:
    client = served.client()
    encounter = client.reference("Encounter", served.stored["Encounter"][0]).to_resource()
    first_version = encounter["meta"]["versionId"]
    encounter["status"] = "entered-in-error"
    encounter.save()
    assert encounter["meta"]["versionId"] != first_version
    history = client.execute(f"Encounter/{encounter.id}/_history", method="get")
    assert history["type"] == "history"
    versions = [entry["resource"]["meta"]["versionId"] for entry in history["entry"]]
    assert versions == [encounter["meta"]["versionId"], first_version]
    assert [entry["resource"]["status"] for entry in history["entry"]] == ["entered-in-error", "finished"]
    old = client.execute(f"Encounter/{encounter.id}/_history/{first_version}", method="get")
    assert old["status"] == "finished"
    assert client.reference("Encounter", encounter.id).to_resource()["status"] == "entered-in-error"


def test_conditional_create_finds_the_record_instead_of_storing_it_twice(served: Served) -> None:
    client = served.client()
    published = next(e["resource"] for e in json.loads(SYNTHEA.read_text())["entry"]
                     if e["resource"]["resourceType"] == "DocumentReference")
    report = client.resource("DocumentReference", **{k: v for k, v in published.items() if k != "id"})
    report["subject"] = {"reference": f"Patient/{served.patient_id}"}
    report["context"]["encounter"] = [{"reference": f"Encounter/{served.stored['Encounter'][0]}"}]
    identifier = published["identifier"][0]
    criteria = {"identifier": f"{identifier['system']}|{identifier['value']}"}
    found, created = client.resources("DocumentReference").search(**criteria).get_or_create(report)
    assert not created and found.id in served.stored["DocumentReference"]
    report["identifier"] = [{"system": "urn:hie:test:fhirpy", "value": "report-1"}]
    criteria = {"identifier": "urn:hie:test:fhirpy|report-1"}
    first, created = client.resources("DocumentReference").search(**criteria).get_or_create(report)
    assert created
    again, created_again = client.resources("DocumentReference").search(**criteria).get_or_create(report)
    assert not created_again and again.id == first.id
    assert client.resources("DocumentReference").search(**criteria).fetch_all() == [again]
    again.delete()
    assert client.resources("DocumentReference").search(**criteria).fetch_all() == []


def _strict(data: dict[str, Any]) -> Any:
    """fhirclient's R4 model of a resource, strict: an element R4 does not have raises."""
    return FHIRElementFactory.instantiate(data["resourceType"], data)


def test_strict_r4_models_parse_every_search_bundle_and_read(served: Served) -> None:
    for resource_type, ids in served.stored.items():
        response = served.get(resource_type, **({"_id": ids[0]} if resource_type == "Patient"
                                                else {"patient": served.patient_id}), _count="100")
        assert response.status_code == 200, response.text
        bundle = StrictBundle(response.json(), strict=True)
        assert bundle.total == len(ids) and len(bundle.entry) == len(ids)
        assert {entry.resource.id for entry in bundle.entry} == set(ids)
        for resource_id in ids:
            read = served.get(f"{resource_type}/{resource_id}")
            assert read.status_code == 200, read.text
            model = _strict(read.json())
            assert model.id == resource_id and model.as_json()["resourceType"] == resource_type
    everything = served.get(f"Patient/{served.patient_id}/$everything")
    assert everything.status_code == 200, everything.text
    assert len(StrictBundle(everything.json(), strict=True).entry) == sum(_synthea_counts().values())
