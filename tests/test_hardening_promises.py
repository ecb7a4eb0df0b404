"""Promises the docs make and nothing tested: audit failures, source addresses, region scope, refusals, keys."""

from __future__ import annotations

import re
import stat
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from hie.empi.models import PersonRecord
from hie.patients.models import Patient
from hie.platform.app import create_app
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.config import load_config
from hie.platform.db import session_scope
from hie.platform.keys import reencrypt
from tests.conftest import MYSQL_URL, PASSWORD, add_resident, hie_environ, login, new_patient, shard_engine
from tests.test_access import run_jobs

REFUSAL = "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'" if MYSQL_URL \
    else "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"


@pytest.fixture
def refuse_inserts():  # noqa: ANN201
    """refuse_inserts(engine, table): every INSERT into the table fails in the database, until the test ends."""
    made: list[tuple[Engine, str]] = []

    def install(engine: Engine, table: str) -> None:
        name = f"refuse_{table}"
        each_row = "FOR EACH ROW " if MYSQL_URL else ""
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} {each_row}{REFUSAL}"))
        made.append((engine, name))

    yield install
    for engine, name in made:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER {name}"))


def _events(platform_db: Session, request_id: str) -> list[AuditEvent]:
    platform_db.rollback()
    return platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id)
                               .order_by(AuditEvent.seq)).all()


# --- "if the audit cannot be written the response is replaced by a 503" (docs/architecture.md) ---

def test_a_read_whose_audit_event_cannot_be_written_answers_503_without_the_record(app, client, as_user,
                                                                                 refuse_inserts):
    headers = as_user("yaodu.doctor")
    patient = new_patient(client, headers)
    refuse_inserts(app.extensions["hie.engines"].platform, "audit_pending")
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=headers)
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    body = response.get_data(as_text=True)
    assert patient["id_number"] not in body and "王秀英" not in body and patient["phone"] not in body


# --- "Outcomes are adjusted if the commit failed (success becomes error)" (docs/architecture.md) ---

def test_a_commit_that_fails_turns_the_logged_success_into_an_error(app, client, as_user, platform_db,
                                                                    refuse_inserts):
    headers = as_user("yaodu.doctor")
    refuse_inserts(shard_engine(app, "yaodu"), "outbox_events")  # written by the request, flushed at commit
    response = client.post("/api/v1/patients", json={"mrn": "MRN-9", "name": "李四", "sex": "M",
                                                     "birth_date": "1970-01-01"}, headers=headers)
    assert response.status_code == 500
    events = _events(platform_db, response.headers["X-Request-Id"])
    assert [(e.action, e.resource_type, e.outcome) for e in events] == [("create", "Patient", "error")]
    with Session(shard_engine(app, "yaodu")) as shard:
        assert shard.scalar(select(func.count()).select_from(Patient)) == 0
    assert platform_db.scalar(select(func.count()).select_from(PersonRecord)) == 0


# --- "the client address from X-Forwarded-For reaches the audit trail" only with HIE_PROXY_HOPS (docs/deploy.md) ---

@pytest.fixture
def behind_one_proxy(app: Flask, home) -> Iterator[Flask]:  # noqa: ANN001
    """A second API process on the same databases, configured with HIE_PROXY_HOPS=1."""
    proxied = create_app(load_config({**hie_environ(home), "HIE_PROXY_HOPS": "1"}, argon2_time_cost=1,
                                     argon2_memory_kib=1024, testing=True))
    yield proxied
    proxied.extensions["hie.engines"].dispose()


