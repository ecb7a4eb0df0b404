"""Family-doctor contracts over the API: sign, renew, terminate, transfer, expire; refusals; and the care relationship
a contract opens for its team across tenants, and closes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from hie.family_doctor import services
from hie.family_doctor.models import Contract, ContractStatus, FollowUp, FollowUpStatus
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import Role
from hie.platform.care import CareRelationship
from hie.platform.db import utcnow
from tests.conftest import new_patient
from tests.fhir_helpers import clinical, create
from tests.test_fd_teams import _hie, add_institution, add_user, make_team

CONTRACTS = "/api/v1/family-doctor/contracts"


@pytest.fixture
def team(client, as_user) -> dict:
    """Team YAODU-T1-A of 屯里镇卫生院 (yaodu.fd leads it) and a resident registered there."""
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"},
              areas=["141002100"])
    fd = as_user("yaodu.fd")
    return {"fd": fd, "resident": new_patient(client, fd, mrn="T1-001")}


@pytest.fixture
def quwo_team(app, client, as_user, team) -> dict:
    """Team QUWO-T1-A of a township centre in another tenant, which has registered the same person."""
    add_institution(app, "QUWO-T1", "quwo", "township_health_centre", "史村镇卫生院")
    add_user(app, "quwo.fd", Role.family_doctor, "QUWO-T1")
    make_team(client, as_user("quwo.admin"), "QUWO-T1-A", "QUWO-T1", {"quwo.fd": "lead_doctor"})
    fd = as_user("quwo.fd")
    record = new_patient(client, fd, mrn="QT1-001", address="山西省临汾市曲沃县史村镇")
    assert record["master_person_id"] == team["resident"]["master_person_id"]
    return {"fd": fd, "record": record}


@pytest.fixture
def other_team(app, client, as_user) -> dict:
    """A team of another township centre of the same tenant."""
    add_institution(app, "YAODU-T2", "yaodu", "township_health_centre", "县底镇卫生院")
    add_user(app, "t2.fd", Role.family_doctor, "YAODU-T2")
    make_team(client, as_user("yaodu.admin"), "YAODU-T2-A", "YAODU-T2", {"t2.fd": "lead_doctor"})
    return as_user("t2.fd")


def _sign(client, headers, patient_id: str, status: int = 201, **changes) -> dict:
    body = {"patient_id": patient_id, "packages": ["basic", "hypertension"], "priority_groups": ["hypertension"],
            **changes}
    response = client.post(CONTRACTS, json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _move(client, headers, contract_id: str, action: str, body: dict | None = None, status: int = 200) -> dict:
    response = client.post(f"{CONTRACTS}/{contract_id}/{action}", json=body or {}, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _snapshot(platform_db) -> tuple:
    platform_db.rollback()
    contracts = platform_db.execute(select(Contract.id, Contract.status, Contract.active_person_id, Contract.ends_on,
                                           Contract.ended_at, Contract.packages).order_by(Contract.signed_at)).all()
    care = platform_db.execute(select(CareRelationship.institution_id, CareRelationship.ends_at)
                               .order_by(CareRelationship.id)).all()
    follow_ups = platform_db.execute(select(FollowUp.status, func.count()).group_by(FollowUp.status)
                                     .order_by(FollowUp.status)).all()
    return contracts, care, follow_ups


def _relationships(platform_db, contract_id: str) -> list:
    platform_db.rollback()
    return platform_db.execute(select(CareRelationship.institution_id, CareRelationship.kind, CareRelationship.ends_at)
                               .where(CareRelationship.source_ref == f"contract/{contract_id}")).all()


def test_sign_renew_and_terminate_through_the_api(client, team, platform_db):
    fd, resident = team["fd"], team["resident"]
    today = services.local_today()
    signed = _sign(client, fd, resident["id"], region_code="141002100")
    assert (signed["team"], signed["institution"], signed["patient_id"], signed["patient_tenant_code"],
            signed["master_person_id"], signed["packages"], signed["priority_groups"], signed["status"],
            signed["region_code"], signed["signed_by"], signed["previous_id"], signed["next_id"]) == (
        "YAODU-T1-A", "YAODU-T1", resident["id"], "yaodu", resident["master_person_id"], ["basic", "hypertension"],
        ["hypertension"], "active", "141002100", "yaodu.fd", None, None)
    assert (signed["starts_on"], signed["ends_on"]) == (today.isoformat(), (today + timedelta(days=364)).isoformat())
    (relationship,) = _relationships(platform_db, signed["id"])
    assert relationship.kind == "contract" and relationship.ends_at == services.day_end(today + timedelta(days=364))
    assert platform_db.scalar(select(func.count()).select_from(FollowUp).where(
        FollowUp.contract_id == signed["id"], FollowUp.status == FollowUpStatus.scheduled)) >= 1
    assert client.get(f"{CONTRACTS}/{signed['id']}", headers=fd).get_json() == signed

    renewed = _move(client, fd, signed["id"], "renew", {"term_days": 730, "packages": ["basic"]}, status=201)
    assert (renewed["previous_id"], renewed["status"], renewed["packages"], renewed["priority_groups"],
            renewed["starts_on"], renewed["ends_on"]) == (
        signed["id"], "active", ["basic"], ["hypertension"], (today + timedelta(days=365)).isoformat(),
        (today + timedelta(days=365 + 729)).isoformat())
    old = client.get(f"{CONTRACTS}/{signed['id']}", headers=fd).get_json()
    assert (old["status"], old["next_id"], old["ended_by"]) == ("renewed", renewed["id"], "yaodu.fd")
    assert [r.ends_at <= utcnow() for r in _relationships(platform_db, signed["id"])] == [True]
    assert len(_relationships(platform_db, renewed["id"])) == 1

    ended = _move(client, fd, renewed["id"], "terminate", {"reason": "居民迁居外省"})
    assert (ended["status"], ended["end_reason"], ended["ended_by"]) == ("terminated", "居民迁居外省", "yaodu.fd")
    platform_db.rollback()
    assert platform_db.get(Contract, renewed["id"]).active_person_id is None
    assert platform_db.scalar(select(func.count()).select_from(FollowUp).where(
        FollowUp.status == FollowUpStatus.scheduled)) == 0
    listed = client.get(CONTRACTS, headers=fd)
    assert [c["id"] for c in listed.get_json()] == [renewed["id"], signed["id"]]
    assert '"total": 2' in listed.headers["X-Pagination"]
    platform_db.rollback()
    events = platform_db.execute(select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.patient).where(
        AuditEvent.resource_type == "Contract", AuditEvent.action != "search").order_by(AuditEvent.seq)).all()
    patient = f"yaodu/{resident['id']}"
    assert events == [("create", signed["id"], patient), ("read", signed["id"], patient),
                      ("update", signed["id"], patient), ("create", renewed["id"], patient),
                      ("read", signed["id"], patient), ("update", renewed["id"], patient),
                      ("read", renewed["id"], patient), ("read", signed["id"], patient)]


def test_list_filters_and_paging(client, as_user, team):
    fd = team["fd"]
    first = _sign(client, fd, team["resident"]["id"], term_days=20)
    second_patient = new_patient(client, fd, mrn="T1-002", name="李建国", sex="M", birth_date="1950-06-01",
                                 id_number=None, phone="13900000002", address="屯里镇西关村3号")
    second = _sign(client, fd, second_patient["id"], packages=["elderly", "diabetes"],
                   priority_groups=["elderly_65", "diabetes"])
    ids = lambda query: [c["id"] for c in client.get(f"{CONTRACTS}?{query}", headers=fd).get_json()]  # noqa: E731
    assert ids("") == [second["id"], first["id"]]
    assert ids("package=hypertension") == [first["id"]]
    assert ids("package=diabetes") == [second["id"]]
    assert ids("priority_group=elderly_65") == [second["id"]]
    assert ids("priority_group=children_0_6") == []
    assert ids("expiring_within_days=30") == [first["id"]]
    assert ids("status=terminated") == []
    page = client.get(f"{CONTRACTS}?page=2&page_size=1", headers=fd)
    assert [c["id"] for c in page.get_json()] == [first["id"]] and '"total": 2' in page.headers["X-Pagination"]
    for query, field in (("status=lost", "status"), ("package=gold", "package"),
                         ("priority_group=vip", "priority_group"), ("expiring_within_days=-1", "expiring_within_days")):
        response = client.get(f"{CONTRACTS}?{query}", headers=fd)
        assert response.status_code == 422 and response.get_json()["errors"][0]["field"] == field, query


def test_one_active_contract_per_person(client, team, quwo_team, platform_db):
    signed = _sign(client, team["fd"], team["resident"]["id"])
    before = _snapshot(platform_db)
    again = _sign(client, team["fd"], team["resident"]["id"], status=409)
    assert signed["ends_on"] in again["detail"]
    elsewhere = _sign(client, quwo_team["fd"], quwo_team["record"]["id"], status=409)  # the same person, in quwo
    assert "already holds an active contract" in elsewhere["detail"]
    assert _snapshot(platform_db) == before
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Contract",
                                                           AuditEvent.outcome == "failure")).all()
    assert [e.patient for e in refused] == [f"yaodu/{team['resident']['id']}", f"quwo/{quwo_team['record']['id']}"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"packages": ["basic", "gold"]}, "packages[1]"),
    ({"packages": []}, "packages"),
    ({"packages": "basic"}, "packages"),
    ({"priority_groups": ["vip"]}, "priority_groups[0]"),
    ({"term_days": 0}, "term_days"),
    ({"term_days": 1096}, "term_days"),
    ({"term_days": "365"}, "term_days"),
    ({"starts_on": "2020-01-01"}, "starts_on"),
    ({"starts_on": "2999-01-01"}, "starts_on"),
    ({"region_code": "141021"}, "region_code"),  # not an area the team serves
    ({"region_code": "141002999"}, "region_code"),  # not a region
    ({"patient_id": "00000000-0000-0000-0000-000000000000"}, "patient_id"),
])
def test_bad_terms_are_refused_naming_the_field_and_nothing_is_stored(client, team, platform_db, changes, field):
    before = _snapshot(platform_db)
    refused = _sign(client, team["fd"], changes.pop("patient_id", team["resident"]["id"]), status=422, **changes)
    assert [e["field"] for e in refused["errors"]] == [field]
    assert _snapshot(platform_db) == before == ([], [], [])


def test_a_record_of_another_institution_cannot_be_signed(client, as_user, team, platform_db):
    hospital = new_patient(client, as_user("yaodu.doctor"), mrn="CH-001")
    refused = _sign(client, team["fd"], hospital["id"], status=422)
    assert refused["errors"][0]["field"] == "patient_id"
    assert _snapshot(platform_db) == ([], [], [])
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Patient")
                                .order_by(AuditEvent.seq.desc())).first()
    assert (event.outcome, event.patient) == ("denied", f"yaodu/{hospital['id']}")


def test_renewal_with_bad_terms_changes_nothing(client, team, platform_db):
    signed = _sign(client, team["fd"], team["resident"]["id"])
    before = _snapshot(platform_db)
    for body, field in (({"packages": ["gold"]}, "packages[0]"), ({"priority_groups": ["vip"]}, "priority_groups[0]"),
                        ({"term_days": 5000}, "term_days")):
        refused = _move(client, team["fd"], signed["id"], "renew", body, status=422)
        assert refused["errors"][0]["field"] == field
        assert _snapshot(platform_db) == before


def test_transfer_to_a_team_in_another_tenant(client, team, quwo_team, platform_db):
    signed = _sign(client, team["fd"], team["resident"]["id"])
    moved = _move(client, team["fd"], signed["id"], "transfer", {"team": "QUWO-T1-A", "reason": "随子女迁居曲沃"},
                  status=201)
    assert (moved["team"], moved["institution"], moved["patient_tenant_code"], moved["patient_id"],
            moved["packages"], moved["previous_id"], moved["status"]) == (
        "QUWO-T1-A", "QUWO-T1", "quwo", quwo_team["record"]["id"], ["basic", "hypertension"], signed["id"], "active")
    old = client.get(f"{CONTRACTS}/{signed['id']}", headers=team["fd"]).get_json()
    assert (old["status"], old["end_reason"], old["next_id"]) == (
        "transferred", "transferred to QUWO-T1-A: 随子女迁居曲沃", moved["id"])
    assert client.get(f"{CONTRACTS}/{moved['id']}", headers=team["fd"]).status_code == 404
    assert client.get(f"{CONTRACTS}/{moved['id']}", headers=quwo_team["fd"]).get_json()["previous_id"] == signed["id"]
    assert [c["id"] for c in client.get(CONTRACTS, headers=quwo_team["fd"]).get_json()] == [moved["id"]]
    (old_care,) = _relationships(platform_db, signed["id"])
    assert old_care.ends_at is not None


def test_transfer_needs_another_team_holding_a_record_of_the_person(client, team, other_team, platform_db):
    signed = _sign(client, team["fd"], team["resident"]["id"])
    before = _snapshot(platform_db)
    for body, field, says in (({"team": "YAODU-T2-A"}, "team", "has no record of this person"),
                              ({"team": "YAODU-T1-A"}, "team", "is not another"),
                              ({"team": "NO-SUCH-TEAM"}, "team", "is not another"),
                              ({"team": "bad code"}, "team", "team code")):
        refused = _move(client, team["fd"], signed["id"], "transfer", body, status=422)
        assert refused["errors"][0]["field"] == field and says in refused["errors"][0]["message"], body
        assert _snapshot(platform_db) == before
    assert _move(client, team["fd"], signed["id"], "terminate", {"reason": "  "}, status=422)["errors"][0][
        "field"] == "reason"
    assert _move(client, team["fd"], signed["id"], "terminate", {}, status=422)["errors"][0]["field"] == "reason"
    assert _snapshot(platform_db) == before


def test_outsiders_are_refused_and_change_nothing(app, client, as_user, team, quwo_team, other_team, platform_db):
    add_user(app, "t1.clinician", Role.clinician, "YAODU-T1")  # staff of the team's institution, in no team
    add_user(app, "t1.doctor", Role.family_doctor, "YAODU-T1")
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-B", "YAODU-T1", {"t1.doctor": "lead_doctor"})
    signed = _sign(client, team["fd"], team["resident"]["id"])
    cid = signed["id"]
    before = _snapshot(platform_db)
    moves = (("renew", {}), ("terminate", {"reason": "不想续约"}), ("transfer", {"team": "QUWO-T1-A"}))
    # other institutions, another tenant's team, another team of another centre: the contract does not exist
    for headers in (as_user("yaodu.doctor"), as_user("lfph.specialist"), quwo_team["fd"], other_team):
        assert client.get(f"{CONTRACTS}/{cid}", headers=headers).status_code == 404
        for action, body in moves:
            response = _move(client, headers, cid, action, body, status=404)
            assert team["resident"]["id"] not in str(response)
    # staff of the same centre see it, but only its own team moves it
    for headers in (as_user("t1.clinician"), as_user("t1.doctor")):
        assert client.get(f"{CONTRACTS}/{cid}", headers=headers).status_code == 200
        for action, body in moves:
            _move(client, headers, cid, action, body, status=403)
    assert client.get(CONTRACTS, headers=as_user("t1.clinician")).status_code == 403  # serves in no team
    assert client.get(CONTRACTS, headers=as_user("t1.doctor")).get_json() == []
    _sign(client, as_user("yaodu.doctor"), team["resident"]["id"], status=403)
    # roles without patient data are refused before anything is looked up
    for username in ("healthadmin", "yaodu.admin"):
        assert client.get(f"{CONTRACTS}/{cid}", headers=as_user(username)).status_code == 403
        _move(client, as_user(username), cid, "terminate", {"reason": "越权终止"}, status=403)
    assert _snapshot(platform_db) == before
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == "lfph.specialist",
                                                           AuditEvent.resource_type == "Contract")).all()
    assert [(e.action, e.outcome, e.patient) for e in refused] == [
        ("read", "denied", f"yaodu/{team['resident']['id']}")] + [
        ("update", "denied", f"yaodu/{team['resident']['id']}")] * 3
    authorize = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == "healthadmin",
                                                             AuditEvent.action != "login")).all()
    assert [(e.action, e.outcome) for e in authorize] == [("authorize", "denied")] * 2


def _ended(client, home, team, quwo_team, platform_db, state: str) -> dict:
    """A contract brought to an ended state: the one that was moved."""
    signed = _sign(client, team["fd"], team["resident"]["id"])
    if state == "terminated":
        _move(client, team["fd"], signed["id"], "terminate", {"reason": "居民要求解约"})
    elif state == "renewed":
        _move(client, team["fd"], signed["id"], "renew", {}, status=201)
    elif state == "transferred":
        _move(client, team["fd"], signed["id"], "transfer", {"team": "QUWO-T1-A"}, status=201)
    else:
        platform_db.rollback()
        contract = platform_db.get(Contract, signed["id"])
        contract.starts_on, contract.ends_on = contract.starts_on - timedelta(days=400), \
            contract.ends_on - timedelta(days=400)
        platform_db.execute(update(CareRelationship).values(ends_at=services.day_end(contract.ends_on)))
        platform_db.commit()
        result = _hie(home, "contracts", "expire")
        assert result.stdout.strip() == "1 contract(s) expired", result.stderr
    return signed


@pytest.mark.parametrize("state", ["terminated", "renewed", "transferred", "expired"])
def test_an_ended_contract_cannot_be_moved(client, home, team, quwo_team, platform_db, state):
    signed = _ended(client, home, team, quwo_team, platform_db, state)
    assert client.get(f"{CONTRACTS}/{signed['id']}", headers=team["fd"]).get_json()["status"] == state
    before = _snapshot(platform_db)
    for action, body in (("renew", {}), ("terminate", {"reason": "再次终止"}), ("transfer", {"team": "QUWO-T1-A"})):
        refused = _move(client, team["fd"], signed["id"], action, body, status=409)
        assert f"The contract is {state}" in refused["detail"]
        assert _snapshot(platform_db) == before
    failures = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Contract",
                                                            AuditEvent.outcome == "failure")).all()
    assert [e.detail for e in failures] == [f"{a} refused: contract is {state}" for a in
                                            ("renew", "terminate", "transfer")]


def test_expiry_ends_the_contract_and_frees_the_person(client, home, team, quwo_team, platform_db):
    signed = _ended(client, home, team, quwo_team, platform_db, "expired")
    platform_db.rollback()
    contract = platform_db.get(Contract, signed["id"])
    assert (contract.status, contract.active_person_id, contract.end_reason) == (
        ContractStatus.expired, None, "term ended")
    assert _hie(home, "contracts", "expire").stdout.strip() == "0 contract(s) expired"
    again = _sign(client, team["fd"], team["resident"]["id"])  # the resident may sign anew
    assert again["status"] == "active" and again["previous_id"] is None


# --- The key access rule: a contract lets its team read the resident's records everywhere, and only while active ---

def _what_they_see(client, headers, records: dict) -> dict:
    """Every route to the person's records held elsewhere, and what it answers this caller."""
    def ids(response) -> object:  # noqa: ANN001
        if response.status_code != 200:
            return response.status_code
        return sorted(e["resource"]["id"] for e in response.get_json().get("entry", []))

    quwo_id, hospital_id = records["quwo"]["id"], records["hospital"]["id"]
    return {
        "fhir_read": [client.get(url, headers=headers).status_code for url in (
            f"/fhir/Observation/{records['quwo_observation']['id']}",
            f"/fhir/Condition/{records['hospital_condition']['id']}", f"/fhir/Patient/{quwo_id}")],
        "patients_api": client.get(f"/api/v1/patients/{hospital_id}", headers=headers).status_code,
        "search": ids(client.get(f"/fhir/Observation?patient={quwo_id}", headers=headers)),
        "search_condition": ids(client.get(f"/fhir/Condition?patient=Patient/{hospital_id}", headers=headers)),
        "everything": ids(client.get(f"/fhir/Patient/{quwo_id}/$everything", headers=headers)),
    }


