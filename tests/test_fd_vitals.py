"""Vitals: one entry stored as FHIR Observations (LOINC, UCUM) in the team's shard, impossible values refused naming
the field with nothing stored, alarming ones stored and alerted, another team's contract refused, a resident's own
reading marked self-reported, and the team's view of the readings."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.exchange.models import FhirResource
from hie.exchange.resources import validate
from hie.family_doctor import observations
from hie.family_doctor.models import Alert, Vitals
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import Role
from hie.platform.care import CareKind, grant
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.conftest import add_resident, new_patient, shard_engine
from tests.test_fd_teams import add_user, make_team

VITALS = "/api/v1/family-doctor/vitals"
CONTRACTS = "/api/v1/family-doctor/contracts"


def when(hours_ago: float = 1) -> str:
    """A time a little before now, as a device sends it."""
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat(timespec="seconds")


def sign(client, headers, patient_id: str) -> dict:
    """A hypertension contract signed through the API."""
    response = client.post(CONTRACTS, json={"patient_id": patient_id, "packages": ["basic", "hypertension"],
                                            "priority_groups": ["hypertension"]}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def signed_team(client, as_user) -> dict:
    """Team YAODU-T1-A (yaodu.fd leads it) and a resident of 屯里镇 under an active contract with it."""
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    fd = as_user("yaodu.fd")
    resident = new_patient(client, fd, mrn="T1-001")
    return {"fd": fd, "resident": resident, "contract": sign(client, fd, resident["id"])}


@pytest.fixture
def team(client, as_user) -> dict:
    """The signed team of signed_team."""
    return signed_team(client, as_user)


def entry(contract_id: str, client_id: str = "dev1-0001", **readings) -> dict:
    """One entry as a device collects it."""
    return {"client_id": client_id, "contract_id": contract_id, "taken_at": when(), "setting": "home_visit",
            **(readings or {"systolic": 132, "diastolic": 84, "heart_rate": 72})}


def stored(app, platform_db) -> tuple[int, int, int]:
    """Vitals rows, Observations in the yaodu shard, alerts."""
    platform_db.rollback()
    with Session(shard_engine(app, "yaodu")) as shard:
        observations = shard.scalar(select(func.count()).select_from(FhirResource)
                                    .where(FhirResource.resource_type == "Observation"))
    return (platform_db.scalar(select(func.count()).select_from(Vitals)), observations,
            platform_db.scalar(select(func.count()).select_from(Alert)))


def refused_fields(response) -> dict[str, list[str]]:
    """A 422's messages by field."""
    assert response.status_code == 422, response.get_json()
    found: dict[str, list[str]] = {}
    for error in response.get_json()["errors"]:
        found.setdefault(error["field"], []).append(error["message"])
    return found


def observation(client, headers, observation_id: str) -> dict:
    response = client.get(f"/fhir/Observation/{observation_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_an_entry_is_stored_as_observations_with_loinc_and_ucum(client, as_user, team, platform_db, app):
    fd, contract = team["fd"], team["contract"]
    body = entry(contract["id"], systolic=128, diastolic=82, heart_rate=70, fasting_glucose=6.1, weight=68.5,
                 height=160, waist=84, spo2=97, temperature=36.6)
    response = client.post(VITALS, json=body, headers=fd)
    assert response.status_code == 201, response.get_json()
    shown = response.get_json()
    assert shown["bmi"] == 26.8 and shown["setting"] == "home_visit" and shown["self_reported"] is False
    assert shown["contract_id"] == contract["id"] and shown["alerts"] == []
    assert len(shown["observations"]) == 9 and all(o.startswith("yaodu.") for o in shown["observations"])
    found = {}
    for observation_id in shown["observations"]:
        resource = observation(client, fd, observation_id)
        coding = resource["code"]["coding"][0]
        assert coding["system"] == "http://loinc.org"
        assert resource["subject"] == {"reference": f"Patient/{team['resident']['id']}"}
        assert resource["extension"] == [{"url": "urn:hie:extension:family-doctor:setting", "valueCode": "home_visit"}]
        assert resource["performer"][0] == {"type": "Practitioner", "display": "yaodu.fd"}
        assert datetime.fromisoformat(resource["effectiveDateTime"]) == datetime.fromisoformat(body["taken_at"])
        found[coding["code"]] = resource
    panel = found["85354-9"]
    assert "valueQuantity" not in panel and panel["category"][0]["coding"][0]["code"] == "vital-signs"
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"], c["valueQuantity"]["code"],
             c["valueQuantity"]["system"]) for c in panel["component"]] == [
        ("8480-6", 128, "mm[Hg]", "http://unitsofmeasure.org"), ("8462-4", 82, "mm[Hg]", "http://unitsofmeasure.org")]
    units = {code: (r["valueQuantity"]["value"], r["valueQuantity"]["code"]) for code, r in found.items()
             if "valueQuantity" in r}
    assert units == {"8867-4": (70, "/min"), "14771-0": (6.1, "mmol/L"), "29463-7": (68.5, "kg"),
                     "8302-2": (160, "cm"), "39156-5": (26.8, "kg/m2"), "8280-0": (84, "cm"), "2708-6": (97, "%"),
                     "8310-5": (36.6, "Cel")}
    assert [c["code"] for c in found["2708-6"]["code"]["coding"]] == ["2708-6", "59408-5"]
    assert found["14771-0"]["category"][0]["coding"][0]["code"] == "laboratory"
    row = platform_db.scalar(select(Vitals))
    assert (row.systolic, row.diastolic, row.bmi, row.observations) == (128, 82, 26.8, shown["observations"])
    assert row.institution_id == platform_db.scalar(select(Institution.id).where(Institution.code == "YAODU-T1"))
    assert platform_db.scalar(select(AuditEvent).where(AuditEvent.resource_type == "Vitals",
                                                       AuditEvent.action == "create")).outcome == "success"


