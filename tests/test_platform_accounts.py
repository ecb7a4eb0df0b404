"""Account administration: the grant matrix, admin scope, resident links and account input checks."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role, User
from hie.platform.cli import main
from hie.platform.db import session_scope
from tests.conftest import PASSWORD, hie_environ, login, new_patient, shard_engine

STAFF = {"password": "Strong-pass-123", "institution_code": "YAODU-CH"}


def _user(platform_db, username: str) -> User | None:
    platform_db.rollback()
    return platform_db.scalar(select(User).where(User.username == username))


def _denials(platform_db, username: str) -> int:
    platform_db.rollback()
    return len(platform_db.scalars(select(AuditEvent).where(
        AuditEvent.username == username, AuditEvent.action == "authorize", AuditEvent.outcome == "denied")).all())


@pytest.mark.parametrize("role", ["tenant_admin", "data_steward", "auditor", "health_admin", "platform_admin",
                                  "institution_admin"])
def test_institution_admin_cannot_create_privileged_accounts(client, as_user, platform_db, role):
    body = {**STAFF, "username": f"esc.{role.replace('_', '')}", "roles": [role]}
    response = client.post("/api/v1/users", json=body, headers=as_user("yaodu.itadmin"))
    assert response.status_code == 403, response.get_json()
    assert _user(platform_db, body["username"]) is None
    assert _denials(platform_db, "yaodu.itadmin") == 1


@pytest.mark.parametrize("role", ["auditor", "data_steward", "health_admin", "tenant_admin", "platform_admin"])
def test_tenant_admin_cannot_create_city_roles(client, as_user, platform_db, role):
    body = {**STAFF, "username": "esc.user", "roles": ["nurse", role]}
    assert client.post("/api/v1/users", json=body, headers=as_user("yaodu.admin")).status_code == 403
    assert _user(platform_db, "esc.user") is None


def test_grants_within_the_matrix_work(client, as_user, platform_db):
    made = client.post("/api/v1/users", json={**STAFF, "username": "new.itadmin", "roles": ["institution_admin"]},
                       headers=as_user("yaodu.admin"))
    assert made.status_code == 201, made.get_json()
    for username, role in (("new.fd", "family_doctor"), ("new.spec", "specialist"), ("new.doc", "clinician")):
        response = client.post("/api/v1/users", json={**STAFF, "username": username, "roles": [role]},
                               headers=as_user("yaodu.itadmin"))
        assert response.status_code == 201, response.get_json()
    steward = client.post("/api/v1/users", json={**STAFF, "username": "new.steward", "roles": ["data_steward"]},
                          headers=as_user("admin"))
    assert steward.status_code == 201 and steward.get_json()["roles"] == ["data_steward"]


@pytest.mark.parametrize(("admin", "target", "body"), [
    ("yaodu.admin", "yaodu.auditor", {"active": False}),
    ("yaodu.admin", "yaodu.auditor", {"roles": ["nurse"]}),
    ("yaodu.admin", "yaodu.admin", {"roles": ["platform_admin"]}),
    ("yaodu.itadmin", "yaodu.admin", {"active": False}),
    ("yaodu.itadmin", "yaodu.itadmin", {"roles": ["tenant_admin"]}),
    ("yaodu.itadmin", "yaodu.doctor", {"roles": ["auditor"]}),
])
def test_admin_cannot_edit_accounts_above_them_or_grant_beyond_the_matrix(client, as_user, platform_db, admin,
                                                                           target, body):
    before = _user(platform_db, target)
    roles, active = before.roles, before.active
    response = client.patch(f"/api/v1/users/{before.id}", json=body, headers=as_user(admin))
    assert response.status_code == 403, response.get_json()
    after = _user(platform_db, target)
    assert (after.roles, after.active) == (roles, active)
    assert _denials(platform_db, admin) == 1


def test_city_tenant_admin_cannot_touch_platform_admin_or_city_auditor(client, as_user, platform_db):
    made = client.post("/api/v1/users", json={**STAFF, "username": "linfen.admin", "roles": ["tenant_admin"],
                                              "institution_code": "LF-PH"}, headers=as_user("admin"))
    assert made.status_code == 201
    headers = login(client, "linfen.admin", STAFF["password"])
    admin, auditor = _user(platform_db, "admin"), _user(platform_db, "auditor")
    assert client.patch(f"/api/v1/users/{admin.id}", json={"roles": ["nurse"]}, headers=headers).status_code == 403
    assert client.patch(f"/api/v1/users/{auditor.id}", json={"active": False}, headers=headers).status_code == 403
    assert _user(platform_db, "admin").roles == {Role.platform_admin}
    assert _user(platform_db, "auditor").active is True
    assert client.get("/api/v1/auth/me", headers=as_user("auditor")).status_code == 200


def test_accounts_outside_scope_are_404(client, as_user, platform_db):
    fd = _user(platform_db, "yaodu.fd")
    response = client.patch(f"/api/v1/users/{fd.id}", json={"active": False}, headers=as_user("yaodu.itadmin"))
    assert response.status_code == 404
    assert _user(platform_db, "yaodu.fd").active is True
    own = client.patch(f"/api/v1/users/{_user(platform_db, 'yaodu.nurse').id}", json={"roles": ["clinician"]},
                       headers=as_user("yaodu.itadmin"))
    assert own.status_code == 200 and own.get_json()["roles"] == ["clinician"]


def test_resident_must_be_linked_to_a_record_of_their_institution(client, as_user, platform_db):
    own = new_patient(client, as_user("yaodu.doctor"), mrn="R-1")
    foreign = new_patient(client, as_user("quwo.doctor"), mrn="R-2")
    township = new_patient(client, as_user("yaodu.fd"), mrn="R-3")
    body = {**STAFF, "username": "resident.wang", "roles": ["resident"]}
    for patient_id in (foreign["id"], township["id"], str(uuid.uuid4())):
        response = client.post("/api/v1/users", json={**body, "patient_id": patient_id},
                               headers=as_user("yaodu.itadmin"))
        assert response.status_code == 422, response.get_json()
        assert "patient_id" in response.get_json()["detail"]
        assert _user(platform_db, "resident.wang") is None
    named = client.post("/api/v1/users", json={**body, "patient_id": own["id"], "display_name": "王秀英"},
                        headers=as_user("yaodu.itadmin"))
    assert named.status_code == 422 and "display_name" in named.get_json()["detail"]
    made = client.post("/api/v1/users", json={**body, "patient_id": own["id"]}, headers=as_user("yaodu.itadmin"))
    assert made.status_code == 201, made.get_json()
    assert _user(platform_db, "resident.wang").display_name == "resident.wang"
    headers = login(client, "resident.wang", STAFF["password"])
    mine = client.get(f"/api/v1/patients/{own['id']}", headers=headers)
    assert mine.status_code == 200 and mine.get_json()["access_basis"] == "self"
    assert client.get(f"/api/v1/patients/{foreign['id']}", headers=headers).status_code == 404


def test_duplicate_roles_are_merged(client, as_user, platform_db):
    response = client.post("/api/v1/users", json={**STAFF, "username": "twice.nurse", "roles": ["nurse", "nurse"]},
                           headers=as_user("yaodu.itadmin"))
    assert response.status_code == 201 and response.get_json()["roles"] == ["nurse"]
    user = _user(platform_db, "twice.nurse")
    patched = client.patch(f"/api/v1/users/{user.id}", json={"roles": ["clinician", "clinician"]},
                           headers=as_user("yaodu.itadmin"))
    assert patched.status_code == 200 and patched.get_json()["roles"] == ["clinician"]


@pytest.fixture
def hie(home, client):
    def run(*args: str, stdin: str = PASSWORD + "\n"):
        return CliRunner().invoke(main, list(args), input=stdin, env=hie_environ(home))
    return run


def test_cli_merges_duplicate_roles(hie, platform_db):
    result = hie("users", "add", "cli.doc", "--role", "clinician", "--role", "clinician", "--institution",
                 "YAODU-CH", "--password-stdin")
    assert result.exit_code == 0, result.output
    assert _user(platform_db, "cli.doc").roles == {Role.clinician}


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--licence-number", "L" * 65, "licence_number"), ("--display-name", "名" * 101, "display_name"),
    ("--department", "d" * 101, "department"), ("--title", "t" * 101, "title"),
])
def test_cli_refuses_overlong_fields_by_name(hie, platform_db, option, value, field):
    result = hie("users", "add", "long.doc", "--role", "clinician", "--institution", "YAODU-CH",
                 "--password-stdin", option, value)
    assert result.exit_code == 1 and field in result.output and "Traceback" not in result.output
    assert _user(platform_db, "long.doc") is None


def test_cli_resident_patient_must_belong_to_the_institution(hie, client, as_user, platform_db):
    foreign = new_patient(client, as_user("quwo.doctor"), mrn="R-9")
    result = hie("users", "add", "cli.resident", "--role", "resident", "--institution", "YAODU-CH",
                 "--password-stdin", "--patient-id", foreign["id"])
    assert result.exit_code == 1 and "patient_id" in result.output
    assert _user(platform_db, "cli.resident") is None
    own = new_patient(client, as_user("yaodu.doctor"), mrn="R-8")
    ok = hie("users", "add", "cli.resident", "--role", "resident", "--institution", "YAODU-CH",
             "--password-stdin", "--patient-id", own["id"])
    assert ok.exit_code == 0, ok.output


def test_resident_record_is_checked_in_the_shard_session_the_caller_gives(app, client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    with session_scope(app.extensions["hie.engines"].platform) as session, \
            Session(shard_engine(app, "quwo")) as wrong_shard, \
            pytest.raises(accounts.AccountError, match="is not a patient record of institution YAODU-CH"):
        accounts.add_user(session, "resident.wang", [Role.resident], "YAODU-CH", PASSWORD,
                          patient_id=patient["id"], shard=wrong_shard)
    with session_scope(app.extensions["hie.engines"].platform) as session, \
            Session(shard_engine(app, "yaodu")) as shard:
        user = accounts.add_user(session, "resident.wang", [Role.resident], "YAODU-CH", PASSWORD,
                                 patient_id=patient["id"], shard=shard)
        assert user.roles == {Role.resident}


def test_parse_roles_is_the_one_check():
    assert accounts.parse_roles(["nurse", "clinician", "nurse"]) == [Role.nurse, Role.clinician]
    for raw, message in (([], "at least one role"), (["wizard"], "'wizard' is not one of")):
        with pytest.raises(accounts.AccountError, match=message):
            accounts.parse_roles(raw)


def test_add_user_itself_refuses_no_roles_and_merges_duplicates(client, app, platform_db):
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        with pytest.raises(accounts.AccountError, match="at least one role"):
            accounts.add_user(session, "no.roles", [], "YAODU-CH", PASSWORD)
        user = accounts.add_user(session, "two.nurses", [Role.nurse, Role.nurse], "YAODU-CH", PASSWORD)
        assert user.roles == {Role.nurse}
    assert platform_db.scalar(select(User.id).where(User.username == "no.roles")) is None