NOTHING = {"fhir_read": [404, 404, 404], "patients_api": 404, "search": 404, "search_condition": 404,
           "everything": 404}


@pytest.mark.parametrize("ending", ["terminate", "transfer"])
def test_the_team_reads_its_residents_records_in_another_tenant_only_while_the_contract_is_active(
        client, as_user, team, quwo_team, other_team, ending):
    fd, resident = team["fd"], team["resident"]
    quwo_doctor, yaodu_doctor = as_user("quwo.doctor"), as_user("yaodu.doctor")
    quwo = new_patient(client, quwo_doctor, mrn="Q-001", address="山西省临汾市曲沃县乐昌镇")
    hospital = new_patient(client, yaodu_doctor, mrn="CH-001")
    assert quwo["master_person_id"] == hospital["master_person_id"] == resident["master_person_id"]
    records = {"quwo": quwo, "hospital": hospital,
               "quwo_observation": create(client, quwo_doctor, clinical("Observation", f"Patient/{quwo['id']}")),
               "hospital_condition": create(client, yaodu_doctor, clinical("Condition", f"Patient/{hospital['id']}")),
               "own": create(client, fd, clinical("Observation", f"Patient/{resident['id']}", code="8462-4"))}
    outsiders = {"lfph.specialist": as_user("lfph.specialist"), "t2.fd": other_team}
    assert _what_they_see(client, fd, records) == NOTHING

    contract = _sign(client, fd, resident["id"])
    during = _what_they_see(client, fd, records)
    person_records = {quwo["id"], hospital["id"], resident["id"], quwo_team["record"]["id"],
                      records["quwo_observation"]["id"], records["hospital_condition"]["id"], records["own"]["id"]}
    assert during == {"fhir_read": [200, 200, 200], "patients_api": 200,
                      "search": sorted([records["quwo_observation"]["id"], records["own"]["id"]]),
                      "search_condition": [records["hospital_condition"]["id"]],
                      "everything": sorted(person_records)}
    assert client.get(f"/api/v1/patients/{hospital['id']}", headers=fd).get_json()["access_basis"] == \
        "care_relationship"
    for username, headers in outsiders.items():
        assert _what_they_see(client, headers, records) == NOTHING, username
        assert client.get(f"{CONTRACTS}/{contract['id']}", headers=headers).status_code == 404
    assert _what_they_see(client, quwo_team["fd"], records) == NOTHING  # the quwo team holds no contract yet

    if ending == "terminate":
        _move(client, fd, contract["id"], "terminate", {"reason": "居民要求解约"})
    else:
        _move(client, fd, contract["id"], "transfer", {"team": "QUWO-T1-A", "reason": "迁居曲沃"}, status=201)
    assert _what_they_see(client, fd, records) == NOTHING
    for username, headers in outsiders.items():
        assert _what_they_see(client, headers, records) == NOTHING, username
    if ending == "transfer":  # the new team now reads what the old one recorded, in yaodu
        assert client.get(f"/fhir/Observation/{records['own']['id']}", headers=quwo_team["fd"]).status_code == 200
        assert _what_they_see(client, quwo_team["fd"], records)["everything"] == sorted(person_records)
    else:
        assert client.get(f"/fhir/Observation/{records['own']['id']}", headers=quwo_team["fd"]).status_code == 404