def _login_source(app: Flask, platform_db: Session, forwarded: str | None) -> str | None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with app.test_client() as test_client:
        response = test_client.post("/api/v1/auth/token", json={"username": "yaodu.nurse", "password": PASSWORD},
                                    headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert response.status_code == 200
    (login_event,) = _events(platform_db, response.headers["X-Request-Id"])
    return login_event.source_ip


def test_source_address_is_the_peer_unless_proxy_hops_trust_x_forwarded_for(app, client, platform_db,
                                                                           behind_one_proxy):
    assert _login_source(app, platform_db, None) == "10.0.0.2"
    assert _login_source(app, platform_db, "203.0.113.9") == "10.0.0.2", "a client cannot forge its address"
    assert _login_source(behind_one_proxy, platform_db, "203.0.113.9") == "203.0.113.9"
    assert _login_source(behind_one_proxy, platform_db, "198.51.100.1, 203.0.113.9") == "203.0.113.9", \
        "only the hop the trusted proxy added"


# --- "health_admin: stats:read, aggregates only, for their region subtree" (docs/access.md) ---

def test_county_health_administrator_sees_only_their_region(app, client, as_user):
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "yaodu.healthadmin", [Role.health_admin], "YAODU-CH", PASSWORD)
    new_patient(client, as_user("yaodu.doctor"))
    new_patient(client, as_user("quwo.doctor"), mrn="Q-1", name="赵六")
    new_patient(client, as_user("lfph.specialist"), mrn="L-1", name="钱七")
    run_jobs(app)
    county = client.get("/api/v1/stats/patients", headers=login(client, "yaodu.healthadmin"))
    assert county.status_code == 200
    assert {(row["tenant_code"], row["institution_code"], row["patients"]) for row in county.get_json()} == {
        ("yaodu", "YAODU-CH", 1)}
    city = client.get("/api/v1/stats/patients", headers=as_user("healthadmin")).get_json()
    assert {row["institution_code"] for row in city} == {"YAODU-CH", "QUWO-CH", "LF-PH"}


# --- "A route the caller's roles do not allow answers 403 and writes an authorize/denied event" (docs/access.md) ---

_NOT_GUARDED = {"static", "swagger_ui_asset", "api-docs.openapi_json", "api-docs.openapi_swagger_ui",
                "health.healthz", "health.readyz", "health.metrics", "fhir.metadata", "fhir.unmatched",
                "fhir.unmatched_root", "auth.Token", "auth.Refresh", "auth.Logout", "auth.Me"}
_EVERY_LOGIN = {("tenants.Institutions", "GET"),  # the directory every clinician refers into
                ("family_doctor.Packages", "GET")}  # the service packages a resident may sign for
# Each lacks most permissions; none may write anything, so the walk changes nothing.
_CALLERS = ("healthadmin", "auditor", "steward", "resident.wang")
_QUERIES = {"empi.PersonQuery": "?name=王秀英", "empi.CrossReference": "?local_id=MRN-1",
            "referrals.ReferralSuggestions": "?direction=up&department=心内科",
            "consult.ReadingQueue": "?kind=imaging_read"}
_WALK_READING = {"client_id": "walk-1", "contract_id": "x", "taken_at": "2026-01-01T08:00:00+08:00",
                 "systolic": 120, "diastolic": 80}
