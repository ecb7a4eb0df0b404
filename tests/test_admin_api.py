"""Tenants, institution directory and account administration through the API."""

from __future__ import annotations

from sqlalchemy import select

from hie.platform.auth.models import User
from hie.tenants.models import Institution
from tests.conftest import PASSWORD, login

NEW_USER = {"username": "new.nurse", "password": "Strong-pass-123", "roles": ["nurse"],
            "institution_code": "YAODU-T1", "title": "护师"}


def test_platform_admin_lists_tenants_without_passwords(client, as_user):
    response = client.get("/api/v1/tenants", headers=as_user("admin"))
    assert response.status_code == 200
    assert {t["code"] for t in response.get_json()} == {"linfen", "yaodu", "quwo"}
    assert client.get("/api/v1/tenants", headers=as_user("yaodu.admin")).status_code == 403


def test_directory_lists_and_filters_institutions(client, as_user):
    response = client.get("/api/v1/institutions?tenant=yaodu", headers=as_user("quwo.doctor"))
    assert [i["code"] for i in response.get_json()] == ["YAODU-CH", "YAODU-T1"]
    tertiary = client.get("/api/v1/institutions?level=tertiary_hospital", headers=as_user("quwo.doctor"))
    assert [i["name"] for i in tertiary.get_json()] == ["临汾市人民医院"]
    assert client.get("/api/v1/institutions?level=castle", headers=as_user("quwo.doctor")).status_code == 422


def test_tenant_admin_adds_an_institution_to_own_tenant(client, as_user, platform_db):
    body = {"code": "YAODU-V9", "name": "东关村卫生室", "tenant_code": "yaodu", "level": "village_clinic",
            "type": "primary_care"}
    response = client.post("/api/v1/institutions", json=body, headers=as_user("yaodu.admin"))
    assert response.status_code == 201, response.get_json()
    assert platform_db.scalar(select(Institution.name).where(Institution.code == "YAODU-V9")) == "东关村卫生室"
    again = client.post("/api/v1/institutions", json=body, headers=as_user("yaodu.admin"))
    assert again.status_code == 422 and "already exists" in again.get_json()["detail"]
    assert client.post("/api/v1/institutions", json=body, headers=as_user("yaodu.doctor")).status_code == 403


def test_tenant_admin_creates_an_account_that_can_log_in(client, as_user):
    response = client.post("/api/v1/users", json=NEW_USER, headers=as_user("yaodu.admin"))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["roles"] == ["nurse"] and "password" not in response.get_json()
    assert login(client, "new.nurse", "Strong-pass-123")


def test_institution_admin_is_limited_to_own_institution(client, as_user, platform_db):
    response = client.post("/api/v1/users", json=NEW_USER, headers=as_user("yaodu.itadmin"))
    assert response.status_code == 422
    own = {**NEW_USER, "institution_code": "YAODU-CH"}
    assert client.post("/api/v1/users", json=own, headers=as_user("yaodu.itadmin")).status_code == 201
    escalate = {**own, "username": "sneaky", "roles": ["platform_admin"]}
    assert client.post("/api/v1/users", json=escalate, headers=as_user("yaodu.itadmin")).status_code == 403
    assert platform_db.scalar(select(User).where(User.username == "sneaky")) is None


def test_bad_account_input_names_the_field_and_creates_nothing(client, as_user, platform_db):
    for body, field in (({**NEW_USER, "roles": ["wizard"]}, "roles.0"), ({**NEW_USER, "roles": []}, "roles"),
                        ({k: v for k, v in NEW_USER.items() if k != "password"}, "password")):
        response = client.post("/api/v1/users", json=body, headers=as_user("yaodu.admin"))
        assert response.status_code == 422
        assert field in [e["field"] for e in response.get_json()["errors"]]
    weak = client.post("/api/v1/users", json={**NEW_USER, "password": "12345678901"}, headers=as_user("yaodu.admin"))
    assert weak.status_code == 422 and "password" in weak.get_json()["detail"]
    assert platform_db.scalar(select(User).where(User.username == "new.nurse")) is None


def test_disabling_an_account_ends_its_logins_at_once(client, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    assert client.get("/api/v1/auth/me", headers=doctor).status_code == 200
    user_id = platform_db.scalar(select(User.id).where(User.username == "yaodu.doctor"))
    response = client.patch(f"/api/v1/users/{user_id}", json={"active": False}, headers=as_user("yaodu.admin"))
    assert response.status_code == 200 and response.get_json()["active"] is False
    assert client.get("/api/v1/auth/me", headers=doctor).status_code == 401
    assert client.post("/api/v1/auth/token", json={"username": "yaodu.doctor", "password": PASSWORD}) \
        .status_code == 401


def test_role_change_takes_effect_on_live_tokens(client, as_user, platform_db):
    doctor = as_user("yaodu.doctor")
    user_id = platform_db.scalar(select(User.id).where(User.username == "yaodu.doctor"))
    client.patch(f"/api/v1/users/{user_id}", json={"roles": ["auditor"]}, headers=as_user("admin"))
    assert client.get("/api/v1/patients", headers=doctor).status_code == 403
    assert client.get("/api/v1/auth/me", headers=doctor).get_json()["roles"] == ["auditor"]


def test_accounts_of_another_tenant_are_404(client, as_user, platform_db):
    user_id = platform_db.scalar(select(User.id).where(User.username == "yaodu.doctor"))
    response = client.patch(f"/api/v1/users/{user_id}", json={"active": False}, headers=as_user("quwo.admin"))
    assert response.status_code == 404
    assert client.get("/api/v1/auth/me", headers=as_user("yaodu.doctor")).status_code == 200
