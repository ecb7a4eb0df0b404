"""The CapabilityStatement tells the truth: every type, interaction, search parameter, include, operation and flag it
declares is exercised by a real request from a caller allowed to use it, and a few standard things it does not declare
are refused (a server that quietly supports more than it says is wrong too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from hie.exchange.literal_json import dumps, loads
from hie.exchange.search_params import MAX_COUNT
from tests.conftest import new_patient
from tests.fhir_helpers import clinical, patient
from tests.test_fhir_as_sent import OFFICIAL, about

FHIR_JSON = {"Content-Type": "application/fhir+json"}
LENIENT = {"Prefer": "handling=lenient"}
CLIENT_ID = "yaodu.YAODU-CH.truth-"
ALL_INTERACTIONS = ("create", "read", "vread", "update", "patch", "history-instance", "history-type", "search-type",
                    "delete")  # in this order: the writes work on the record create made
# Standard R4 search parameters (search-parameters.json of the specification) beyond what the exchange indexes today;
# any of them that the statement does not declare must be ignored by a lenient search, not quietly applied.
STANDARD: dict[str, tuple[str, ...]] = {
    "Patient": ("address", "address-city", "email", "telecom", "death-date", "deceased", "general-practitioner",
                "organization", "link", "language"),
    "Observation": ("value-quantity", "value-string", "value-date", "performer", "based-on", "focus", "specimen",
                    "device"),
    "Condition": ("asserter", "onset-age", "abatement-string", "evidence-detail"),
    "Encounter": ("participant", "practitioner", "location", "service-provider", "reason-reference", "length",
                  "episode-of-care"),
    "DiagnosticReport": ("performer", "specimen", "results-interpreter", "based-on", "media"),
    "MedicationRequest": ("requester", "medication", "intended-performer", "intended-dispenser"),
    "Procedure": ("performer", "location", "based-on", "reason-reference"),
    "AllergyIntolerance": ("asserter", "recorder"),
    "Immunization": ("performer", "location", "manufacturer", "lot-number", "reaction"),
    "DocumentReference": ("author", "custodian", "relatesto", "description", "authenticator"),
    "ImagingStudy": ("performer", "interpreter", "endpoint", "referrer"),
}
COMMON = ("_tag", "_profile", "_security", "_text", "_content", "_list")


def _statement(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    return loads(response.data)


def _resources(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in statement["rest"][0]["resource"]}


def _example(resource_type: str, patient_id: str) -> dict[str, Any]:
    """The first official R4B example of the type pointed at our patient; a minimal record where the specification
    publishes none that fits (tests/data/fhir_examples/README.md)."""
    path = next((p for p in OFFICIAL if p.name.startswith(f"{resource_type}-")), None)
    if path is None:
        return clinical(resource_type, f"Patient/{patient_id}")
    resource = about(loads(path.read_text(encoding="utf-8")), patient_id)
    resource.pop("id", None)
    return resource


def _post(client: FlaskClient, headers: dict[str, str], resource: dict[str, Any], **extra: str) -> Any:
    return client.post(f"/fhir/{resource['resourceType']}", data=dumps(resource),
                       headers={**headers, **FHIR_JSON, **extra})


def _put(client: FlaskClient, headers: dict[str, str], url: str, resource: dict[str, Any], **extra: str) -> Any:
    return client.put(f"/fhir/{url}", data=dumps(resource), headers={**headers, **FHIR_JSON, **extra})


def _targets(resources: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(source type, reference parameter) -> a type it references, as the targets' searchRevInclude declare."""
    return {(source, param): target for target, entry in resources.items()
            for source, param, *_ in (r.split(":") for r in entry.get("searchRevInclude", []))}


def _value(kind: str, name: str, patient_id: str, target: str | None) -> str:
    """A value of the declared type that any server taking the parameter must parse."""
    if name in ("patient", "subject"):
        return f"Patient/{patient_id}"
    if kind == "reference":
        return f"{target}/x" if target else "x"
    return {"token": "completed" if name not in ("_id", "phone") else "13935712345",
            "reference": "x", "date": "ge2020-01-01", "string": "abc", "number": "ge1",
            "quantity": "ge1", "uri": "http://example.org", "composite": "x$y"}[kind]


def _ignored(bundle: dict[str, Any]) -> set[str]:
    """The parameters a lenient search says it ignored."""
    return {issue["expression"][0] for entry in bundle.get("entry", []) if entry["search"]["mode"] == "outcome"
            for issue in entry["resource"]["issue"]}