@pytest.mark.parametrize("self_reported", [False, True])
def test_every_observation_is_as_the_exchanges_validator_leaves_it(self_reported):
    """The batch validates the first Observation of each shape only (vitals._checked): validation must change none."""
    values = {"systolic": 128.0, "diastolic": 82.0, "heart_rate": 70.0, "fasting_glucose": 6.1, "random_glucose": 8.25,
              "weight": 68.5, "height": 160.0, "bmi": 26.8, "waist": 84.0, "spo2": 97.0, "temperature": 36.6}
    reading = {"entry_key": "7/dev-1", "patient_id": "p-1", "taken_at": datetime(2026, 11, 2, 0, 30, 5, tzinfo=UTC),
               "setting": "self_device" if self_reported else "clinic", "self_reported": self_reported,
               "performer": "yaodu.fd", "institution_code": "YAODU-T1", "bmi_note": "computed", **values}
    built = observations.build(reading)
    assert [kind for kind, _ in built] == list(observations.KINDS)
    for _kind, resource in built:
        assert validate(copy.deepcopy(resource), "Observation") == resource


def test_bmi_uses_the_last_height_and_a_random_glucose_its_own_code(client, team, platform_db):
    fd, contract = team["fd"], team["contract"]
    first = client.post(VITALS, json=entry(contract["id"], "a", height=170, weight=70), headers=fd).get_json()
    assert first["bmi"] == 24.2
    later = entry(contract["id"], "b", weight=75, random_glucose=8.2)
    shown = client.post(VITALS, json=later, headers=fd).get_json()
    assert shown["bmi"] == 26.0 and shown["height"] is None
    codes = {observation(client, fd, o)["code"]["coding"][0]["code"] for o in shown["observations"]}
    assert codes == {"29463-7", "39156-5", "15074-8"}


@pytest.mark.parametrize(("readings", "field"), [
    ({"systolic": 120, "diastolic": 130}, "diastolic"),  # diastolic above systolic
    ({"systolic": 120, "diastolic": 120}, "diastolic"),
    ({"systolic": 400, "diastolic": 90}, "systolic"),
    ({"systolic": 30, "diastolic": 20}, "systolic"),
    ({"systolic": 140}, "diastolic"),  # half a blood pressure
    ({"fasting_glucose": 0}, "fasting_glucose"),
    ({"random_glucose": 126}, "random_glucose"),  # mg/dL typed as mmol/L
    ({"spo2": 101}, "spo2"),
    ({"temperature": 98.6}, "temperature"),  # Fahrenheit
    ({"height": 1.7, "weight": 60}, "height"),  # metres
    ({"heart_rate": 0}, "heart_rate"),
    ({"weight": 700}, "weight"),
    ({"height": 250, "weight": 20}, "weight"),  # a BMI of 3.2
])
def test_impossible_values_are_refused_naming_the_field_and_nothing_is_stored(client, team, platform_db, app,
                                                                              readings, field):
    before = stored(app, platform_db)
    response = client.post(VITALS, json=entry(team["contract"]["id"], **readings), headers=team["fd"])
    assert field in refused_fields(response)
    assert stored(app, platform_db) == before
    refusal = platform_db.scalar(select(AuditEvent).where(AuditEvent.resource_type == "Vitals"))
    assert refusal.outcome == "failure" and field in refusal.detail
    assert refusal.patient == f"yaodu/{team['resident']['id']}"


