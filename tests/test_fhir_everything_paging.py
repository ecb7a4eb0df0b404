"""Patient/$everything as clients page it: _count with next and previous links over a keyset cursor, _type, _since,
start and end, across tenants through the EMPI and filtered by access; bad values refused naming the parameter.
The record is a Synthea patient nobody here wrote (tests/data/synthea/README.md)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from hie.exchange.search_index import moment_range
from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.fhir_helpers import clinical, create, patient

SYNTHEA = Path(__file__).parent / "data" / "synthea" / "Bob965_Keeling57_three_encounters.json"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
# Where each of the bundle's types carries its clinical date (FHIR R4 "clinical-date" search parameter).
CLINICAL_DATE = {"Encounter": ("period", "start"), "Observation": ("effectiveDateTime",),
                 "Immunization": ("occurrenceDateTime",), "DiagnosticReport": ("effectiveDateTime",),
                 "DocumentReference": ("date",)}


def _get(client, headers, url, status=200):
    response = client.get(url.removeprefix("http://localhost"), headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _link(bundle, relation):
    return next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)


def _walk(client, headers, url):
    """Every page from url by its next links: the pages' entries' (type, id) in order."""
    pages = []
    while url is not None:
        bundle = _get(client, headers, url)
        pages.append([(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]])
        url = _link(bundle, "next")
    return pages


@pytest.fixture
def bob(client, as_user):
    """The Synthea patient and his 44 records, sent by yaodu as the transaction Synthea wrote."""
    sent = json.loads(SYNTHEA.read_text(encoding="utf-8"))
    response = client.post("/fhir", data=SYNTHEA.read_bytes(), headers={**as_user("yaodu.doctor"), **FHIR_JSON})
    assert response.status_code == 200, response.get_json()
    stored = [entry["response"]["location"].split("/_history")[0].split("/") for entry in response.get_json()["entry"]]
    ids = {(resource_type, resource_id) for resource_type, resource_id in stored}
    patient_id = next(resource_id for resource_type, resource_id in stored if resource_type == "Patient")
    dated = {}
    for (resource_type, resource_id), entry in zip(stored, sent["entry"], strict=True):
        value = entry["resource"]
        for part in CLINICAL_DATE.get(resource_type, ()):
            value = value[part]
        dated[(resource_type, resource_id)] = None if resource_type == "Patient" else value
    return {"id": patient_id, "ids": ids, "dated": dated}


def test_pages_follow_next_links_to_the_end_with_the_patient_first(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    url = f"/fhir/Patient/{bob['id']}/$everything?_count=10"
    first = _get(client, doctor, url)
    assert first["total"] == 45 and len(first["entry"]) == 10
    assert first["entry"][0]["resource"] == {**first["entry"][0]["resource"], "resourceType": "Patient",
                                             "id": bob["id"]}
    assert _link(first, "previous") is None and parse_qs(urlsplit(_link(first, "self")).query) == {"_count": ["10"]}
    pages = _walk(client, doctor, url)
    assert [len(page) for page in pages] == [10, 10, 10, 10, 5]
    seen = [key for page in pages for key in page]
    assert len(seen) == len(set(seen)) and set(seen) == bob["ids"]
    whole = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything")
    assert [(e["resource"]["resourceType"], e["resource"]["id"]) for e in whole["entry"]] == seen
    assert whole["total"] == 45 and [link["relation"] for link in whole["link"]] == ["self"]


def test_previous_links_lead_back_page_by_page(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    pages, bundles = [], []
    url = f"/fhir/Patient/{bob['id']}/$everything?_count=20"
    while url is not None:
        bundles.append(_get(client, doctor, url))
        pages.append([e["resource"]["id"] for e in bundles[-1]["entry"]])
        url = _link(bundles[-1], "next")
    assert len(pages) == 3
    back = _get(client, doctor, _link(bundles[2], "previous"))
    assert [e["resource"]["id"] for e in back["entry"]] == pages[1]
    assert [e["resource"]["id"] for e in _get(client, doctor, _link(back, "previous"))["entry"]] == pages[0]
    again = _get(client, doctor, _link(bundles[1], "self"))
    assert [e["resource"]["id"] for e in again["entry"]] == pages[1]
    assert [e["resource"]["id"] for e in _get(client, doctor, _link(bundles[2], "first"))["entry"]] == pages[0]


def test_records_written_between_pages_neither_repeat_nor_skip_an_entry(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    first = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_count=10")
    before = [e["resource"]["id"] for e in first["entry"]]
    # Conditions sort before every type on the first page but the Patient: an offset would repeat two entries.
    added = {create(client, doctor, clinical("Condition", f"Patient/{bob['id']}"))["id"] for _ in range(2)}
    added |= {create(client, doctor, clinical("Procedure", f"Patient/{bob['id']}"))["id"]}
    rest = _walk(client, doctor, _link(first, "next"))
    after = [resource_id for page in rest for _, resource_id in page]
    assert not set(before) & set(after), "an entry of the first page came again"
    assert {resource_id for _, resource_id in bob["ids"]} <= set(before) | set(after), "an entry was skipped"
    assert set(after) - {resource_id for _, resource_id in bob["ids"]} <= added
    assert _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_count=10")["total"] == 48


def test_type_narrows_the_record_to_the_types_asked(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    bundle = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_type=Immunization,Encounter&_count=4")
    expected = {key for key in bob["ids"] if key[0] in ("Immunization", "Encounter")}
    assert bundle["total"] == len(expected) == 8
    pages = _walk(client, doctor, _link(bundle, "self"))
    assert {key for page in pages for key in page} == expected and [len(p) for p in pages] == [4, 4]
    assert "_type=Encounter%2CImmunization" in _link(bundle, "next")
    only = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_type=Patient")
    assert [(e["resource"]["resourceType"], e["resource"]["id"]) for e in only["entry"]] == [("Patient", bob["id"])]


@pytest.mark.parametrize(("start", "end"), [("2016-01-01", "2016-12-31"), ("2019", None), (None, "2013-09"),
                                            ("2013-09-09T01:00:00Z", "2016")])
def test_start_and_end_filter_by_clinical_date_and_keep_the_patient(client, as_user, bob, start, end):
    doctor = as_user("yaodu.doctor")
    asked = "&".join(f"{name}={value}" for name, value in (("start", start), ("end", end)) if value)
    low = moment_range(start)[0] if start else datetime.min.replace(tzinfo=UTC)
    high = moment_range(end)[1] if end else datetime.max.replace(tzinfo=UTC)
    expected = {key for key, when in bob["dated"].items()
                if when is None or low <= datetime.fromisoformat(when) < high}
    assert 1 < len(expected) < 45
    pages = _walk(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?{asked}&_count=7")
    seen = [key for page in pages for key in page]
    assert seen[0] == ("Patient", bob["id"]) and len(seen) == len(set(seen)) and set(seen) == expected


def test_since_takes_what_changed_at_or_after_the_instant(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    later = create(client, doctor, clinical("Condition", f"Patient/{bob['id']}"))
    since = later["meta"]["lastUpdated"]
    newer = create(client, doctor, clinical("Observation", f"Patient/{bob['id']}"))
    bundle = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_since={since.replace('+', '%2B')}")
    assert {e["resource"]["id"] for e in bundle["entry"]} == {later["id"], newer["id"]} and bundle["total"] == 2
    old = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_since=2000-01-01")
    assert old["total"] == 47


@pytest.mark.parametrize(("query", "parameter"), [
    ("_count=0", "_count"), ("_count=000", "_count"), ("_count=-5", "_count"), ("_count=ten", "_count"),
    ("_count=%D9%A3", "_count"), ("_count=1&_count=2", "_count"), ("_count=", "_count"),
    ("_type=Observation,Banana", "_type"), ("_type=", "_type"), ("start=2019-13-01", "start"),
    ("end=yesterday", "end"), ("_since=2026-11-31T00:00:00Z", "_since"), ("start=2019&end=2018", "end"),
    ("start=0099-01-01", "start"), ("start=2019-02-30", "start"), ("_since=2019-01-01T25:00:00Z", "_since"),
    ("end=-2019", "end"), ("_type=%00", "_type"), ("_sort=date", "_sort"), ("_cursor=abc.def&_count=5", "_cursor"),
    ("_cursor=abc.def", "_cursor"),
])
def test_bad_values_are_refused_naming_the_parameter(client, as_user, platform_db, bob, query, parameter):
    request_id = f"everything-bad-{uuid.uuid4().hex}"
    response = client.get(f"/fhir/Patient/{bob['id']}/$everything?{query}",
                          headers={**as_user("yaodu.doctor"), "X-Request-Id": request_id})
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["expression"] == [parameter]
    platform_db.rollback()
    assert platform_db.scalars(select(AuditEvent.action).where(AuditEvent.request_id == request_id)).all() == []


def test_a_count_above_the_maximum_is_capped_and_a_cursor_serves_only_its_query(client, as_user, bob):
    doctor = as_user("yaodu.doctor")
    for asked in ("100000", "0" * 30 + "101", "9" * 5000):
        capped = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_count={asked}")
        assert parse_qs(urlsplit(_link(capped, "self")).query) == {"_count": ["100"]} and len(capped["entry"]) == 45
    page = _get(client, doctor, f"/fhir/Patient/{bob['id']}/$everything?_count=5")
    following = _link(page, "next")
    changed = following.replace("_count=5", "_count=6")
    refused = _get(client, doctor, changed, status=400)
    assert refused["issue"][0]["expression"] == ["_cursor"]
    cursor = parse_qs(urlsplit(following).query)["_cursor"][0]
    other = create(client, doctor, patient(name="李四", id_number=None, phone="13700000000"))
    elsewhere = f"/fhir/Patient/{other['id']}/$everything?_count=5&_cursor={cursor}"
    assert _get(client, doctor, elsewhere, status=400)["issue"][0]["expression"] == ["_cursor"]


def test_paging_across_tenants_follows_the_empi_and_the_callers_access(client, app, as_user, platform_db):
    yaodu, quwo = as_user("yaodu.doctor"), as_user("quwo.doctor")
    here = create(client, yaodu, patient())
    there = create(client, quwo, patient())
    mine = {create(client, yaodu, clinical(kind, f"Patient/{here['id']}"))["id"]
            for kind in ("Observation", "Condition", "Encounter")}
    theirs = {create(client, quwo, clinical(kind, f"Patient/{there['id']}"))["id"]
              for kind in ("Observation", "Immunization")}
    url = f"/fhir/Patient/{there['id']}/$everything?_count=1"
    own_only = {resource_id for page in _walk(client, quwo, url) for _, resource_id in page}
    assert own_only == theirs | {there["id"]}
    person = client.get(f"/api/v1/patients/{there['id']}", headers=quwo).get_json()["master_person_id"]
    quwo_ch = platform_db.scalar(select(Institution.id).where(Institution.code == "QUWO-CH"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, quwo_ch, person, care.CareKind.referral)
    pages = _walk(client, quwo, f"/fhir/Patient/{there['id']}/$everything?_count=2")
    seen = [key for page in pages for key in page]
    assert seen[0] == ("Patient", there["id"]) and seen[1] == ("Patient", here["id"])
    assert {resource_id for _, resource_id in seen} == mine | theirs | {here["id"], there["id"]}
    assert len(seen) == len(set(seen)) == 7
    observations = _get(client, quwo, f"/fhir/Patient/{there['id']}/$everything?_type=Observation")
    assert observations["total"] == 2
    platform_db.rollback()
    events = platform_db.execute(select(AuditEvent.patient, AuditEvent.detail).where(
        AuditEvent.username == "quwo.doctor", AuditEvent.action == "read",
        AuditEvent.resource_id == there["id"], AuditEvent.detail.like("$everything:%"))).all()
    assert len(events) == len(own_only) + len(pages) + 1, "one event per request"
    assert {patient_ref for patient_ref, _ in events} == {f"quwo/{there['id']}"}
    assert "2 matching _type=Observation" in events[-1].detail
    assert client.get(f"/fhir/Patient/{here['id']}/$everything?_count=1",
                      headers=as_user("lfph.specialist")).status_code == 404