# Bodies valid for their schema: a body that fails validation is answered 422 before the permission is checked.
_BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("empi.Merge", "POST"): {"into": str(uuid.uuid4())},
    ("empi.ReviewDecision", "POST"): {"decision": "not_a_match"},
    ("patients.Patients", "POST"): {"mrn": "WALK-1", "name": "李四", "sex": "M", "birth_date": "1970-01-01"},
    ("patients.PatientById", "PATCH"): {"phone": "13900001111"},
    ("tenants.Institutions", "POST"): {"code": "WALK-1", "name": "走查诊所", "tenant_code": "yaodu",
                                       "level": "village_clinic"},
    ("tenants.Regions", "POST"): {"code": "141099", "name": "走查区"},
    ("tenants.RegionByCode", "PATCH"): {"name": "走查区"},
    ("tenants.Users", "POST"): {"username": "walk.user", "password": "Strong-pass-123", "roles": ["clinician"],
                                "institution_code": "YAODU-CH"},
    ("tenants.UserById", "PATCH"): {"active": True},
    ("referrals.Referrals", "POST"): {"patient_id": "x", "direction": "up", "receiving_institution": "LF-PH",
                                      "reason": "走查"},
    ("referrals.ReferralAccept", "POST"): {"appointment_at": "2030-01-01T08:00:00Z"},
    ("referrals.ReferralDecline", "POST"): {"reason": "走查"},
    ("referrals.ReferralArrive", "POST"): {"patient_id": "x"},
    ("referrals.ReferralComplete", "POST"): {"discharge_summary": "走查"},
    ("referrals.ReferralCancel", "POST"): {},
    ("referrals.ReferralNoShow", "POST"): {},
    ("referrals.ReferralSlots", "POST"): {"department": "心内科", "slots": [{"day": "2030-01-15", "capacity": 1}]},
    ("referrals.ReferralWebhook", "PUT"): {"url": "https://hospital.example/hie-events"},
    ("family_doctor.Teams", "POST"): {"code": "WALK-T", "name": "走查组", "institution": "YAODU-T1"},
    ("family_doctor.TeamMembers", "POST"): {"username": "yaodu.fd", "team_role": "doctor"},
    ("family_doctor.Contracts", "POST"): {"patient_id": "x", "packages": ["basic"]},
    ("family_doctor.ContractRenew", "POST"): {},
    ("family_doctor.ContractTerminate", "POST"): {"reason": "走查"},
    ("family_doctor.ContractTransfer", "POST"): {"team": "WALK-T"},
    ("family_doctor.VitalsEntry", "POST"): _WALK_READING,
    ("family_doctor.VitalsBatch", "POST"): {"entries": [_WALK_READING]},
    ("family_doctor.VitalsImport", "POST"): {"csv": "date,time,sys,dia\n2026-01-01,08:00,120,80\n", "contract_id": "x"},
    ("family_doctor.MyVitals", "POST"): {k: v for k, v in _WALK_READING.items() if k != "contract_id"},
    ("family_doctor.FollowUps", "POST"): {"contract_id": "x", "condition": "hypertension"},
    ("family_doctor.FollowUpById", "POST"): {},
    ("family_doctor.AlertResolve", "POST"): {"resolution": "走查"},
    ("family_doctor.AlertReferral", "POST"): {},
    ("family_doctor.Articles", "POST"): {"title": "走查", "body": "走查", "tags": []},
    ("consult.Consultations", "POST"): {"kind": "consultation", "patient_id": "x", "consultant_institution": "LF-PH",
                                        "department": "心内科", "question": "走查"},
    ("consult.ConsultationAccept", "POST"): {"scheduled_at": "2030-01-01T08:00:00Z"},
    ("consult.ConsultationReschedule", "POST"): {"scheduled_at": "2030-01-01T08:00:00Z"},
    ("consult.ConsultationDecline", "POST"): {"reason": "走查"},
    ("consult.ConsultationOpinion", "POST"): {"findings": "走查", "impression": "走查"},
    ("consult.ConsultationAttachments", "POST"): {"filename": "walk.pdf", "media_type": "application/pdf",
                                                  "content_base64": "JVBERi0xLjcK"},
    ("consult.TeachingSessions", "POST"): {"topic": "走查", "starts_at": "2030-01-15T09:00:00+08:00",
                                           "ends_at": "2030-01-15T10:00:00+08:00", "credits": 1,
                                           "invited_institutions": ["YAODU-CH"]},
    ("consult.TeachingSessionById", "PATCH"): {"materials": []},
    ("consult.TeachingAttendance", "POST"): {"username": "yaodu.doctor", "joined_at": "2030-01-15T09:00:00+08:00",
                                             "left_at": "2030-01-15T10:00:00+08:00"},
    ("fhir_empi.patient_match", "POST"): {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "name": [{"text": "王秀英"}]}}]},
}