@pytest.fixture
def records(client: FlaskClient, as_user: Callable[[str], dict[str, str]]) -> dict[str, str]:
    """A patient of the doctor's institution (sent over FHIR) and one official example of every declared type."""
    doctor = as_user("yaodu.doctor")
    sent = _post(client, doctor, patient())
    assert sent.status_code == 201, sent.get_json()
    patient_id = sent.get_json()["id"]
    ids = {"Patient": patient_id}
    for resource_type in _resources(_statement(client)):
        if resource_type in STANDARD and resource_type != "Patient":
            stored = _post(client, doctor, _example(resource_type, patient_id))
            assert stored.status_code == 201, (resource_type, stored.get_json())
            ids[resource_type] = stored.get_json()["id"]
    return ids


def test_every_declared_search_parameter_is_taken_and_no_undeclared_one_is(client, as_user, records) -> None:
    doctor, statement = as_user("yaodu.doctor"), _statement(client)
    resources = _resources(statement)
    targets = _targets(resources)
    for resource_type, entry in resources.items():
        declared = {param["name"]: param["type"] for param in entry.get("searchParam", [])}
        caller = as_user("yaodu.fd") if resource_type in ("ServiceRequest", "Task") else doctor
        for name, kind in declared.items():
            response = client.get(f"/fhir/{resource_type}", query_string={name: _value(
                kind, name, records["Patient"], targets.get((resource_type, name)))},
                                  headers=caller)
            assert response.status_code == 200, (resource_type, name, response.get_json())
            assert loads(response.data)["type"] == "searchset"
        if "search-type" not in {i["code"] for i in entry.get("interaction", [])}:
            continue
        undeclared = [name for name in (*STANDARD.get(resource_type, ()), *COMMON) if name not in declared]
        for name in undeclared:
            strict = client.get(f"/fhir/{resource_type}", query_string={name: "x"}, headers=caller)
            assert strict.status_code == 400, (resource_type, name, strict.status_code)
            assert strict.get_json()["issue"][0]["expression"][0].removeprefix(f"{resource_type}.") == name
        response = client.get(f"/fhir/{resource_type}", query_string=dict.fromkeys(undeclared, "x"),
                              headers={**caller, **LENIENT})
        if resource_type in records:
            assert response.status_code == 200, (resource_type, response.get_json())
            assert _ignored(loads(response.data)) == set(undeclared), resource_type
        else:  # the statement says searches served by a module are strict whatever Prefer says
            strict_only = statement["rest"][0]["documentation"].split("Searches of ")[1].split(" refuse unknown")[0]
            assert resource_type in strict_only.split(", "), resource_type
            assert response.status_code == 400, resource_type


def test_declared_includes_and_revincludes_are_taken_and_others_refused(client, as_user, records) -> None:
    doctor = as_user("yaodu.doctor")
    resources = _resources(_statement(client))
    for resource_type, entry in resources.items():
        for include in entry.get("searchInclude", []):
            response = client.get(f"/fhir/{resource_type}", query_string={"_include": include}, headers=doctor)
            assert response.status_code == 200, (include, response.get_json())
        for revinclude in entry.get("searchRevInclude", []):
            response = client.get(f"/fhir/{resource_type}", query_string={"_id": records[resource_type],
                                                                          "_revinclude": revinclude}, headers=doctor)
            assert response.status_code == 200, (revinclude, response.get_json())
            source = revinclude.split(":")[0]
            assert revinclude.split(":")[1] in {p["name"] for p in resources[source]["searchParam"]}, revinclude
    assert "Observation:performer" not in resources["Observation"].get("searchInclude", [])
    refused = client.get("/fhir/Observation", query_string={"_include": "Observation:performer"}, headers=doctor)
    assert refused.status_code == 400 and refused.get_json()["issue"][0]["expression"] == ["_include"]


def _exercise(client: FlaskClient, headers: dict[str, str], resource_type: str, code: str, ids: dict[str, str],
              patient_id: str) -> Any:
    """One real request per interaction; a write-side interaction works on a record of its own."""
    if code == "create":
        response = _post(client, headers, _example(resource_type, patient_id) if resource_type != "Patient"
                         else patient(name="创建", id_number=None, phone="13700000001"))
        ids["created"] = response.get_json().get("id", "") if response.status_code == 201 else ""
        return response
    target = ids.get("created") or ids[resource_type]
    if code == "read":
        return client.get(f"/fhir/{resource_type}/{ids[resource_type]}", headers=headers)
    if code == "vread":
        return client.get(f"/fhir/{resource_type}/{ids[resource_type]}/_history/1", headers=headers)
    if code == "update":
        current = loads(client.get(f"/fhir/{resource_type}/{target}", headers=headers).data)
        current.setdefault("meta", {})["tag"] = [{"system": "urn:hie:test", "code": "updated"}]
        return _put(client, headers, f"{resource_type}/{target}", current)
    if code == "patch":
        return client.patch(f"/fhir/{resource_type}/{target}", headers={**headers, "Content-Type":
                            "application/json-patch+json"}, data='[{"op": "remove", "path": "/meta/tag"}]')
    if code == "delete":
        return client.delete(f"/fhir/{resource_type}/{target}", headers=headers)
    if code == "history-instance":
        return client.get(f"/fhir/{resource_type}/{ids[resource_type]}/_history", headers=headers)
    if code == "history-type":
        return client.get(f"/fhir/{resource_type}/_history", headers=headers)
    return client.get(f"/fhir/{resource_type}", headers=headers)


