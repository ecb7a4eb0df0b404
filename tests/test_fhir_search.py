"""FHIR search: parameters, date prefixes, paging, _include, and totals that count only what the caller may see."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from hie.exchange.models import FhirResource, FhirResourceVersion, FhirToken, RecordLocation
from hie.exchange.outcome import FhirError
from hie.exchange.search_params import parse
from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.db import session_scope, utcnow
from hie.tenants.models import Institution
from tests.conftest import TENANTS, add_resident, login, new_patient, shard_engine

LOINC = "http://loinc.org"
GLUCOSE, HBA1C, HEART_RATE = "2345-7", "4548-4", "8867-4"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture
def fhir(client, app: Flask) -> Iterator[None]:
    """No FHIR rows or registry entries left over from an earlier test."""
    for code in TENANTS:
        with session_scope(shard_engine(app, code)) as shard:
            for model in (FhirToken, FhirResourceVersion, FhirResource):
                shard.execute(delete(model))
    with session_scope(app.extensions["hie.engines"].platform) as platform:
        platform.execute(delete(RecordLocation))
    yield


def _post(client, headers, resource: dict) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _observation(client, headers, patient_id: str, code: str = GLUCOSE, when: str = "2024-03-05T08:00:00Z",
                 **extra: object) -> dict:
    body = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient_id}"},
            "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": 5.4, "unit": "mmol/L"}}
    body.update(extra)
    return _post(client, headers, body)


def _search(client, headers, query: str, status: int = 200) -> dict:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _link(bundle: dict, relation: str) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)


def _institution_id(platform_db: Session, code: str) -> int:
    return platform_db.scalar(select(Institution.id).where(Institution.code == code))


@pytest.fixture
def wang(client, as_user, fhir) -> dict:
    """A patient of 尧都区人民医院 with four observations over 2023-2024."""
    patient = new_patient(client, as_user("yaodu.doctor"))
    doctor = as_user("yaodu.doctor")
    _observation(client, doctor, patient["id"], GLUCOSE, "2023-12-31T10:30:00Z")
    _observation(client, doctor, patient["id"], GLUCOSE, "2024-03-05T08:00:00Z")
    _observation(client, doctor, patient["id"], HBA1C, "2024-03-20T09:00:00Z")
    _observation(client, doctor, patient["id"], HEART_RATE, "2024-07-01T10:00:00+08:00", status="preliminary",
                 category=[{"coding": [{"system": LAB, "code": "vital-signs"}]}])
    return patient


def test_search_by_patient_and_code(client, as_user, wang):
    doctor = as_user("yaodu.doctor")
    bundle = _search(client, doctor, f"Observation?patient={wang['id']}&code={LOINC}|{GLUCOSE}")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 2 and len(bundle["entry"]) == 2
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"http://localhost/fhir/Observation/{entry['resource']['id']}"
    assert entry["resource"]["meta"]["versionId"] == "1"
    assert _search(client, doctor, f"Observation?subject=Patient/{wang['id']}")["total"] == 4
    assert _search(client, doctor, f"Observation?patient={wang['id']}&code={GLUCOSE},{HBA1C}")["total"] == 3
    assert _search(client, doctor, f"Observation?patient={wang['id']}&code=|{GLUCOSE}")["total"] == 0
    assert _search(client, doctor, f"Observation?patient={wang['id']}&code={LOINC}|")["total"] == 4
    assert _search(client, doctor, f"Observation?code=http://snomed.info/sct|{GLUCOSE}")["total"] == 0
    assert _search(client, doctor, "Observation?category=vital-signs")["total"] == 1
    assert _search(client, doctor, f"Observation?category={LAB}|laboratory&status=final")["total"] == 3
    assert _search(client, doctor, "Observation?status=preliminary,amended")["total"] == 1
    assert _search(client, doctor, f"Observation?code={GLUCOSE}&code={HBA1C}")["total"] == 0


def test_identifier_forms(client, as_user, fhir):
    doctor = as_user("yaodu.doctor")
    patient = new_patient(client, doctor)
    for system, value in (("urn:lab:accession", "A-1"), (None, "A-2"), ("urn:lab:other", "A-1")):
        identifier = {"value": value} | ({"system": system} if system else {})
        _observation(client, doctor, patient["id"], identifier=[identifier])
    assert _search(client, doctor, "Observation?identifier=urn:lab:accession|A-1")["total"] == 1
    assert _search(client, doctor, "Observation?identifier=A-1")["total"] == 2
    assert _search(client, doctor, "Observation?identifier=|A-2")["total"] == 1
    assert _search(client, doctor, "Observation?identifier=|A-1")["total"] == 0


@pytest.mark.parametrize(("query", "expected"), [
    ("date=2024", 3), ("date=eq2024-03", 2), ("date=2024-03-05", 1), ("date=2024-03-05T08:00:00Z", 1),
    ("date=2024-03-05T08:00:01Z", 0), ("date=ne2024-03", 2), ("date=gt2024-03", 1), ("date=ge2024-03", 3),
    ("date=lt2024-03", 1), ("date=le2024-03", 3), ("date=lt2024-01-01T00:00:00Z", 1),
    ("date=ge2024-03-01&date=lt2024-04", 2), ("date=ge2024-07-01T02:00:00Z", 1), ("date=le2023", 1),
    ("date=2024-07-01T10:00:00%2B08:00", 1),
])
def test_date_prefixes_at_the_precision_given(client, as_user, wang, query, expected):
    bundle = _search(client, as_user("yaodu.doctor"), f"Observation?patient={wang['id']}&{query}")
    assert bundle["total"] == expected


def test_last_updated_and_sort(client, as_user, wang):
    doctor = as_user("yaodu.doctor")
    assert _search(client, doctor, "Observation?_lastUpdated=gt2000-01-01")["total"] == 4
    assert _search(client, doctor, "Observation?_lastUpdated=lt2000-01-01")["total"] == 0
    ascending = _search(client, doctor, f"Observation?patient={wang['id']}&_sort=date")
    dates = [e["resource"]["effectiveDateTime"] for e in ascending["entry"]]
    assert dates[0].startswith("2023-12-31") and dates[-1].startswith("2024-07-01")
    descending = _search(client, doctor, f"Observation?patient={wang['id']}&_sort=-date")
    assert _ids(descending) == _ids(ascending)[::-1]
    newest = _search(client, doctor, "Observation?_sort=-_lastUpdated")
    assert _ids(newest) == _ids(_search(client, doctor, "Observation?_sort=_lastUpdated"))[::-1]


def test_paging_follows_next_and_keeps_the_total(client, as_user, wang):
    doctor = as_user("yaodu.doctor")
    for day in range(1, 8):
        _observation(client, doctor, wang["id"], GLUCOSE, f"2024-05-{day:02d}T08:00:00Z")
    url = f"/fhir/Observation?patient={wang['id']}&_count=3&_sort=date"
    seen, pages = [], 0
    while url:
        bundle = _search(client, doctor, url.removeprefix("http://localhost/fhir/").removeprefix("/fhir/"))
        assert bundle["total"] == 11
        seen += _ids(bundle)
        pages += 1
        assert len(_ids(bundle)) <= 3
        url = _link(bundle, "next")
    assert pages == 4 and len(seen) == len(set(seen)) == 11
    assert _link(bundle, "next") is None and "_cursor" in dict(parse_qsl(urlsplit(_link(bundle, "self")).query))
    first = dict(parse_qsl(urlsplit(_link(bundle, "first")).query))
    assert first == {"patient": wang["id"], "_count": "3", "_sort": "date"}


def test_include_subject_and_results(client, as_user, wang):
    doctor = as_user("yaodu.doctor")
    bundle = _search(client, doctor, f"Observation?code={GLUCOSE}&_include=Observation:subject")
    assert bundle["total"] == 2 and len(_ids(bundle)) == 2
    assert _ids(bundle, "include") == [wang["id"]]
    patient = next(e for e in bundle["entry"] if e["search"]["mode"] == "include")
    assert patient["resource"]["resourceType"] == "Patient" and patient["fullUrl"].endswith(f"/Patient/{wang['id']}")
    observations = _ids(_search(client, doctor, f"Observation?patient={wang['id']}&code={GLUCOSE}"))
    report = _post(client, doctor, {
        "resourceType": "DiagnosticReport", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "24323-8"}]},
        "subject": {"reference": f"Patient/{wang['id']}"}, "effectiveDateTime": "2024-03-05",
        "result": [{"reference": f"Observation/{i}"} for i in observations]})
    bundle = _search(client, doctor, f"DiagnosticReport?patient={wang['id']}&_include=DiagnosticReport:result"
                                     "&_include=DiagnosticReport:subject:Patient")
    assert _ids(bundle) == [report["id"]]
    assert sorted(_ids(bundle, "include")) == sorted([*observations, wang["id"]])
    assert bundle["total"] == 1


@pytest.mark.parametrize(("query", "code"), [
    ("Observation?date=2024-13", "invalid"), ("Observation?date=xx2024", "invalid"),
    ("Observation?date=sa2024", "not-supported"), ("Observation?date=2024-02-30", "invalid"),
    ("Observation?_count=-1", "invalid"), ("Observation?_cursor=abc", "invalid"), ("Observation?_count=a", "invalid"),
    ("Observation?_offset=-1", "invalid"), ("Observation?_sort=foo", "invalid"), ("Observation?_sort=", "invalid"),
    ("Observation?_include=Observation:performer", "not-supported"),
    ("Observation?_include=Encounter:subject", "not-supported"), ("Observation?foo=1", "invalid"),
    ("Observation?code:missing=true", "not-supported"), ("Observation?code=", "invalid"),
    ("Observation?code=a,,b", "invalid"), ("Observation?identifier=|", "invalid"),
    ("Observation?subject=Group/1", "not-supported"), ("Observation?patient=a&patient=b", "not-supported"),
    ("Immunization?subject=x", "invalid"), ("Patient?date=2024", "invalid"),
    ("Observation?_count=5&_count=6", "invalid"),
])
def test_malformed_parameters_are_400_naming_the_parameter(client, as_user, fhir, query, code):
    outcome = _search(client, as_user("yaodu.doctor"), query, 400)
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == code and issue["expression"]


def test_audit_events_are_not_searchable_here(client, as_user, fhir):
    outcome = _search(client, as_user("yaodu.doctor"), "AuditEvent?patient=x", 405)
    assert outcome["issue"][0]["code"] == "not-supported"


def test_parser_reads_every_form():
    params = parse("Observation", MultiDict([("subject", "Patient/p1"), ("code", "s|c,d"), ("date", "ge2024-02"),
                                             ("_count", "7"), ("_sort", "date")]))
    assert params.patient == "p1" and params.count == 7 and params.cursor is None
    assert params.sort.name == "date" and params.sort.kind == "date" and not params.sort.descending
    (token,) = params.tokens
    assert [(t.system, t.code, t.any_system) for t in token.alternatives] == [("s", "c", False), (None, "d", True)]
    (date,) = params.dates
    assert (date.prefix, date.low.isoformat(), date.high.isoformat()) == (
        "ge", "2024-02-01T00:00:00+08:00", "2024-03-01T00:00:00+08:00")
    december = parse("Observation", MultiDict([("date", "2024-12")])).dates[0]
    assert december.high.isoformat() == "2025-01-01T00:00:00+08:00"
    with pytest.raises(FhirError) as caught:
        parse("Observation", MultiDict([("_include", "Observation:*")]))
    assert caught.value.status == 400 and caught.value.expression == ["_include"]


def test_total_counts_only_what_the_caller_may_see(client, app, as_user, platform_db, wang):
    fd, quwo = as_user("yaodu.fd"), as_user("quwo.doctor")
    assert _search(client, fd, f"Observation?code={GLUCOSE}")["total"] == 0
    assert _search(client, fd, f"Observation?patient={wang['id']}", 404)["issue"][0]["code"] == "not-found"
    assert _search(client, quwo, f"Observation?patient={wang['id']}", 404)["issue"][0]["code"] == "not-found"
    assert _search(client, quwo, f"Observation?code={GLUCOSE}")["total"] == 0
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "YAODU-T1"), wang["master_person_id"],
                   care.CareKind.contract)
    bundle = _search(client, fd, f"Observation?patient={wang['id']}&_include=Observation:subject")
    assert bundle["total"] == 4 and len(_ids(bundle)) == 4 and _ids(bundle, "include") == [wang["id"]]
    assert _search(client, fd, f"Observation?code={GLUCOSE}")["total"] == 2
    assert _search(client, quwo, f"Observation?patient={wang['id']}", 404)


def test_own_record_of_the_same_person_does_not_reveal_the_others(client, app, as_user, platform_db, wang):
    fd = as_user("yaodu.fd")
    own = new_patient(client, fd, mrn="T1-9")
    assert own["master_person_id"] == wang["master_person_id"]
    _observation(client, fd, own["id"], GLUCOSE, "2024-08-01T08:00:00Z")
    bundle = _search(client, fd, f"Observation?patient={own['id']}")
    assert bundle["total"] == 1 and len(bundle["entry"]) == 1
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "YAODU-T1"), wang["master_person_id"],
                   care.CareKind.referral)
    assert _search(client, fd, f"Observation?patient={own['id']}")["total"] == 5


def test_patient_search_reaches_every_shard_of_the_person(client, app, as_user, platform_db, wang):
    quwo_doctor = as_user("quwo.doctor")
    quwo = new_patient(client, quwo_doctor, mrn="Q-1", address="曲沃县史村镇")
    assert quwo["master_person_id"] == wang["master_person_id"]
    for day in (2, 4, 6):
        _observation(client, quwo_doctor, quwo["id"], GLUCOSE, f"2024-03-{day:02d}T08:00:00Z")
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "QUWO-CH"), wang["master_person_id"],
                   care.CareKind.referral)
    url: str | None = f"Observation?patient={quwo['id']}&code={GLUCOSE}&_sort=date&_count=2"
    seen, dates = [], {}
    while url:
        page = _search(client, quwo_doctor, url.removeprefix("http://localhost/fhir/"))
        assert page["total"] == 5
        seen += _ids(page)
        dates.update({e["resource"]["id"]: e["resource"]["effectiveDateTime"] for e in page["entry"]})
        url = _link(page, "next")
    assert len(seen) == len(set(seen)) == 5
    assert [dates[i][:10] for i in seen] == ["2023-12-31", "2024-03-02", "2024-03-04", "2024-03-05", "2024-03-06"]
    assert {i.split(".")[0] for i in seen} == {"yaodu", "quwo"}
    assert _search(client, as_user("yaodu.doctor"), f"Observation?patient={wang['id']}")["total"] == 4


def test_search_is_audited_with_a_read_per_returned_record(client, as_user, platform_db, wang):
    bundle = _search(client, as_user("yaodu.doctor"), f"Observation?patient={wang['id']}&code={GLUCOSE}"
                                                      "&_include=Observation:subject")
    events = platform_db.execute(
        select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.patient, AuditEvent.purpose, AuditEvent.detail)
        .where(AuditEvent.username == "yaodu.doctor", AuditEvent.action.in_(["search", "read"]))
        .order_by(AuditEvent.seq)).all()
    search = events[-4]
    assert search.action == "search" and search.patient == f"yaodu/{wang['id']}"
    assert GLUCOSE not in (search.detail or "") and "code" in search.detail
    reads = events[-3:]
    assert {r.resource_id for r in reads} == {e["resource"]["id"] for e in bundle["entry"]}
    assert {(r.action, r.patient, r.purpose) for r in reads} == {("read", f"yaodu/{wang['id']}", "own_institution")}


def test_included_resources_must_be_visible_too(client, app, as_user, platform_db, wang):
    fd = as_user("yaodu.fd")
    with session_scope(app.extensions["hie.engines"].platform) as session:
        relationship_id = care.grant(session, _institution_id(platform_db, "YAODU-T1"), wang["master_person_id"],
                                     care.CareKind.referral).id
    observations = _ids(_search(client, fd, f"Observation?patient={wang['id']}&code={GLUCOSE}"))
    report = _post(client, fd, {
        "resourceType": "DiagnosticReport", "status": "final", "code": {"coding": [{"system": LOINC, "code": "1"}]},
        "subject": {"reference": f"Patient/{wang['id']}"}, "effectiveDateTime": "2024-03-06",
        "result": [{"reference": f"Observation/{i}"} for i in observations]})
    query = "DiagnosticReport?_include=DiagnosticReport:result&_include=DiagnosticReport:subject"
    assert len(_ids(_search(client, fd, query), "include")) == 3
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.end(session, session.get(care.CareRelationship, relationship_id), utcnow() - timedelta(seconds=1))
    bundle = _search(client, fd, query)
    assert bundle["total"] == 1 and _ids(bundle) == [report["id"]] and _ids(bundle, "include") == []


def test_resident_finds_only_their_own_records(client, app, as_user, platform_db, wang):
    other = new_patient(client, as_user("yaodu.doctor"), mrn="MRN-2", name="李四", sex="M", birth_date="1990-01-01",
                        id_number=None, phone="13700000000", address=None)
    _observation(client, as_user("yaodu.doctor"), other["id"])
    add_resident(app, "YAODU-CH", wang["id"])
    headers = login(client, "resident.wang")
    assert _search(client, headers, f"Observation?code={GLUCOSE}")["total"] == 2
    assert _search(client, headers, f"Observation?patient={wang['id']}")["total"] == 4
    assert _search(client, headers, f"Observation?patient={other['id']}", 404)
    purposes = platform_db.scalars(select(AuditEvent.purpose).where(
        AuditEvent.username == "resident.wang", AuditEvent.action == "read", AuditEvent.outcome == "success")).all()
    assert purposes and set(purposes) == {"self"}