@pytest.mark.parametrize(("taken_at", "message"), [
    ((datetime.now(UTC) + timedelta(hours=1)).isoformat(), "future"),
    ("1899-12-31T08:00:00+08:00", "1900"),
    ("2026-11-01T08:00:00", None),  # no zone: the schema refuses it
])
def test_a_time_in_the_future_before_1900_or_without_zone_is_refused(client, team, platform_db, app, taken_at,
                                                                     message):
    before = stored(app, platform_db)
    body = {**entry(team["contract"]["id"]), "taken_at": taken_at}
    response = client.post(VITALS, json=body, headers=team["fd"])
    errors = refused_fields(response)["taken_at"]
    assert message is None or message in errors[0]
    assert stored(app, platform_db) == before


def test_alarming_values_are_stored_and_alerted(client, team, platform_db, app):
    body = entry(team["contract"]["id"], systolic=186, diastolic=112, heart_rate=72, fasting_glucose=17.2)
    response = client.post(VITALS, json=body, headers=team["fd"])
    assert response.status_code == 201
    shown = response.get_json()
    assert stored(app, platform_db) == (1, 3, 3)
    alerts = platform_db.scalars(select(Alert).order_by(Alert.id)).all()
    assert [a.message.split(" (")[0] for a in alerts] == [
        "systolic 186 >= 180", "diastolic 112 >= 110", "fasting_glucose 17.2 >= 16.7"]
    assert {(a.kind, a.vitals_id, a.contract_id, a.team_id is not None, a.master_person_id) for a in alerts} == {
        ("reading", shown["id"], team["contract"]["id"], True, team["resident"]["master_person_id"])}
    assert shown["alerts"] == [a.message for a in alerts]