SUCCESS = {"create": 201, "read": 200, "vread": 200, "update": 200, "patch": 200, "delete": 204,
           "history-instance": 200, "history-type": 200, "search-type": 200}


def test_every_declared_interaction_answers_and_undeclared_ones_are_refused(client, as_user, records) -> None:
    doctor = as_user("yaodu.doctor")
    for resource_type, entry in _resources(_statement(client)).items():
        if resource_type not in records:
            continue
        declared = [i["code"] for i in entry.get("interaction", [])]
        ids = dict(records)
        for code in ALL_INTERACTIONS:
            response = _exercise(client, doctor, resource_type, code, ids, records["Patient"])
            if code in declared:
                assert response.status_code == SUCCESS[code], (resource_type, code, response.get_data(as_text=True))
            else:
                assert response.status_code in (403, 404, 405), (resource_type, code, response.status_code)
                assert response.status_code != 404 or b"No FHIR interaction" in response.data
        if "delete" in declared:
            assert client.get(f"/fhir/{resource_type}/{ids['created']}", headers=doctor).status_code == 410


def test_types_served_by_other_routes_answer_where_declared(client, as_user, records) -> None:
    """AuditEvent (read, by an auditor) and the referral module's ServiceRequest and Task (read and search)."""
    fd = as_user("yaodu.fd")
    registered = new_patient(client, fd, mrn="TRUTH-1", name="孙七", id_number=None, phone="13700000010")
    referral = client.post("/api/v1/referrals", headers=fd, json={
        "patient_id": registered["id"], "direction": "up", "receiving_institution": "LF-PH", "reason": "会诊"})
    assert referral.status_code == 201, referral.get_json()
    seq = client.get("/api/v1/audit?action=create", headers=as_user("auditor")).get_json()[0]["seq"]
    callers = {"AuditEvent": as_user("auditor"), "ServiceRequest": fd, "Task": fd}
    for resource_type, entry in _resources(_statement(client)).items():
        if resource_type in records or resource_type == "Group":
            continue
        headers = callers[resource_type]
        declared = {i["code"] for i in entry["interaction"]}
        if "search-type" in declared:
            found = client.get(f"/fhir/{resource_type}", headers=headers)
            assert found.status_code == 200, found.get_json()
            ids = [e["resource"]["id"] for e in loads(found.data)["entry"] if e["search"]["mode"] == "match"]
        else:
            ids = [str(seq)]
        assert ids, resource_type
        assert "read" in declared
        assert client.get(f"/fhir/{resource_type}/{ids[0]}", headers=headers).status_code == 200
        for code, method in (("update", "put"), ("delete", "delete"), ("create", "post")):
            path = f"/fhir/{resource_type}" + ("" if code == "create" else f"/{ids[0]}")
            response = getattr(client, method)(path, headers={**headers, **FHIR_JSON}, data=dumps({}))
            assert code in declared or response.status_code in (403, 404, 405), (resource_type, code)


def test_declared_flags_hold(client, as_user, records) -> None:
    """conditionalCreate/Read/Update/Delete, updateCreate and versioned-update, as each type declares them."""
    doctor = as_user("yaodu.doctor")
    for resource_type, entry in _resources(_statement(client)).items():
        if resource_type not in records:
            continue
        stored = loads(client.get(f"/fhir/{resource_type}/{records[resource_type]}", headers=doctor).data)
        by_id = f"_id={records[resource_type]}"
        if entry.get("conditionalCreate"):
            again = _post(client, doctor, stored, **{"If-None-Exist": by_id})
            assert again.status_code == 200 and again.get_json()["id"] == records[resource_type], resource_type
        if entry.get("conditionalRead") == "full-support":
            etag = client.get(f"/fhir/{resource_type}/{records[resource_type]}", headers=doctor).headers["ETag"]
            unchanged = client.get(f"/fhir/{resource_type}/{records[resource_type]}",
                                   headers={**doctor, "If-None-Match": etag})
            assert unchanged.status_code == 304, resource_type
        if entry.get("versioning") == "versioned-update":
            stale = _put(client, doctor, f"{resource_type}/{records[resource_type]}", stored,
                         **{"If-Match": 'W/"999"'})
            assert stale.status_code == 412, (resource_type, stale.get_json())
        if entry.get("conditionalUpdate"):
            updated = _put(client, doctor, f"{resource_type}?{by_id}", stored)
            assert updated.status_code == 200, (resource_type, updated.get_json())
        fresh = _example(resource_type, records["Patient"]) if resource_type != "Patient" else patient(
            name="客户端", id_number=None, phone="13700000002")
        at_client_id = _put(client, doctor, f"{resource_type}/{CLIENT_ID}{resource_type}", fresh)
        assert at_client_id.status_code == (201 if entry.get("updateCreate") else 404), (resource_type,
                                                                                          at_client_id.get_json())
        deleted = client.delete(f"/fhir/{resource_type}?_id={records[resource_type]}", headers=doctor)
        if entry.get("conditionalDelete", "not-supported") == "not-supported":
            assert deleted.status_code in (403, 405), (resource_type, deleted.status_code)
        else:
            assert deleted.status_code == 204, (resource_type, deleted.get_json())


