"""Family-doctor teams: who sets them up, who may join, who sees them; the package catalogue; `hie family-doctor`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from hie.family_doctor.models import Team, TeamArea, TeamMember, TeamRole
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from hie.tenants import services as tenancy
from tests.conftest import PASSWORD, hie_environ

TEAMS = "/api/v1/family-doctor/teams"


def add_institution(app, code: str, tenant: str, level: str, name: str = "测试机构") -> None:
    """A member institution made for one test (the wipe removes it)."""
    with session_scope(app.extensions["hie.engines"].platform) as session:
        tenancy.add_institution(session, code, name, tenant, level)


def add_user(app, username: str, role: Role, institution: str) -> None:
    """A platform user made for one test."""
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, username, [role], institution, PASSWORD)


def make_team(client, admin: dict, code: str, institution: str, members: dict[str, str],
              areas: list[str] | None = None) -> dict:
    """A team set up through the API by an administrator, with its members by username -> team role."""
    response = client.post(TEAMS, json={"code": code, "name": f"{code} 家庭医生团队", "institution": institution,
                                        "areas": areas or []}, headers=admin)
    assert response.status_code == 201, response.get_json()
    team = response.get_json()
    for username, role in members.items():
        response = client.post(f"{TEAMS}/{code}/members", json={"username": username, "team_role": role},
                               headers=admin)
        assert response.status_code == 201, response.get_json()
        team = response.get_json()
    return team


def _stored(platform_db) -> tuple:
    platform_db.rollback()
    return (platform_db.execute(select(Team.code, Team.institution_id).order_by(Team.code)).all(),
            platform_db.execute(select(TeamArea.team_id, TeamArea.region_code).order_by(TeamArea.region_code)).all(),
            platform_db.execute(select(TeamMember.user_id, TeamMember.team_id, TeamMember.team_role)
                                .order_by(TeamMember.user_id)).all())


def test_an_administrator_sets_up_a_team_with_a_village_doctor(app, client, as_user, platform_db):
    add_institution(app, "YAODU-V1", "yaodu", "village_clinic", "东关村卫生室")
    add_user(app, "yaodu.village", Role.clinician, "YAODU-V1")
    admin = as_user("yaodu.admin")
    created = client.post(TEAMS, json={"code": "YAODU-T1-A", "name": "屯里镇家庭医生一组", "institution": "YAODU-T1",
                                       "areas": ["141002100", "141002100"]}, headers=admin)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["code"], body["institution"], body["tenant_code"], body["areas"], body["members"],
            body["active_contracts"]) == ("YAODU-T1-A", "YAODU-T1", "yaodu", ["141002100"], [], 0)
    for username, role in (("yaodu.fd", "lead_doctor"), ("yaodu.village", "village_doctor")):
        joined = client.post(f"{TEAMS}/YAODU-T1-A/members", json={"username": username, "team_role": role},
                             headers=admin)
        assert joined.status_code == 201, joined.get_json()
    members = joined.get_json()["members"]
    assert [(m["username"], m["team_role"], m["institution"]) for m in members] == [
        ("yaodu.fd", "lead_doctor", "YAODU-T1"), ("yaodu.village", "village_doctor", "YAODU-V1")]

    listed = client.get(TEAMS, headers=admin)
    assert [t["code"] for t in listed.get_json()] == ["YAODU-T1-A"] and '"total": 1' in listed.headers["X-Pagination"]
    for member in ("yaodu.fd", "yaodu.village"):
        assert [t["code"] for t in client.get(TEAMS, headers=as_user(member)).get_json()] == ["YAODU-T1-A"]
        assert client.get(f"{TEAMS}/YAODU-T1-A", headers=as_user(member)).get_json()["members"] == members
    assert client.get(TEAMS, headers=as_user("yaodu.doctor")).get_json() == []  # serves in no team
    assert client.get(f"{TEAMS}/YAODU-T1-A", headers=as_user("yaodu.doctor")).status_code == 404
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "FamilyDoctorTeam",
                                                          AuditEvent.outcome == "success")).all()
    assert [(e.username, e.action, e.resource_id) for e in events] == [("yaodu.admin", "create", "YAODU-T1-A")] + [
        ("yaodu.admin", "update", "YAODU-T1-A")] * 2


@pytest.mark.parametrize(("changes", "field", "status"), [
    ({"institution": "YAODU-CH"}, "institution", 422),  # a hospital, not a township centre
    ({"institution": "QUWO-CH"}, "institution", 422),  # another tenant's
    ({"institution": "NOWHERE"}, "institution", 422),
    ({"areas": ["141002999"]}, "areas[0]", 422),  # not in the region table
    ({"areas": ["141002100", "141021"]}, "areas[1]", 422),  # 曲沃县, outside yaodu's region
    ({"areas": ["14100"]}, "areas[0]", 422),
    ({"code": "a b"}, "code", 422),
    ({"name": "  "}, "name", 422),
    ({"code": "YAODU-T1-A"}, "code", 409),  # taken
])
def test_a_bad_team_is_refused_naming_the_field_and_nothing_is_stored(client, as_user, platform_db, changes, field,
                                                                     status):
    admin = as_user("yaodu.admin")
    make_team(client, admin, "YAODU-T1-A", "YAODU-T1", {})
    before = _stored(platform_db)
    body = {"code": "YAODU-T1-B", "name": "二组", "institution": "YAODU-T1", "areas": ["141002100"], **changes}
    response = client.post(TEAMS, json=body, headers=admin)
    assert response.status_code == status, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == [field]
    assert _stored(platform_db) == before


def test_who_may_join_a_team(app, client, as_user, platform_db):
    add_institution(app, "QUWO-V1", "quwo", "village_clinic")
    add_user(app, "quwo.village", Role.clinician, "QUWO-V1")
    add_user(app, "t1.itadmin", Role.institution_admin, "YAODU-T1")
    add_user(app, "t1.doctor", Role.family_doctor, "YAODU-T1")
    admin = as_user("yaodu.admin")
    make_team(client, admin, "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    make_team(client, admin, "YAODU-T1-B", "YAODU-T1", {})
    before = _stored(platform_db)
    for username, role, status, says in (
            ("yaodu.doctor", "doctor", 422, "not an active user of YAODU-T1"),  # a hospital's clinician
            ("quwo.village", "village_doctor", 422, "not an active user of YAODU-T1"),  # another tenant's village
            ("nobody", "doctor", 422, "not an active user"),
            ("t1.itadmin", "doctor", 422, "holds no clinical role"),
            ("yaodu.fd", "doctor", 409, "already serves in team YAODU-T1-A"),
            ("t1.doctor", "lead_doctor", 201, "")):
        response = client.post(f"{TEAMS}/YAODU-T1-B/members", json={"username": username, "team_role": role},
                               headers=admin)
        assert response.status_code == status, (username, response.get_json())
        if status != 201:
            assert response.get_json()["errors"][0]["field"] == "username" and says in response.get_json()["detail"]
            assert _stored(platform_db) == before
    second_lead = client.post(f"{TEAMS}/YAODU-T1-B/members", json={"username": "t1.doctor", "team_role": "doctor"},
                              headers=admin)
    assert second_lead.status_code == 201  # a member's role changes in place
    assert [m["team_role"] for m in second_lead.get_json()["members"]] == ["doctor"]
    refused = client.post(f"{TEAMS}/YAODU-T1-A/members", json={"username": "t1.doctor", "team_role": "nurse"},
                          headers=admin)
    assert refused.status_code == 409
    client.post(f"{TEAMS}/YAODU-T1-B/members", json={"username": "t1.doctor", "team_role": "lead_doctor"},
                headers=admin)
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(TeamMember)
                              .where(TeamMember.team_role == TeamRole.lead_doctor)) == 2
    bad = client.post(f"{TEAMS}/YAODU-T1-B/members", json={"username": "t1.doctor", "team_role": "captain"},
                      headers=admin)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "team_role"
    platform_db.rollback()
    failures = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "FamilyDoctorTeam",
                                                            AuditEvent.outcome == "failure")).all()
    assert len(failures) == 6 and all(e.resource_id.startswith("YAODU-T1-") for e in failures)


def test_one_lead_doctor_per_team(app, client, as_user):
    add_user(app, "t1.doctor", Role.family_doctor, "YAODU-T1")
    admin = as_user("yaodu.admin")
    make_team(client, admin, "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    response = client.post(f"{TEAMS}/YAODU-T1-A/members", json={"username": "t1.doctor", "team_role": "lead_doctor"},
                           headers=admin)
    assert response.status_code == 409 and response.get_json()["errors"][0]["field"] == "team_role"
    assert "already has a lead doctor (yaodu.fd)" in response.get_json()["detail"]


def test_teams_of_another_tenant_or_institution_answer_404_and_change_nothing(app, client, as_user, platform_db):
    add_user(app, "t1.doctor", Role.family_doctor, "YAODU-T1")
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    before = _stored(platform_db)
    for username in ("quwo.admin", "yaodu.itadmin"):  # another tenant; an administrator of YAODU-CH only
        headers = as_user(username)
        assert client.get(TEAMS, headers=headers).get_json() == []
        assert client.get(f"{TEAMS}/YAODU-T1-A", headers=headers).status_code == 404
        joined = client.post(f"{TEAMS}/YAODU-T1-A/members", json={"username": "t1.doctor", "team_role": "doctor"},
                             headers=headers)
        assert joined.status_code == 404 and "t1.doctor" not in joined.get_data(as_text=True)
        assert client.delete(f"{TEAMS}/YAODU-T1-A/members/yaodu.fd", headers=headers).status_code == 404
        made = client.post(TEAMS, json={"code": "X-1", "name": "越权", "institution": "YAODU-T1"}, headers=headers)
        assert made.status_code == 422 and made.get_json()["errors"][0]["field"] == "institution"
    assert _stored(platform_db) == before
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.username == "quwo.admin",
                                                           AuditEvent.resource_type == "FamilyDoctorTeam")).all()
    assert [(e.action, e.outcome) for e in refused] == [("read", "denied"), ("update", "denied"),
                                                         ("update", "denied"), ("create", "failure")]
    assert client.get(f"{TEAMS}/NO-SUCH", headers=as_user("quwo.admin")).status_code == 404
    # a member may read their team but not manage it; roles without either permission are refused
    fd = as_user("yaodu.fd")
    assert client.post(f"{TEAMS}/YAODU-T1-A/members", json={"username": "t1.doctor", "team_role": "doctor"},
                       headers=fd).status_code == 403
    assert client.get(TEAMS, headers=as_user("healthadmin")).status_code == 403
    assert _stored(platform_db) == before


def test_a_member_leaves_and_can_no_longer_act_for_the_team(client, as_user, platform_db):
    admin = as_user("yaodu.admin")
    make_team(client, admin, "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": "lead_doctor"})
    fd = as_user("yaodu.fd")
    assert client.get("/api/v1/family-doctor/contracts", headers=fd).status_code == 200
    assert client.delete(f"{TEAMS}/YAODU-T1-A/members/yaodu.fd", headers=admin).status_code == 204
    assert client.delete(f"{TEAMS}/YAODU-T1-A/members/yaodu.fd", headers=admin).status_code == 404
    assert client.get(f"{TEAMS}/YAODU-T1-A", headers=admin).get_json()["members"] == []
    assert client.get("/api/v1/family-doctor/contracts", headers=fd).status_code == 403
    assert client.get(f"{TEAMS}/YAODU-T1-A", headers=fd).status_code == 404
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(TeamMember)) == 0


def test_the_package_catalogue_for_any_logged_in_user(client, as_user):
    for username in ("yaodu.fd", "healthadmin"):
        response = client.get("/api/v1/family-doctor/packages", headers=as_user(username))
        assert response.status_code == 200
        body = response.get_json()
        assert [p["code"] for p in body["packages"]] == ["basic", "hypertension", "diabetes", "elderly", "maternal",
                                                         "children"]
        hypertension = body["packages"][1]
        assert (hypertension["follow_ups_per_year"], hypertension["conditions"]) == (4, ["hypertension"])
        assert len(body["priority_groups"]) == 8 and "Specification" in body["source"]
        assert (body["default_term_days"], body["max_term_days"]) == (365, 1095)
    assert client.get("/api/v1/family-doctor/packages").status_code == 401


def _hie(home, *args: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HIE_")}, **hie_environ(home)}
    return subprocess.run([sys.executable, "-m", "hie.platform.cli", "family-doctor", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_adds_and_lists_teams_and_members(client, home, platform_db):
    result = _hie(home, "teams", "add", "YAODU-T1-C", "--name", "命令行组", "--institution", "YAODU-T1",
                  "--area", "141002100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "team YAODU-T1-C of YAODU-T1 serving 141002100"
    result = _hie(home, "members", "add", "YAODU-T1-C", "yaodu.fd", "lead_doctor")
    assert result.returncode == 0, result.stderr
    listed = _hie(home, "teams", "list").stdout.strip().splitlines()
    assert listed == ["YAODU-T1-C  YAODU-T1  1 member(s)  areas 141002100  命令行组", "1 team(s)"]
    platform_db.rollback()
    team = platform_db.scalar(select(Team).where(Team.code == "YAODU-T1-C"))
    assert platform_db.execute(select(TeamMember.team_id, TeamMember.team_role)).all() == [
        (team.id, TeamRole.lead_doctor)]
    for args, says in ((("teams", "add", "X-2", "--name", "n", "--institution", "YAODU-CH"), "institution YAODU-CH "
                        "is a secondary_hospital"),
                       (("teams", "add", "X-2", "--name", "n", "--institution", "YAODU-T1", "--area", "141021"),
                        "areas[0] 141021 lies outside the tenant's region 141002"),
                       (("members", "add", "YAODU-T1-C", "yaodu.doctor", "doctor"), "is not an active user"),
                       (("members", "add", "NOPE", "yaodu.fd", "doctor"), "no team 'NOPE'")):
        result = _hie(home, *args)
        assert result.returncode == 1 and says in result.stderr, (args, result.stderr)
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(Team)) == 1
