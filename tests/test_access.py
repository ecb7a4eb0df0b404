"""Roles, care relationships, break-glass and residents, within one tenant."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope, utcnow
from tests.conftest import PASSWORD, add_resident, login, new_patient, valid_id

REASON = "patient unconscious, allergy history needed"


def _institution_id(platform_db, code):
    from hie.tenants.models import Institution

    return platform_db.scalar(select(Institution.id).where(Institution.code == code))


def test_other_institution_in_same_tenant_needs_a_care_relationship(client, app, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    url = f"/api/v1/patients/{patient['id']}"
    assert client.get(url, headers=as_user("yaodu.fd")).status_code == 404
    assert client.get("/api/v1/patients", headers=as_user("yaodu.fd")).get_json() == []
    with session_scope(app.extensions["hie.engines"].platform) as session:
        relationship = care.grant(session, _institution_id(platform_db, "YAODU-T1"), patient["master_person_id"],
                                  care.CareKind.contract, "contract-1")
        relationship_id = relationship.id
    response = client.get(url, headers=as_user("yaodu.fd"))
    assert response.status_code == 200
    assert response.get_json()["access_basis"] == "care_relationship"
    assert [p["id"] for p in client.get("/api/v1/patients", headers=as_user("yaodu.fd")).get_json()] \
        == [patient["id"]]
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.end(session, session.get(care.CareRelationship, relationship_id), utcnow() - timedelta(seconds=1))
    assert client.get(url, headers=as_user("yaodu.fd")).status_code == 404


def test_care_relationship_reads_but_never_writes(client, app, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "YAODU-T1"), patient["master_person_id"],
                   care.CareKind.referral)
    response = client.patch(f"/api/v1/patients/{patient['id']}", json={"phone": "13800000000"},
                            headers=as_user("yaodu.fd"))
    assert response.status_code == 404


def test_break_glass_reads_with_a_reason_and_is_flagged(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("yaodu.fd"), "X-Break-Glass-Reason": REASON}
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=headers)
    assert response.status_code == 200
    assert response.get_json()["access_basis"] == "break_glass"
    event = platform_db.scalar(select(AuditEvent).where(AuditEvent.username == "yaodu.fd",
                                                        AuditEvent.action == "read"))
    assert event.break_glass is True and event.detail == REASON and event.purpose == "break_glass"


def test_break_glass_without_a_real_reason_is_refused(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("yaodu.fd"), "X-Break-Glass-Reason": "  need  "}
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=headers)
    assert response.status_code == 400
    assert "break-glass reason" in response.get_json()["detail"]


def test_nurse_cannot_break_glass(client, app, as_user):
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "yaodu.t1nurse", [Role.nurse], "YAODU-T1", PASSWORD)
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**login(client, "yaodu.t1nurse"), "X-Break-Glass-Reason": REASON}
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 404


def test_resident_reads_only_their_own_record(client, app, as_user):
    own = new_patient(client, as_user("yaodu.fd"), mrn="R-1")
    other = new_patient(client, as_user("yaodu.fd"), mrn="R-2", name="李四", sex="M", birth_date="1990-01-01",
                        id_number=valid_id("14100219900101001"), phone="13700000000", address=None)
    add_resident(app, "YAODU-T1", own["id"])
    headers = login(client, "resident.wang")
    mine = client.get(f"/api/v1/patients/{own['id']}", headers=headers)
    assert mine.status_code == 200 and mine.get_json()["access_basis"] == "self"
    assert client.get(f"/api/v1/patients/{other['id']}", headers=headers).status_code == 404
    assert client.get("/api/v1/patients", headers=headers).status_code == 403
    assert client.patch(f"/api/v1/patients/{own['id']}", json={"phone": "13800000000"},
                        headers=headers).status_code == 403


def test_administrators_and_auditors_see_no_patient_records(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    for username in ("healthadmin", "auditor", "admin", "yaodu.admin", "yaodu.itadmin"):
        headers = as_user(username)
        assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 403
        assert client.get("/api/v1/patients", headers=headers).status_code == 403


def test_health_admin_sees_counts_not_names(client, app, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    new_patient(client, as_user("yaodu.doctor"), mrn="MRN-2", name="李四")
    new_patient(client, as_user("quwo.doctor"), mrn="Q-1", name="赵六")
    run_jobs(app)
    response = client.get("/api/v1/stats/patients", headers=as_user("healthadmin"))
    assert response.status_code == 200
    counts = {row["institution_code"]: row["patients"] for row in response.get_json()}
    assert counts == {"YAODU-CH": 2, "QUWO-CH": 1}
    assert "王秀英" not in response.get_data(as_text=True)
    assert client.get("/api/v1/stats/patients", headers=as_user("yaodu.doctor")).status_code == 403


def run_jobs(app):
    """Deliver queued jobs: with Redis a real RQ worker in burst mode, inline mode needs nothing."""
    client = app.extensions["hie.redis"]
    if client is None:
        return
    from rq import SimpleWorker

    from hie.platform.jobs import tasks
    from hie.platform.jobs.services import QUEUE_NAME

    tasks.bind_app(app)
    SimpleWorker([QUEUE_NAME], connection=client).work(burst=True)


def test_care_relationship_follows_merge_and_unmerge(client, app, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    other = new_patient(client, as_user("yaodu.doctor"), mrn="MRN-2", name="赵六", birth_date="1970-01-01",
                        id_number=None, phone="13600000001", address=None)
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, _institution_id(platform_db, "YAODU-T1"), other["master_person_id"],
                   care.CareKind.contract)
    steward, family_doctor = as_user("steward"), as_user("yaodu.fd")
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=family_doctor).status_code == 404
    client.post(f"/api/v1/empi/persons/{other['master_person_id']}/merge",
                json={"into": patient["master_person_id"]}, headers=steward)
    run_jobs(app)
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=family_doctor).status_code == 200
    client.post(f"/api/v1/empi/persons/{other['master_person_id']}/unmerge", headers=steward)
    run_jobs(app)
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=family_doctor).status_code == 404
    assert client.get(f"/api/v1/patients/{other['id']}", headers=family_doctor).status_code == 200