def _everything(client: FlaskClient, headers: dict[str, str], records: dict[str, str]) -> Any:
    return client.get(f"/fhir/Patient/{records['Patient']}/$everything", headers=headers)


def _match(client: FlaskClient, headers: dict[str, str], records: dict[str, str]) -> Any:
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()}]}
    return client.post("/fhir/Patient/$match", data=dumps(body), headers={**headers, **FHIR_JSON})


def _prior(client: FlaskClient, headers: dict[str, str], records: dict[str, str]) -> Any:
    return client.get(f"/fhir/Patient/{records['Patient']}/$prior-results?code=http://loinc.org|8480-6",
                      headers=headers)


def _export(path: str) -> Callable[[FlaskClient, dict[str, str], dict[str, str]], Any]:
    def kick_off(client: FlaskClient, headers: dict[str, str], records: dict[str, str]) -> Any:
        response = client.get(path, headers={**headers, "Accept": "application/fhir+json", "Prefer": "respond-async"})
        if response.status_code == 202:  # cancelled at once: a user has at most a few exports running
            status_url = response.headers["Content-Location"].split("/fhir/", 1)[1]
            assert client.delete(f"/fhir/{status_url}", headers=headers).status_code in (202, 204)
        return response
    return kick_off


BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
OPERATIONS: dict[str, tuple[Callable[[FlaskClient, dict[str, str], dict[str, str]], Any], int]] = {
    "http://hl7.org/fhir/OperationDefinition/Patient-everything": (_everything, 200),
    "http://hl7.org/fhir/OperationDefinition/Patient-match": (_match, 200),
    "urn:hie:OperationDefinition:Patient-prior-results": (_prior, 200),
    BULK + "export": (_export("/fhir/$export"), 202),
    BULK + "patient-export": (_export("/fhir/Patient/$export"), 202),
    BULK + "group-export": (_export("/fhir/Group/institution-YAODU-CH/$export"), 202),
}


def test_every_declared_operation_exists_and_answers(client, as_user, records) -> None:
    statement = _statement(client)
    declared = [*statement["rest"][0].get("operation", []),
                *(op for entry in statement["rest"][0]["resource"] for op in entry.get("operation", []))]
    assert declared
    for operation in declared:
        assert operation["definition"] in OPERATIONS, f"declared operation nobody checks: {operation}"
        call, status = OPERATIONS[operation["definition"]]
        response = call(client, as_user("yaodu.doctor"), records)
        assert response.status_code == status, (operation["name"], response.get_data(as_text=True))


def test_system_interactions_and_limits_hold(client, as_user, records) -> None:
    doctor = as_user("yaodu.doctor")
    rest = _statement(client)["rest"][0]
    declared = {i["code"] for i in rest.get("interaction", [])}
    for kind in ("transaction", "batch"):
        entry = {"request": {"method": "POST", "url": "Observation"},
                 "resource": clinical("Observation", f"Patient/{records['Patient']}")}
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [entry]}
        response = client.post("/fhir", data=dumps(bundle), headers={**doctor, **FHIR_JSON})
        assert response.status_code == (200 if kind in declared else 400), (kind, response.get_json())
    history = client.get("/fhir/_history", headers=doctor)
    assert "history-system" in declared or history.status_code in (404, 405)
    search_all = client.get("/fhir?_id=x", headers=doctor)
    assert "search-system" in declared or search_all.status_code in (404, 405)
    assert f"a page holds at most {MAX_COUNT}" in rest["documentation"]
    for n in range(MAX_COUNT + 1):
        _post(client, doctor, clinical("Observation", f"Patient/{records['Patient']}", when=f"2026-0{1 + n % 9}-01"))
    capped = loads(client.get(f"/fhir/Observation?_count={MAX_COUNT + 50}", headers=doctor).data)
    assert len(capped["entry"]) == MAX_COUNT and f"_count={MAX_COUNT}" in capped["link"][0]["url"]