def _url(rule) -> str:  # noqa: ANN001
    """The rule with made-up ids: the permission is checked before any id is looked up."""
    def value(match: re.Match[str]) -> str:
        converter, name = match.group(1), match.group(2)
        if converter == "int":
            return "1"
        return "Observation" if name == "resource_type" else str(uuid.uuid4())
    return re.sub(r"<(?:(\w+):)?(\w+)>", value, rule.rule)


def _guarded_routes(app: Flask) -> list[tuple[str, str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in _NOT_GUARDED:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (rule.endpoint, method) in _EVERY_LOGIN:
                continue
            routes.append((rule.endpoint, method, _url(rule) + _QUERIES.get(rule.endpoint, "")))
    return sorted(routes)


def test_every_route_refuses_a_role_without_its_permission_with_403_and_an_audit_event(app, client, as_user,
                                                                                     platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    add_resident(app, "YAODU-CH", patient["id"])
    refused_somewhere, unaudited = set(), []
    for endpoint, method, url in _guarded_routes(app):
        body = _BODIES.get((endpoint, method), {"resourceType": "Observation"})
        for username in _CALLERS:
            response = client.open(url, method=method, json=body, headers=as_user(username))
            if response.status_code != 403:
                continue
            refused_somewhere.add((endpoint, method))
            events = [(e.username, e.action, e.outcome) for e in _events(platform_db, response.headers["X-Request-Id"])]
            if (username, "authorize", "denied") not in events:
                unaudited.append((method, url, username, events))
    assert unaudited == [], "\n".join(map(str, unaudited))
    never = sorted({(e, m) for e, m, _ in _guarded_routes(app)} - refused_somewhere)
    assert never == [], f"routes that no caller lacking a permission was refused by: {never}"


# --- "re-encryption updates WHERE <primary key> = ? AND col = old, so a concurrent API write is never
#      overwritten" (docs/architecture.md) ---

def test_key_rotation_never_overwrites_a_write_made_while_it_runs(app, client, as_user):
    headers = as_user("yaodu.doctor")
    patient = new_patient(client, headers)
    ring, engine = app.extensions["hie.keyring"], shard_engine(app, "yaodu")
    ring.add_data_key()
    written: list[int] = []

    def write_first(_conn, _cursor, statement: str, *_args: object) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE PATIENTS") and not written:
            written.append(0)  # the API's own UPDATE passes through here too
            written[0] = client.patch(f"/api/v1/patients/{patient['id']}", json={"phone": "13900001111"},
                                      headers=headers).status_code

    event.listen(engine, "before_cursor_execute", write_first)
    try:
        reencrypt(engine, ring, "yaodu")
    finally:
        event.remove(engine, "before_cursor_execute", write_first)
    assert written == [200], "the API wrote between rotation's read and its update"
    after = client.get(f"/api/v1/patients/{patient['id']}", headers=headers).get_json()
    assert after["phone"] == "13900001111" and after["name"] == "王秀英"
    reencrypt(engine, ring, "yaodu")
    with engine.connect() as conn:
        sealed = conn.execute(select(Patient.phone_enc, Patient.name_enc).where(Patient.id == patient["id"])).one()
    assert {ring.key_id_of(value) for value in sealed} == {ring.active_kid}, "the next pass finishes the row"
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).get_json()["phone"] == "13900001111"


# --- "the key ring file (HIE_KEYRING_FILE, distributed like any secret, mode 0600)" (docs/deploy.md) ---

def test_key_ring_and_secret_key_files_are_readable_by_their_owner_only(tmp_path):
    fresh = create_app(load_config({"HIE_HOME": str(tmp_path)}))
    try:
        ring_file = tmp_path / "keyring.json"
        assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600
        fresh.extensions["hie.keyring"].add_data_key()
        assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600, "still 0600 when a rotation rewrites it"
        assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    finally:
        fresh.extensions["hie.engines"].dispose()