def test_the_same_client_id_twice_is_stored_once(client, team, platform_db, app):
    body = entry(team["contract"]["id"])
    first = client.post(VITALS, json=body, headers=team["fd"])
    again = client.post(VITALS, json=body, headers=team["fd"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert stored(app, platform_db) == (1, 2, 0)


def test_another_teams_contract_is_refused_and_audited(app, client, as_user, team, platform_db):
    add_user(app, "t1.other", Role.family_doctor, "YAODU-T1")
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-B", "YAODU-T1", {"t1.other": "lead_doctor"})
    other = as_user("t1.other")
    neighbour = new_patient(client, other, mrn="T1-002", name="李建国", id_number=None, phone="13935700000")
    theirs = sign(client, other, neighbour["id"])
    before = stored(app, platform_db)
    for contract_id in (theirs["id"], "no-such-contract"):
        response = client.post(VITALS, json=entry(contract_id), headers=team["fd"])
        assert refused_fields(response) == {"contract_id": ["is not an active contract of your team"]}
    assert stored(app, platform_db) == before
    events = platform_db.execute(select(AuditEvent.outcome, AuditEvent.patient).where(
        AuditEvent.resource_type == "Vitals").order_by(AuditEvent.seq)).all()
    assert events == [("denied", f"yaodu/{neighbour['id']}"), ("not_found", None)]
    # a clinician serving in no team may not record at all
    assert client.post(VITALS, json=entry(team["contract"]["id"]), headers=as_user("yaodu.doctor")).status_code == 403


def test_an_ended_contract_takes_no_more_readings(client, team, platform_db, app):
    contract_id = team["contract"]["id"]
    ended = client.post(f"{CONTRACTS}/{contract_id}/terminate", json={"reason": "moved away"}, headers=team["fd"])
    assert ended.status_code == 200, ended.get_json()
    response = client.post(VITALS, json=entry(contract_id), headers=team["fd"])
    assert "contract_id" in refused_fields(response)
    assert stored(app, platform_db) == (0, 0, 0)


def test_readings_show_in_fhir_search_and_everything_for_a_cared_institution(app, client, as_user, team,
                                                                            platform_db):
    shown = client.post(VITALS, json=entry(team["contract"]["id"]), headers=team["fd"]).get_json()
    patient_id = team["resident"]["id"]
    bundle = client.get(f"/fhir/Observation?patient={patient_id}", headers=team["fd"]).get_json()
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == sorted(shown["observations"])
    specialist = as_user("lfph.specialist")
    assert client.get(f"/fhir/Patient/{patient_id}/$everything", headers=specialist).status_code == 404
    with session_scope(app.extensions["hie.engines"].platform) as session:
        lfph = session.scalar(select(Institution.id).where(Institution.code == "LF-PH"))
        grant(session, lfph, team["resident"]["master_person_id"], CareKind.referral, source_ref="test")
    everything = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=specialist)
    assert everything.status_code == 200, everything.get_json()
    ids = {e["resource"]["id"] for e in everything.get_json()["entry"] if e["resource"]["resourceType"] ==
           "Observation"}
    assert ids == set(shown["observations"])


def test_a_residents_own_reading_is_marked_self_reported_and_joins_their_contract(app, client, as_user, team,
                                                                                 platform_db):
    add_resident(app, "YAODU-T1", team["resident"]["id"])
    me = as_user("resident.wang")
    body = {"client_id": "phone-1", "taken_at": when(), "systolic": 182, "diastolic": 95, "heart_rate": 80}
    response = client.post("/api/v1/me/vitals", json=body, headers=me)
    assert response.status_code == 201, response.get_json()
    shown = response.get_json()
    assert shown["self_reported"] is True and shown["setting"] == "self_device"
    assert shown["contract_id"] == team["contract"]["id"] and len(shown["alerts"]) == 1
    resource = observation(client, team["fd"], shown["observations"][0])
    assert resource["meta"]["tag"][0]["code"] == "self-reported"
    assert resource["performer"] == [{"reference": f"Patient/{team['resident']['id']}"}]
    assert resource["extension"][0]["valueCode"] == "self_device"
    alert = platform_db.scalar(select(Alert))
    assert alert.team_id is not None and "self-reported" in alert.message
    # a resident names no contract, and staff may not use the resident's route
    assert client.post("/api/v1/me/vitals", json={**body, "client_id": "phone-2", "contract_id": "x"},
                       headers=me).status_code == 422
    assert client.post("/api/v1/me/vitals", json=body, headers=team["fd"]).status_code == 403
    assert client.post(VITALS, json=entry(team["contract"]["id"]), headers=me).status_code == 403


def test_the_teams_view_of_a_contracts_readings(client, as_user, team, platform_db):
    fd, contract_id = team["fd"], team["contract"]["id"]
    for index, hours in enumerate((50, 30, 10, 2)):
        body = {**entry(contract_id, f"r{index}"), "taken_at": when(hours)}
        assert client.post(VITALS, json=body, headers=fd).status_code == 201
    url = f"{CONTRACTS}/{contract_id}/vitals"
    everything = client.get(url, headers=fd)
    assert everything.status_code == 200
    assert [r["client_id"] for r in everything.get_json()] == ["r3", "r2", "r1", "r0"]
    window = client.get(url, query_string={"since": when(40), "until": when(5), "page_size": 1}, headers=fd)
    assert [r["client_id"] for r in window.get_json()] == ["r2"]
    assert '"total": 2' in window.headers["X-Pagination"]
    assert client.get(url, headers=as_user("quwo.doctor")).status_code == 404
    assert client.get(f"{CONTRACTS}/nothing/vitals", headers=fd).status_code == 404


def test_a_resident_without_a_contract_records_on_their_own_record(app, client, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    record = new_patient(client, doctor, mrn="CH-7")
    add_resident(app, "YAODU-CH", record["id"])
    body = {"client_id": "phone-1", "taken_at": when(), "fasting_glucose": 5.4}
    response = client.post("/api/v1/me/vitals", json=body, headers=as_user("resident.wang"))
    assert response.status_code == 201, response.get_json()
    shown = response.get_json()
    assert shown["contract_id"] is None and shown["patient_id"] == record["id"] and shown["self_reported"] is True
    row = platform_db.scalar(select(Vitals))
    assert row.institution_id == platform_db.scalar(select(Institution.id).where(Institution.code == "YAODU-CH"))
    resource = observation(client, doctor, shown["observations"][0])
    assert resource["code"]["coding"][0]["code"] == "14771-0" and resource["meta"]["tag"][0]["code"] == "self-reported"
    impossible = client.post("/api/v1/me/vitals", json={**body, "client_id": "phone-2", "fasting_glucose": 0},
                             headers=as_user("resident.wang"))
    assert "fasting_glucose" in refused_fields(impossible)
    assert stored(app, platform_db) == (1, 1, 0)
