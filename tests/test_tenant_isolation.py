"""A clinician of one tenant cannot reach another tenant's data by any route, id or parameter."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hie.consult.models import (
    Attachment,
    Consultation,
    ConsultationStep,
    Opinion,
    TeachingInvite,
    TeachingRegistration,
    TeachingSession,
)
from hie.empi.models import PersonRecord
from hie.family_doctor.models import Alert, Article, Contract, Delivery, FollowUp
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import User
from hie.referral.models import Notification, Referral, ReferralStep
from hie.tenants.models import Region, Tenant
from tests.conftest import login, new_patient, shard_engine, valid_id


def _events(platform_db, username, action=None):
    query = select(AuditEvent).where(AuditEvent.username == username).order_by(AuditEvent.seq)
    if action:
        query = query.where(AuditEvent.action == action)
    return platform_db.scalars(query).all()


def test_patient_is_stored_only_in_its_tenants_shard(client, app, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    assert patient["tenant_code"] == "yaodu"
    counts = {}
    for tenant in ("linfen", "yaodu", "quwo"):
        with shard_engine(app, tenant).connect() as conn:
            counts[tenant] = conn.execute(text("SELECT COUNT(*) FROM patients")).scalar()
    assert counts == {"linfen": 0, "yaodu": 1, "quwo": 0}


def test_read_by_id_from_another_tenant_is_404_and_audited(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("quwo.doctor"))
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert "王秀英" not in response.get_data(as_text=True)
    events = _events(platform_db, "quwo.doctor", "read")
    assert [(e.outcome, e.resource_id) for e in events] == [("not_found", patient["id"])]


def test_client_supplied_tenant_is_ignored(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("quwo.doctor"), "X-Tenant": "yaodu", "X-Tenant-Id": "yaodu"}
    for url in (f"/api/v1/patients/{patient['id']}?tenant=yaodu&tenant_code=yaodu",
                f"/api/v1/patients/{patient['id']}"):
        assert client.get(url, headers=headers).status_code == 404
    listing = client.get("/api/v1/patients?tenant=yaodu", headers=headers)
    assert listing.status_code == 200
    assert listing.get_json() == []


def test_list_and_search_never_show_another_tenants_patients(client, as_user, platform_db):
    new_patient(client, as_user("yaodu.doctor"))
    quwo = as_user("quwo.doctor")
    for query in ("", "?id_number=" + valid_id("14100219580312002"), "?phone=13935712345",
                  "?name=王秀英", "?mrn=MRN-1"):
        response = client.get(f"/api/v1/patients{query}", headers=quwo)
        assert response.status_code == 200
        assert response.get_json() == []
        assert '"total": 0' in response.headers["X-Pagination"]
    searches = _events(platform_db, "quwo.doctor", "search")
    assert len(searches) == 5


def test_update_of_another_tenants_patient_is_404_and_changes_nothing(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.patch(f"/api/v1/patients/{patient['id']}", json={"phone": "13800000000"},
                            headers=as_user("quwo.doctor"))
    assert response.status_code == 404
    mine = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("yaodu.doctor")).get_json()
    assert mine["phone"] == "13935712345" and mine["version"] == 1
    assert [e.outcome for e in _events(platform_db, "quwo.doctor", "update")] == ["not_found"]


def test_same_mrn_in_two_tenants_are_two_records(client, as_user):
    a = new_patient(client, as_user("yaodu.doctor"), mrn="SHARED-1")
    b = new_patient(client, as_user("quwo.doctor"), mrn="SHARED-1", name="李四")
    assert a["id"] != b["id"]
    assert client.get(f"/api/v1/patients/{b['id']}", headers=as_user("yaodu.doctor")).status_code == 404


def test_break_glass_does_not_cross_tenants(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("quwo.doctor"), "X-Break-Glass-Reason": "unconscious patient in emergency room"}
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 404


def test_city_specialist_cannot_read_county_record_directly(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("lfph.specialist")).status_code == 404


def test_tenant_admin_cannot_add_institution_or_users_in_another_tenant(client, as_user, platform_db):
    from hie.tenants.models import Institution

    body = {"code": "YAODU-X", "name": "别人的诊所", "tenant_code": "yaodu", "level": "village_clinic"}
    response = client.post("/api/v1/institutions", json=body, headers=as_user("quwo.admin"))
    assert response.status_code == 403
    assert platform_db.scalar(select(Institution).where(Institution.code == "YAODU-X")) is None
    refused = [(e.outcome, e.request_id) for e in _events(platform_db, "quwo.admin", "authorize")]
    assert refused == [("denied", response.headers["X-Request-Id"])]
    user = {"username": "intruder", "password": "Strong-pass-123", "roles": ["clinician"],
            "institution_code": "YAODU-CH"}
    response = client.post("/api/v1/users", json=user, headers=as_user("quwo.admin"))
    assert response.status_code == 422
    assert platform_db.scalar(select(User).where(User.username == "intruder")) is None
    assert client.post("/api/v1/auth/token", json={"username": "intruder", "password": "Strong-pass-123"}) \
        .status_code == 401


# --- Every route with an id, walked from app.url_map, tried by quwo's clinician with yaodu's ids ---

_SKIPPED_ENDPOINTS = {"static", "swagger_ui_asset", "fhir.unmatched", "fhir.unmatched_root"}
_ROLE_GATED = {"empi.PersonById", "empi.PersonHistory", "empi.Merge", "empi.Unmerge", "empi.ReviewDecision",
               "tenants.UserById", "tenants.RegionByCode", "family_doctor.PortalEducationRead",
               "family_doctor.TeamMembers", "family_doctor.TeamMemberByName"}
# The patient each fixture id is about: every refusal naming one of these ids must name that patient.
_PATIENT_OF = {"{local}": "local", "{fhir_patient}": "fhir_patient", "{observation}": "fhir_patient",
               "{condition}": "fhir_patient", "{referral}": "referred", "{contract}": "referred",
               "{follow_up}": "referred", "{alert}": "referred", "{consultation}": "referred",
               "{attachment}": "referred"}
_REFERRAL_MOVES = {"ReferralAccept": {"appointment_at": "2030-01-15T09:00:00+08:00"},
                   "ReferralDecline": {"reason": "x"}, "ReferralArrive": {"patient_id": "{local}"},
                   "ReferralComplete": {"discharge_summary": "x"},
                   "ReferralCancel": {}, "ReferralNoShow": {}}
_CONTRACT_MOVES = {"ContractRenew": {}, "ContractTerminate": {"reason": "x"},
                   "ContractTransfer": {"team": "YAODU-T1-A"}}
_FAMILY_DOCTOR_BODIES = {**_CONTRACT_MOVES, "TeamMembers": {"username": "yaodu.fd", "team_role": "doctor"},
                         "FollowUpById": {}, "AlertResolve": {"resolution": "x"},
                         "AlertReferral": {"receiving_institution": "LF-PH"}}
_PDF = {"filename": "a.pdf", "media_type": "application/pdf", "content_base64": "JVBERi0xLjcK"}
_CONSULT_BODIES = {"ConsultationAccept": {"scheduled_at": "2030-01-15T09:00:00+08:00"},
                   "ConsultationReschedule": {"scheduled_at": "2030-01-15T09:00:00+08:00"},
                   "ConsultationDecline": {"reason": "x"}, "ConsultationStart": {}, "ConsultationAcknowledge": {},
                   "ConsultationClose": {}, "ConsultationCancel": {}}
_CONSULT_MOVES = tuple(_CONSULT_BODIES)
_CONSULT_BODIES.update({"ConsultationOpinion": {"findings": "x", "impression": "x"},
                        "ConsultationAttachments": _PDF, "TeachingSessionById": {"cancelled": True},
                        "TeachingAttendance": {"username": "yaodu.fd", "joined_at": "2030-01-15T09:00:00+08:00",
                                               "left_at": "2030-01-15T10:00:00+08:00"}})
# (endpoint, method, values) -> the URL arguments; "{x}" names an id of yaodu's fixture data.
_CASES: list[tuple[str, str, dict[str, str]]] = [
    ("patients.PatientById", "GET", {"patient_id": "{local}"}),
    ("patients.PatientById", "PATCH", {"patient_id": "{local}"}),
    ("patients.PatientById", "GET", {"patient_id": "{fhir_patient}"}),
    *[("fhir.read", "GET", {"resource_type": t, "resource_id": i})
      for t, i in (("Patient", "{fhir_patient}"), ("Patient", "{local}"), ("Observation", "{observation}"),
                   ("Condition", "{condition}"))],
    *[("fhir.vread", "GET", {"resource_type": t, "resource_id": i, "version": "1"})
      for t, i in (("Patient", "{fhir_patient}"), ("Observation", "{observation}"))],
    *[("fhir.update", "PUT", {"resource_type": t, "resource_id": i})
      for t, i in (("Patient", "{fhir_patient}"), ("Observation", "{observation}"))],
    *[("fhir.instance_history", "GET", {"resource_type": t, "resource_id": i})
      for t, i in (("Patient", "{fhir_patient}"), ("Patient", "{local}"), ("Observation", "{observation}"))],
    *[("fhir.delete", "DELETE", {"resource_type": t, "resource_id": i})
      for t, i in (("Observation", "{observation}"), ("Condition", "{condition}"))],
    *[(f"fhir.conditional_{kind}", method, {"resource_type": "Observation", "patient": "{fhir_patient}"})
      for kind, method in (("update", "PUT"), ("delete", "DELETE"))],
    ("fhir.patient_everything", "GET", {"patient_id": "{fhir_patient}"}),
    ("fhir.patient_everything", "GET", {"patient_id": "{local}"}),
    ("fhir.prior_results", "GET", {"patient_id": "{fhir_patient}", "code": "8480-6"}),
    ("fhir_bulk.group_export", "GET", {"group_id": "institution-YAODU-CH"}),
    ("fhir_bulk.export_status", "GET", {"export_id": "{export}"}),
    ("fhir_bulk.export_delete", "DELETE", {"export_id": "{export}"}),
    ("fhir_bulk.export_file", "GET", {"export_id": "{export}", "file_name": "Observation.ndjson"}),
    ("empi.PersonById", "GET", {"person_id": "{person}"}),
    ("empi.PersonHistory", "GET", {"person_id": "{person}"}),
    ("empi.Merge", "POST", {"person_id": "{person}"}),
    ("empi.Unmerge", "POST", {"person_id": "{person}"}),
    ("empi.ReviewDecision", "POST", {"review_id": "1"}),
    ("tenants.UserById", "PATCH", {"user_id": "{user}"}),
    ("tenants.RegionByCode", "GET", {"code": "141002"}),
    ("tenants.RegionByCode", "PATCH", {"code": "141002"}),
    ("referrals.ReferralById", "GET", {"referral_id": "{referral}"}),
    ("referrals.ReferralSlip", "GET", {"referral_id": "{referral}"}),
    *[(f"referrals.{view}", "POST", {"referral_id": "{referral}"}) for view in _REFERRAL_MOVES],
    ("fhir_referral.read_service_request", "GET", {"referral_id": "{referral}"}),
    ("fhir_referral.read_task", "GET", {"referral_id": "{referral}"}),
    ("referrals.NotificationRead", "POST", {"notification_id": "{notification}"}),
    ("family_doctor.TeamByCode", "GET", {"code": "{team}"}),
    ("family_doctor.TeamMembers", "POST", {"code": "{team}"}),
    ("family_doctor.TeamMemberByName", "DELETE", {"code": "{team}", "username": "yaodu.fd"}),
    ("family_doctor.ContractById", "GET", {"contract_id": "{contract}"}),
    *[(f"family_doctor.{view}", "POST", {"contract_id": "{contract}"}) for view in _CONTRACT_MOVES],
    ("family_doctor.ContractVitals", "GET", {"contract_id": "{contract}"}),
    ("family_doctor.ContractFollowUps", "GET", {"contract_id": "{contract}"}),
    ("family_doctor.FollowUpById", "GET", {"follow_up_id": "{follow_up}"}),
    ("family_doctor.FollowUpById", "POST", {"follow_up_id": "{follow_up}"}),
    ("family_doctor.AlertById", "GET", {"alert_id": "{alert}"}),
    ("family_doctor.AlertResolve", "POST", {"alert_id": "{alert}"}),
    ("family_doctor.AlertReferral", "POST", {"alert_id": "{alert}"}),
    ("family_doctor.ArticleById", "GET", {"article_id": "{article}"}),
    ("family_doctor.ArticlePublish", "POST", {"article_id": "{article}"}),
    ("family_doctor.PortalEducationRead", "POST", {"delivery_id": "{delivery}"}),
    ("consult.ConsultationById", "GET", {"consultation_id": "{consultation}"}),
    *[(f"consult.{view}", "POST", {"consultation_id": "{consultation}"}) for view in _CONSULT_MOVES],
    ("consult.ConsultationOpinion", "GET", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationOpinion", "POST", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationOpinionVersions", "GET", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationOpinionVerify", "GET", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationAttachments", "GET", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationAttachments", "POST", {"consultation_id": "{consultation}"}),
    ("consult.ConsultationAttachment", "GET", {"consultation_id": "{consultation}", "attachment_id": "{attachment}"}),
    ("consult.ReadingClaim", "POST", {"consultation_id": "{consultation}"}),
    ("consult.ReadingRelease", "POST", {"consultation_id": "{consultation}"}),
    ("consult.TeachingSessionById", "GET", {"session_id": "{teaching}"}),
    ("consult.TeachingSessionById", "PATCH", {"session_id": "{teaching}"}),
    *[(f"consult.{view}", method, {"session_id": "{teaching}"}) for view, method in (
        ("TeachingRegister", "POST"), ("TeachingRegister", "DELETE"), ("TeachingJoin", "POST"),
        ("TeachingLeave", "POST"), ("TeachingAttendance", "POST"))],
]


@pytest.fixture(scope="module")
def yaodu_data(app):
    """yaodu's records, made once for the route walk; quwo's clinician is logged in."""
    from tests.conftest import wipe
    from tests.fhir_helpers import clinical, create, patient, run_jobs

    wipe(app)
    with app.test_client() as setup:
        doctor = login(setup, "yaodu.doctor")
        local = new_patient(setup, doctor, mrn="ISO-1")
        fhir_patient = create(setup, doctor, patient(name="赵六", id_number=None, phone="13700000009"))
        observation = create(setup, doctor, clinical("Observation", f"Patient/{fhir_patient['id']}"))
        condition = create(setup, doctor, clinical("Condition", f"Patient/{fhir_patient['id']}"))
        family_doctor = login(setup, "yaodu.fd")
        referred = new_patient(setup, family_doctor, mrn="ISO-T1", name="孙七", id_number=None, phone="13700000010")
        referral = setup.post("/api/v1/referrals", headers=family_doctor, json={
            "patient_id": referred["id"], "direction": "up", "receiving_institution": "LF-PH", "reason": "会诊"})
        assert referral.status_code == 201, referral.get_json()
        contract, follow_up, alert = _family_doctor_data(setup, login(setup, "yaodu.admin"), family_doctor,
                                                         referred["id"])
        consultation, attachment, teaching = _consult_data(setup, doctor, family_doctor, referred["id"])
        export = setup.get("/fhir/$export", headers={**doctor, "Accept": "application/fhir+json",
                                                     "Prefer": "respond-async"})
        assert export.status_code == 202, export.get_json()
        run_jobs(app)
        with Session(app.extensions["hie.engines"].platform) as session:
            person = session.scalar(select(PersonRecord.person_id).where(PersonRecord.patient_id == local["id"]))
            user = session.scalar(select(User.id).where(User.username == "yaodu.doctor"))
            notification = session.scalar(select(Notification.id))
            article = Article(tenant_id=session.scalar(select(Tenant.id).where(Tenant.code == "yaodu")),
                              title="走查", body="走查", tags=[], author_id=user)
            session.add(article)
            session.flush()
            delivery = Delivery(article_id=article.id, master_person_id=person)
            session.add(delivery)
            session.commit()
            article_id, delivery_id = str(article.id), str(delivery.id)
        assert person is not None
        ids = {"local": local["id"], "fhir_patient": fhir_patient["id"], "observation": observation["id"],
               "condition": condition["id"], "person": person, "user": str(user), "referred": referred["id"],
               "referral": referral.get_json()["id"], "notification": notification, "team": "YAODU-T1-A",
               "contract": contract, "follow_up": follow_up, "alert": alert, "article": article_id,
               "delivery": delivery_id, "consultation": consultation, "attachment": attachment,
               "teaching": teaching, "export": export.headers["Content-Location"].rsplit("/", 1)[1]}
        quwo = login(setup, "quwo.doctor")
        resources = {"fhir_patient": fhir_patient, "observation": observation}
    return ids, quwo, resources, doctor


def _family_doctor_data(setup, admin: dict, family_doctor: dict, patient_id: str) -> tuple[str, str, str]:  # noqa: ANN001
    """A team at YAODU-T1 led by yaodu.fd, a hypertension contract, and an urgent follow-up with its alert."""
    team = {"code": "YAODU-T1-A", "name": "一组", "institution": "YAODU-T1"}
    assert setup.post("/api/v1/family-doctor/teams", json=team, headers=admin).status_code == 201
    member = {"username": "yaodu.fd", "team_role": "lead_doctor"}
    assert setup.post("/api/v1/family-doctor/teams/YAODU-T1-A/members", json=member, headers=admin).status_code == 201
    contract = setup.post("/api/v1/family-doctor/contracts", headers=family_doctor,
                          json={"patient_id": patient_id, "packages": ["basic", "hypertension"]}).get_json()
    pending = setup.get(f"/api/v1/family-doctor/contracts/{contract['id']}/follow-ups",
                        headers=family_doctor).get_json()[0]
    done = setup.post(f"/api/v1/family-doctor/follow-ups/{pending['id']}", headers=family_doctor,
                      json={"vitals": {"systolic": 185, "diastolic": 100}})
    assert done.status_code == 200, done.get_json()
    return contract["id"], pending["id"], str(done.get_json()["alerts"][0]["id"])


def _consult_data(setup, doctor: dict, family_doctor: dict, patient_id: str) -> tuple[str, str, str]:  # noqa: ANN001
    """A consultation from YAODU-T1 to LF-PH with a file, and a lecture at YAODU-CH that YAODU-T1 registers for."""
    asked = setup.post("/api/v1/consultations", headers=family_doctor, json={
        "kind": "consultation", "patient_id": patient_id, "consultant_institution": "LF-PH", "department": "心内科",
        "question": "会诊"})
    assert asked.status_code == 201, asked.get_json()
    consultation = asked.get_json()["id"]
    sent = setup.post(f"/api/v1/consultations/{consultation}/attachments", headers=family_doctor, json=_PDF)
    assert sent.status_code == 201, sent.get_json()
    lecture = setup.post("/api/v1/teaching/sessions", headers=doctor, json={
        "topic": "走查", "starts_at": "2030-01-15T09:00:00+08:00", "ends_at": "2030-01-15T10:00:00+08:00",
        "credits": 1, "invited_institutions": ["YAODU-T1"]})
    assert lecture.status_code == 201, lecture.get_json()
    registered = setup.post(f"/api/v1/teaching/sessions/{lecture.get_json()['id']}/register", headers=family_doctor)
    assert registered.status_code == 201, registered.get_json()
    return consultation, sent.get_json()["id"], lecture.get_json()["id"]


def _body(endpoint: str, values: dict[str, str], resources: dict[str, dict]) -> dict | None:
    if endpoint == "patients.PatientById":
        return {"phone": "13800000000"}
    if endpoint in ("fhir.update", "fhir.conditional_update"):
        key = "fhir_patient" if values["resource_type"] == "Patient" else "observation"
        return {**resources[key], "status": "entered-in-error"} if key == "observation" else \
            {**resources[key], "gender": "male"}
    if endpoint == "empi.Merge":
        return {"into": values["person_id"]}
    if endpoint == "empi.ReviewDecision":
        return {"decision": "link"}
    if endpoint == "tenants.UserById":
        return {"active": False}
    if endpoint == "tenants.RegionByCode":
        return {"name": "改过的名字"}
    if endpoint.startswith("consult.") and endpoint[8:] in _CONSULT_BODIES:
        return _CONSULT_BODIES[endpoint[8:]]
    if endpoint.startswith("family_doctor.") and endpoint[14:] in _FAMILY_DOCTOR_BODIES:
        return _FAMILY_DOCTOR_BODIES[endpoint[14:]]
    if endpoint.startswith("referrals.") and endpoint[10:] in _REFERRAL_MOVES:
        return {k: v.format(local=values.get("local", "x")) for k, v in _REFERRAL_MOVES[endpoint[10:]].items()}
    return None


def test_every_route_with_an_id_is_covered(app):
    walked = {rule.endpoint for rule in app.url_map.iter_rules()
              if rule.arguments and rule.endpoint not in _SKIPPED_ENDPOINTS}
    assert walked == {case[0] for case in _CASES} | {"fhir.create", "fhir.search", "fhir.type_history"}


@pytest.mark.parametrize(("endpoint", "method", "values"), _CASES,
                         ids=[f"{m} {e} {'/'.join(v.values())}" for e, m, v in _CASES])
def test_other_tenants_ids_are_refused_on_every_route(app, yaodu_data, platform_db, endpoint, method, values):
    ids, quwo, resources, doctor = yaodu_data
    filled = {k: v.format(**ids) for k, v in values.items()}
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint and method in r.methods)
    smuggled = {} if endpoint.startswith("fhir.conditional_") else {"tenant": "yaodu"}  # criteria: 400, as search
    url = rule.build({**filled, **smuggled}, append_unknown=True)[1]
    request_id = f"iso-{uuid.uuid4().hex}"
    headers = {**quwo, "X-Request-Id": request_id, "X-Tenant": "yaodu"}
    with app.test_client() as client:
        def state() -> object:
            platform_db.rollback()
            if endpoint in ("patients.PatientById", "fhir.update"):
                return client.get(url, headers=doctor).get_json()
            if endpoint == "tenants.UserById":
                return platform_db.get(User, int(ids["user"])).active
            if endpoint == "tenants.RegionByCode":
                return platform_db.get(Region, filled["code"]).name
            if endpoint.startswith("consult."):
                return [sorted(tuple(row) for row in platform_db.execute(select(*model.__table__.columns)))
                        for model in (Consultation, ConsultationStep, Opinion, Attachment, TeachingSession,
                                      TeachingInvite, TeachingRegistration)]
            if endpoint.startswith("family_doctor."):
                return [sorted(tuple(row) for row in platform_db.execute(select(*model.__table__.columns)))
                        for model in (Contract, FollowUp, Alert, Article, Delivery)]
            if endpoint.startswith(("referrals.", "fhir_referral.")):
                return platform_db.execute(select(Referral.status, Referral.updated_at, ReferralStep.id)
                                           .join(ReferralStep, ReferralStep.referral_id == Referral.id)).all()
            return platform_db.execute(select(PersonRecord.person_id, PersonRecord.patient_id)
                                       .order_by(PersonRecord.id)).all()

        before = state()
        response = client.open(url, method=method, headers=headers, json=_body(endpoint, filled, resources))
        expected = 403 if endpoint in _ROLE_GATED else 404
        assert response.status_code == expected, (url, response.get_data(as_text=True))
        assert state() == before
    platform_db.rollback()
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id)).all()
    assert events and all(e.username == "quwo.doctor" and e.outcome in ("not_found", "denied") for e in events)
    involved = next((_PATIENT_OF[v] for v in values.values() if v in _PATIENT_OF), None)
    if involved is not None and endpoint not in _ROLE_GATED:
        assert len(events) == 1, [(e.action, e.outcome, e.patient) for e in events]
        assert events[0].patient is not None and events[0].patient.endswith("/" + ids[involved]), events[0].patient


_RESIDENT_ID = valid_id("14100219580312002")  # new_patient()'s resident ID; born 1958-03-12 like the FHIR Patient


def _found(body: object) -> int:
    """How many records a list, a FHIR Bundle or an EMPI cross-reference answer holds."""
    if isinstance(body, list):
        return len(body)
    assert isinstance(body, dict), body
    return len(body["identifiers"]) if "identifiers" in body else body["total"]


# (query, quwo's status, what yaodu's own clinician finds: None when the query is refused for everyone)
@pytest.mark.parametrize(("query", "status", "own"), [
    ("/api/v1/patients?tenant=yaodu", 200, 2),
    ("/api/v1/patients?mrn=ISO-1", 200, 1),
    ("/fhir/Patient?tenant=yaodu", 400, None),
    ("/fhir/Patient?_id={fhir_patient}", 200, 1),
    ("/fhir/Patient?_id={fhir_patient}&_revinclude=Observation:subject", 200, 1),
    ("/fhir/Patient?name=王", 200, 1),
    ("/fhir/Patient?family=wang&gender=female", 200, 1),
    ("/fhir/Patient?phone=13935712345", 200, 1),
    ("/fhir/Patient?identifier=" + _RESIDENT_ID, 200, 1),
    ("/fhir/Patient?identifier=urn:hie:id:CN-RIC|" + _RESIDENT_ID, 200, 1),
    ("/fhir/Patient?birthdate=1958-03-12", 200, 2),
    ("/fhir/Observation?patient={fhir_patient}", 404, 1),
    ("/fhir/Observation?subject=Patient/{fhir_patient}", 404, 1),
    ("/fhir/Condition?patient={fhir_patient}", 404, 1),
    ("/fhir/Condition?patient={local}", 404, 0),
    ("/api/v1/empi/xref?local_id=ISO-1&tenant=yaodu", 404, 1),
])
def test_searches_with_other_tenants_ids_or_tenant_parameters_find_nothing(app, yaodu_data, query, status, own):
    ids, quwo, _resources, doctor = yaodu_data
    url = query.format(**ids)
    with app.test_client() as client:
        response = client.get(url, headers={**quwo, "X-Tenant": "yaodu", "X-Tenant-Code": "yaodu"})
        mine = client.get(url, headers=doctor)
    body = response.get_json()
    assert response.status_code == status, body
    if status == 200:
        assert _found(body) == 0 and not (isinstance(body, dict) and body.get("entry")), body
    assert "赵六" not in response.get_data(as_text=True) and "王秀英" not in response.get_data(as_text=True)
    if own is None:
        assert mine.status_code == 400 and "Unknown search parameter" in mine.get_data(as_text=True)
    else:
        assert mine.status_code == 200 and _found(mine.get_json()) == own, mine.get_json()


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_tenant_admin_cannot_see_or_change_another_tenants_account(client, as_user, platform_db, method):
    yaodu_doctor = platform_db.scalar(select(User).where(User.username == "yaodu.doctor"))
    before = (yaodu_doctor.active, sorted(role.value for role in yaodu_doctor.roles))
    body = {"active": False, "roles": ["clinician"]} if method == "PATCH" else None
    response = client.open(f"/api/v1/users/{yaodu_doctor.id}", method=method, json=body,
                           headers=as_user("quwo.admin"))
    assert response.status_code == 404, response.get_json()
    assert "yaodu.doctor" not in response.get_data(as_text=True)
    platform_db.expire_all()
    assert (yaodu_doctor.active, sorted(role.value for role in yaodu_doctor.roles)) == before
    own = client.open(f"/api/v1/users/{yaodu_doctor.id}", method="GET", headers=as_user("yaodu.admin"))
    assert own.status_code == 200 and own.get_json()["username"] == "yaodu.doctor"
