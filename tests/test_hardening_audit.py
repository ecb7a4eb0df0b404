"""Hardening: every refusal is one audit event naming the patient, the EMPI discloses no one's registrations
across tenants, MRN namespaces belong to their institution, and a care relationship never writes."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text

from hie.empi import queries
from hie.empi.models import PersonRecord
from hie.exchange.models import FhirResource
from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.conftest import new_patient, shard_engine
from tests.fhir_helpers import ID_WANG, clinical, create, patient


def _count(app, tenant: str, table: str) -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()


def _events(platform_db, request_id: str) -> list[AuditEvent]:
    platform_db.rollback()
    return list(platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id)
                                    .order_by(AuditEvent.seq)))


def _send(client, method: str, url: str, headers: dict, body: object = None):
    """The response and the request id its audit events carry."""
    request_id = f"hard-{uuid.uuid4().hex}"
    response = client.open(url, method=method, json=body, headers={**headers, "X-Request-Id": request_id})
    return response, request_id


def _refusal(platform_db, request_id: str) -> AuditEvent:
    """The one refusal event of a request."""
    events = _events(platform_db, request_id)
    refusals = [e for e in events if e.outcome in ("denied", "not_found", "failure")]
    assert len(refusals) == 1, [(e.action, e.outcome, e.patient) for e in events]
    return refusals[0]


def _grant(app, platform_db, institution_code: str, person_id: str) -> None:
    institution_id = platform_db.scalar(select(Institution.id).where(Institution.code == institution_code))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, institution_id, person_id, care.CareKind.referral)


@pytest.fixture
def yaodu(client, as_user):
    """A yaodu FHIR Patient with an Observation, and its master person."""
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    observation = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    person = client.get(f"/api/v1/patients/{subject['id']}", headers=doctor).get_json()["master_person_id"]
    return {"patient": subject, "observation": observation, "person": person, "ref": f"yaodu/{subject['id']}"}


# --- Finding 1: refused FHIR requests on another tenant's patient name the patient ---

def test_refused_fhir_requests_on_another_tenants_patient_each_name_the_patient(client, as_user, platform_db,
                                                                                 yaodu):
    quwo, pid, oid = as_user("quwo.doctor"), yaodu["patient"]["id"], yaodu["observation"]["id"]
    attempts = [
        ("GET", f"/fhir/Patient/{pid}", None, "read"),
        ("GET", f"/fhir/Patient/{pid}/_history/1", None, "read"),
        ("GET", f"/fhir/Observation/{oid}", None, "read"),
        ("GET", f"/fhir/Observation/{oid}/_history/1", None, "read"),
        ("GET", f"/fhir/Observation?patient={pid}", None, "search"),
        ("GET", f"/fhir/Condition?subject=Patient/{pid}", None, "search"),
        ("GET", f"/fhir/Patient/{pid}/$everything", None, "read"),
        ("GET", f"/fhir/Patient/{pid}/$prior-results?code=8480-6", None, "read"),
        ("PUT", f"/fhir/Patient/{pid}", {**yaodu["patient"], "gender": "male"}, "update"),
        ("PUT", f"/fhir/Observation/{oid}", {**yaodu["observation"], "status": "cancelled"}, "update"),
    ]
    for method, url, body, action in attempts:
        response, request_id = _send(client, method, url, quwo, body)
        assert response.status_code == 404, (url, response.get_json())
        event = _refusal(platform_db, request_id)
        assert (event.action, event.outcome, event.patient, event.username) == \
            (action, "denied", yaodu["ref"], "quwo.doctor"), url
        if "Observation/" in url:
            assert event.resource_id == oid
    rest, _ = _send(client, "GET", f"/api/v1/patients/{pid}", quwo)
    assert rest.status_code == 404
    found = client.get(f"/api/v1/audit?patient={pid}&user=quwo.doctor&page_size=100",
                       headers=as_user("auditor")).get_json()
    assert len(found) == len(attempts) + 1
    assert {e["outcome"] for e in found} <= {"denied", "not_found"}
    unchanged = client.get(f"/fhir/Observation/{oid}", headers=as_user("yaodu.doctor")).get_json()
    assert unchanged["status"] == "final" and unchanged["meta"]["versionId"] == "1"


def test_refused_read_of_an_unknown_patient_id_is_found_by_the_bare_id(client, as_user, platform_db):
    missing = str(uuid.uuid4())
    response, request_id = _send(client, "GET", f"/fhir/Patient/{missing}", as_user("quwo.doctor"))
    assert response.status_code == 404
    event = _refusal(platform_db, request_id)
    assert (event.outcome, event.patient) == ("not_found", f"quwo/{missing}")
    everything, request_id = _send(client, "GET", f"/fhir/Patient/{missing}/$everything", as_user("quwo.doctor"))
    assert everything.status_code == 404 and _refusal(platform_db, request_id).patient == f"quwo/{missing}"
    found = client.get(f"/api/v1/audit?patient={missing}", headers=as_user("auditor")).get_json()
    assert [e["outcome"] for e in found] == ["not_found", "not_found"]


# --- Finding 1: writes refused for what they reference, and Bundle entries refused for their method ---

def test_write_referencing_another_tenants_patient_or_record_is_audited(client, app, as_user, platform_db, yaodu):
    quwo = as_user("quwo.doctor")
    own = create(client, quwo, patient(name="赵六", id_number=None, phone="13600000000"))
    before = _count(app, "quwo", "fhir_resources")
    cases = [
        (clinical("Observation", f"Patient/{yaodu['patient']['id']}"), "Observation.subject", "Patient",
         yaodu["patient"]["id"]),
        ({**clinical("DiagnosticReport", f"Patient/{own['id']}"),
          "result": [{"reference": f"Observation/{yaodu['observation']['id']}"}]}, "DiagnosticReport.result[0]",
         "Observation", yaodu["observation"]["id"]),
        ({**clinical("Observation", f"Patient/{own['id']}"),
          "focus": [{"reference": f"Patient/{yaodu['patient']['id']}"}]}, "Observation.focus[0]", "Patient",
         yaodu["patient"]["id"]),
    ]
    for resource, expression, kind, target in cases:
        response, request_id = _send(client, "POST", f"/fhir/{resource['resourceType']}", quwo, resource)
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["issue"][0]["expression"] == [expression]
        event = _refusal(platform_db, request_id)
        assert (event.action, event.outcome, event.patient, event.resource_type, event.resource_id) == \
            ("create", "denied", yaodu["ref"], kind, target)
        assert expression in event.detail
    assert _count(app, "quwo", "fhir_resources") == before
    unknown = {**clinical("Observation", f"Patient/{own['id']}"), "focus": [{"reference": "Patient/nobody-here"}]}
    response, request_id = _send(client, "POST", "/fhir/Observation", quwo, unknown)
    assert response.status_code == 422
    assert (_refusal(platform_db, request_id).outcome, _refusal(platform_db, request_id).patient) == \
        ("not_found", "quwo/nobody-here")


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_bundle_entries_refused_for_their_method_are_audited(client, app, as_user, platform_db, yaodu, kind):
    pid, oid = yaodu["patient"]["id"], yaodu["observation"]["id"]
    for method, url in (("DELETE", f"Patient/{pid}"), ("GET", f"Observation/{oid}"),
                        ("GET", f"Observation?patient={pid}"), ("PATCH", f"Observation/{oid}")):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": method, "url": url}}]}
        response, request_id = _send(client, "POST", "/fhir", as_user("quwo.doctor"), bundle)
        status = response.status_code if kind == "transaction" else \
            int(response.get_json()["entry"][0]["response"]["status"])
        assert status == (405 if method == "DELETE" else 400), response.get_json()  # a Patient is never deleted
        event = _refusal(platform_db, request_id)
        assert (event.outcome, event.patient) == ("denied", yaodu["ref"]), (method, url)
        assert event.action == {"DELETE": "delete", "GET": "read", "PATCH": "update"}[method]
        assert ("a Patient is not deleted" if method == "DELETE" else "method") in event.detail
    assert client.get(f"/fhir/Patient/{pid}", headers=as_user("yaodu.doctor")).status_code == 200
    assert _count(app, "yaodu", "fhir_resources") == 2


# --- Finding 1: PDQ and $match record the query (sealed) and the persons returned ---

def test_pdq_and_match_audit_the_sealed_query_and_the_persons(client, app, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    wang = new_patient(client, doctor)
    response, request_id = _send(client, "GET", f"/api/v1/empi/persons?id_number={ID_WANG}&name=王秀英", doctor)
    assert response.status_code == 200 and response.get_json()[0]["master_person_id"] == wang["master_person_id"]
    event = _events(platform_db, request_id)[0]
    assert event.action == "search" and event.resource_type == "MasterPerson"
    assert "fields=id_number,name" in event.detail and f"shown={wang['master_person_id']}" in event.detail
    assert ID_WANG not in event.detail and "王秀英" not in event.detail
    with app.app_context():
        ring = app.extensions["hie.keyring"]
        assert queries.open_query(ring, request_id, "search", event.detail) == {"id_number": ID_WANG,
                                                                                  "name": "王秀英"}
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()}]}
    matched, request_id = _send(client, "POST", "/fhir/Patient/$match", as_user("quwo.doctor"), body)
    assert matched.status_code == 200
    event = _events(platform_db, request_id)[0]
    assert event.action == "match" and f"counted={wang['master_person_id']}" in event.detail
    assert "shown= " in event.detail and ID_WANG not in event.detail and "13935712345" not in event.detail
    with app.app_context():
        asked = queries.open_query(app.extensions["hie.keyring"], request_id, "match", event.detail)
    assert asked["id_number"] == ID_WANG and asked["phone"] == "13935712345"


# --- Finding 2: PDQ, $match and PIX show only the records the caller may read ---

def test_pdq_match_and_xref_show_other_tenants_holdings_only_as_a_count(client, app, as_user, platform_db):
    wang = new_patient(client, as_user("yaodu.doctor"), mrn="Y-SECRET-1")
    quwo_own = new_patient(client, as_user("quwo.doctor"), mrn="Q-1", address="曲沃县史村镇")
    person = wang["master_person_id"]
    assert quwo_own["master_person_id"] == person
    stranger = as_user("lfph.specialist")
    pdq = client.get(f"/api/v1/empi/persons?id_number={ID_WANG}", headers=stranger)
    assert pdq.status_code == 200
    assert [(m["master_person_id"], m["identifiers"], m["other_records"]) for m in pdq.get_json()] == \
        [(None, [], 2)]
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()}]}
    match = client.post("/fhir/Patient/$match", json=body, headers=stranger)
    assert match.status_code == 200 and match.get_json()["total"] == 0
    assert [e["search"]["mode"] for e in match.get_json()["entry"]] == ["outcome"]
    for text_ in (pdq.get_data(as_text=True), match.get_data(as_text=True)):
        for secret in (person, "YAODU", "QUWO", "yaodu", "quwo", "Y-SECRET-1", "Q-1"):
            assert secret not in text_, (secret, text_)
    quwo = as_user("quwo.doctor")
    mine = client.get(f"/api/v1/empi/persons?id_number={ID_WANG}", headers=quwo).get_json()
    assert [(m["master_person_id"], m["identifiers"], m["other_records"]) for m in mine] == \
        [(person, [{"institution_code": "QUWO-CH", "tenant_code": "quwo", "local_id": "Q-1"}], 1)]
    xref = client.get("/api/v1/empi/xref?local_id=Q-1", headers=quwo).get_json()
    assert (xref["identifiers"], xref["other_records"]) == ([{"institution_code": "QUWO-CH", "tenant_code": "quwo",
                                                              "local_id": "Q-1"}], 1)
    matched = client.post("/fhir/Patient/$match", json=body, headers=quwo).get_json()
    resource = matched["entry"][0]["resource"]
    assert resource["id"] == quwo_own["id"]
    assert resource["identifier"][0] == {"system": "urn:hie:mrn:QUWO-CH", "value": "Q-1"}
    assert matched["entry"][0]["search"]["extension"][1] == {"url": "urn:hie:extension:other-records",
                                                              "valueInteger": 1}
    assert "Y-SECRET-1" not in str(matched)
    _grant(app, platform_db, "LF-PH", person)
    cared = client.get(f"/api/v1/empi/persons?id_number={ID_WANG}", headers=stranger).get_json()
    assert (cared[0]["master_person_id"], len(cared[0]["identifiers"]), cared[0]["other_records"]) == (person, 2, 0)
    steward = client.get(f"/api/v1/empi/persons?id_number={ID_WANG}", headers=as_user("steward")).get_json()
    assert {i["local_id"] for i in steward[0]["identifiers"]} == {"Y-SECRET-1", "Q-1"}
    platform_db.rollback()
    purposes = platform_db.execute(select(AuditEvent.username, AuditEvent.purpose).where(
        AuditEvent.action == "search", AuditEvent.resource_type == "MasterPerson")).all()
    assert {(username, purpose) for username, purpose in purposes} == {
        ("lfph.specialist", "treatment"), ("quwo.doctor", "treatment"), ("steward", "stewardship")}


# --- Finding 3: an MRN of another institution's namespace is refused ---

@pytest.mark.parametrize("username", ["yaodu.nurse", "yaodu.doctor"])
def test_patient_with_another_institutions_mrn_namespace_is_refused(client, app, as_user, platform_db, username):
    headers = as_user(username)
    resource = {**patient(), "identifier": [{"system": "urn:hie:id:CN-RIC", "value": ID_WANG},
                                            {"system": "urn:hie:mrn:QUWO-CH", "value": "Q-STOLEN"}]}
    response, request_id = _send(client, "POST", "/fhir/Patient", headers, resource)
    assert response.status_code == 422, response.get_json()
    issue = response.get_json()["issue"][0]
    assert response.get_json()["resourceType"] == "OperationOutcome" and issue["expression"] == \
        ["Patient.identifier[1]"]
    assert (_count(app, "yaodu", "fhir_resources"), _count(app, "yaodu", "patients")) == (0, 0)
    assert platform_db.scalar(select(func.count()).select_from(PersonRecord)) == 0
    event = _refusal(platform_db, request_id)
    assert (event.action, event.outcome, event.resource_type) == ("create", "denied", "Patient")
    assert "Patient.identifier[1]" in event.detail and "Q-STOLEN" not in event.detail
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": resource, "request": {"method": "POST", "url": "Patient"}}]}
    refused, _ = _send(client, "POST", "/fhir", headers, bundle)
    assert refused.status_code == 422
    assert refused.get_json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.identifier[1]"]
    own = {**patient(), "identifier": [{"system": "urn:hie:mrn:YAODU-CH", "value": "Y-OWN"}]}
    assert client.post("/fhir/Patient", json=own, headers=headers).status_code == 201


# --- Finding 4: PDQ by phone alone ---

def test_pdq_by_phone_alone_finds_the_exact_match(client, as_user):
    doctor = as_user("yaodu.doctor")
    wang = new_patient(client, doctor)
    new_patient(client, doctor, mrn="MRN-2", name="李四", id_number=None, phone="13700000000",
                birth_date="1970-01-01", sex="M", address=None)
    found = client.get("/api/v1/empi/persons?phone=13935712345", headers=doctor)
    assert found.status_code == 200
    assert [(m["master_person_id"], m["grade"]) for m in found.get_json()] == \
        [(wang["master_person_id"], "possible")]
    wrong_name = client.get("/api/v1/empi/persons?phone=13935712345&name=赵六", headers=doctor).get_json()
    assert wrong_name == []


# --- Finding 5: a care relationship never writes over FHIR; break-glass reads are flagged ---

@pytest.mark.parametrize("username", ["yaodu.fd", "lfph.specialist"])
def test_care_relationship_never_writes_over_fhir(client, app, as_user, platform_db, yaodu, username):
    _grant(app, platform_db, {"yaodu.fd": "YAODU-T1", "lfph.specialist": "LF-PH"}[username], yaodu["person"])
    headers, oid = as_user(username), yaodu["observation"]["id"]
    assert client.get(f"/fhir/Observation/{oid}", headers=headers).status_code == 200
    changed = {**yaodu["observation"], "status": "entered-in-error"}
    response, request_id = _send(client, "PUT", f"/fhir/Observation/{oid}", headers, changed)
    assert response.status_code == 404, response.get_json()
    event = _refusal(platform_db, request_id)
    assert (event.action, event.outcome, event.patient, event.resource_id) == ("update", "denied", yaodu["ref"], oid)
    for kind in ("transaction", "batch"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": changed, "request": {"method": "PUT", "url": f"Observation/{oid}"}}]}
        response, request_id = _send(client, "POST", "/fhir", headers, bundle)
        status = response.status_code if kind == "transaction" else \
            int(response.get_json()["entry"][0]["response"]["status"])
        assert status == 404, response.get_json()
        assert _refusal(platform_db, request_id).patient == yaodu["ref"]
    with shard_engine(app, "yaodu").connect() as conn:
        assert conn.execute(select(FhirResource.version).where(FhirResource.id == oid)).scalar() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM fhir_resource_versions WHERE id = :id"),
                            {"id": oid}).scalar() == 1
    stored = client.get(f"/fhir/Observation/{oid}", headers=as_user("yaodu.doctor")).get_json()
    assert stored["status"] == "final" and stored["meta"]["versionId"] == "1"


def test_fhir_break_glass_read_is_flagged_with_purpose_and_reason(client, as_user, platform_db, yaodu):
    reason = "unconscious patient brought to the emergency room"
    headers = {**as_user("lfph.specialist"), "X-Break-Glass-Reason": reason}
    for url in (f"/fhir/Patient/{yaodu['patient']['id']}", f"/fhir/Observation/{yaodu['observation']['id']}",
                f"/fhir/Observation/{yaodu['observation']['id']}/_history/1"):
        response, request_id = _send(client, "GET", url, headers)
        assert response.status_code == 200, response.get_json()
        [event] = _events(platform_db, request_id)
        assert (event.outcome, event.break_glass, event.purpose, event.detail, event.patient) == \
            ("success", True, "break_glass", reason, yaodu["ref"]), url
    plain, request_id = _send(client, "GET", f"/fhir/Patient/{yaodu['patient']['id']}", as_user("lfph.specialist"))
    assert plain.status_code == 404
    assert _refusal(platform_db, request_id).break_glass is False
