"""GET /api/v1/stats/family-doctor: HEARTS, coverage and follow-up figures against a small hand-computed cohort, the
caller's region only, small cells suppressed, refusals; and `hie family-doctor population import`."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hie.family_doctor.models import (
    Contract,
    ContractStatus,
    FollowUp,
    FollowUpStatus,
    Population,
    Setting,
    Team,
    Vitals,
)
from hie.family_doctor.population_cli import register_population
from hie.family_doctor.stats import family_doctor_figures
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from hie.platform.figures import Window
from hie.tenants import services as tenants
from hie.tenants.models import InstitutionLevel, RegionLevel
from tests.conftest import PASSWORD, hie_environ, login

SH = ZoneInfo("Asia/Shanghai")
# The end E of every figure below: 1 December 2025, 00:00 in Shanghai. E - 3 months = 1 September 2025 00:00,
# E - 12 months = 1 December 2024 00:00; the window is [1 December 2024, E).
UNTIL = "until=2025-12-01T00:00:00%2B08:00"
WINDOW = f"since=2024-12-01T00:00:00%2B08:00&{UNTIL}"


def at(day: str, clock: str = "10:00") -> datetime:
    """A Shanghai wall time as an aware instant."""
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=SH)


class Cohort:
    """Contracts, follow-ups and readings inserted directly, at chosen times."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self.session = session
        self.person: dict[str, str] = {}
        self.contract: dict[str, str] = {}

    def sign(self, team: Team, who: str, packages: list[str], groups: list[str], signed: str,
             status: ContractStatus = ContractStatus.active, ended: datetime | None = None,
             previous: str | None = None) -> str:
        person = self.person.setdefault(who, str(uuid.uuid4()))
        signed_at = at(signed)
        contract = Contract(
            id=str(uuid.uuid4()), team_id=team.id, institution_id=team.institution_id,
            tenant_code="yaodu" if team.code == "T-YAODU" else "quwo", patient_id=str(uuid.uuid4()),
            master_person_id=person, active_person_id=person if status is ContractStatus.active else None,
            packages=packages, priority_groups=groups, region_code=None, status=status,
            starts_on=signed_at.date(), ends_on=signed_at.date() + timedelta(days=364), signed_by=1,
            signed_at=signed_at, ended_at=ended, previous_id=previous)
        self.session.add(contract)
        self.session.flush()
        self.contract[who] = contract.id
        return contract.id

    def follow_up(self, team: Team, who: str, condition: str, due: str, status: FollowUpStatus = FollowUpStatus.done,
                  done: datetime | None = None, face_to_face: bool = True, bp: tuple[int, int] | None = None,
                  fpg: float | None = None) -> None:
        self.session.add(FollowUp(
            id=str(uuid.uuid4()), contract_id=self.contract[who], team_id=team.id, institution_id=team.institution_id,
            master_person_id=self.person[who], condition=condition, status=status, due_on=date.fromisoformat(due),
            done_at=done, face_to_face=face_to_face if done else None, systolic=bp[0] if bp else None,
            diastolic=bp[1] if bp else None, fasting_glucose=fpg))

    def reading(self, team: Team, who: str, taken: datetime, bp: tuple[int, int] | None = None,
                fpg: float | None = None, setting: Setting = Setting.clinic) -> None:
        self.session.add(Vitals(
            user_id=1, client_id=str(uuid.uuid4()), master_person_id=self.person[who], tenant_code="yaodu",
            patient_id=str(uuid.uuid4()), institution_id=team.institution_id, team_id=team.id,
            contract_id=self.contract[who], taken_at=taken, setting=setting,
            self_reported=setting is Setting.self_device, systolic=bp[0] if bp else None,
            diastolic=bp[1] if bp else None, fasting_glucose=fpg, observations=[]))


@pytest.fixture
def cohort(app, client):
    """Team T-YAODU (屯里镇 township, 尧都区) and team T-QUWO (史村镇, 曲沃县) with their residents.

    Hypertension package, team T-YAODU (p1..p11), status at E:
      p1  signed 2025-01-10; F 10-01 150/95, F 11-10 23:59 130/80 (last)            registered, controlled
      p2  signed 2025-02-01; V 10-20 135/85, F 11-20 139/89 (last, boundary)        registered, controlled
      p3  signed 2025-03-01; F 2024-11-30 150/90, F 11-05 140/85 (last)             registered, not controlled
      p4  signed 2025-04-01; V 10-15 130/90 (last staff BP); self-device 11-25 120/70
          and a home glucose-only reading 11-20 do not count                       registered, not controlled
      p5  signed 2025-01-05; F 07-01 128/82                                         registered, no visit in 3 months
      p6  signed 2024-06-01, renewed 2025-06-01; V 2024-11-30 23:00 (before E-12m) registered, no visit, lost
      p7  signed 2025-10-01 (less than 3 months before E); F 10-20, V 11-01          not registered
      p8  signed 2025-02-01, terminated 2025-11-15                                   not held at E
      p9  signed 2025-01-15; F 2024-12-15 130/80, phone follow-up 11-01              registered, no visit in 3 months
      p10 signed 2025-05-01; F exactly 2025-09-01 00:00 125/75                       registered, controlled
      p11 signed 2025-03-01; V and F both at 11-11 10:00, 130/80 and 145/85          registered, not controlled
    Diabetes package, team T-YAODU (d1..d5), signed 2025-01-01:
      d1 F 11-01 FPG 6.9 controlled; d2 F 10-10 7.0 not; d3 F 11-02 16.7 not; d4 F 06-01 5.5 no visit;
      d5 nothing: no visit, lost.
    Hypertension package, team T-QUWO (q1..q3), signed 2025-02-01: q1 V 11-01 120/80, q2 V 10-01 125/80, q3 nothing.
    """
    engines = app.extensions["hie.engines"]
    with session_scope(engines.platform) as session:
        tenants.ensure_region(session, "141021101", "史村镇", RegionLevel.township, "141021")
        yaodu_centre = tenants.add_institution(session, "YAODU-T2", "屯里镇第二卫生院", "yaodu",
                                               InstitutionLevel.township_health_centre.value, "141002100")
        quwo_centre = tenants.add_institution(session, "QUWO-T1", "史村镇卫生院", "quwo",
                                              InstitutionLevel.township_health_centre.value, "141021101")
        session.flush()
        a = Team(code="T-YAODU", name="屯里一队", institution_id=yaodu_centre.id)
        b = Team(code="T-QUWO", name="史村一队", institution_id=quwo_centre.id)
        session.add_all([a, b])
        session.flush()
        c = Cohort(session)
        htn, dm = ["basic", "hypertension"], ["basic", "diabetes"]
        c.sign(a, "p1", htn, ["hypertension", "elderly_65"], "2025-01-10")
        c.sign(a, "p2", htn, ["hypertension", "elderly_65"], "2025-02-01")
        c.sign(a, "p3", htn, ["hypertension", "elderly_65"], "2025-03-01")
        c.sign(a, "p4", htn, ["hypertension"], "2025-04-01")
        c.sign(a, "p5", htn, ["hypertension"], "2025-01-05")
        old = c.sign(a, "p6", htn, ["hypertension"], "2024-06-01", ContractStatus.renewed, at("2025-06-01"))
        c.sign(a, "p6", htn, ["hypertension"], "2025-06-01", previous=old)
        c.sign(a, "p7", htn, ["hypertension"], "2025-10-01")
        c.sign(a, "p8", htn, ["hypertension"], "2025-02-01", ContractStatus.terminated, at("2025-11-15"))
        c.sign(a, "p9", htn, ["hypertension"], "2025-01-15")
        c.sign(a, "p10", htn, ["hypertension"], "2025-05-01")
        c.sign(a, "p11", htn, ["hypertension"], "2025-03-01")
        for who in ("d1", "d2", "d3", "d4", "d5"):
            c.sign(a, who, dm, ["diabetes"], "2025-01-01")
        for who in ("q1", "q2", "q3"):
            c.sign(b, who, htn, ["hypertension"], "2025-02-01")
        done, sched, cancelled = FollowUpStatus.done, FollowUpStatus.scheduled, FollowUpStatus.cancelled
        c.follow_up(a, "p1", "hypertension", "2025-10-01", done, at("2025-10-01"), bp=(150, 95))  # F1 on time
        c.follow_up(a, "p1", "hypertension", "2025-11-10", done, at("2025-11-10", "23:59"), bp=(130, 80))  # F2 on time
        c.follow_up(a, "p2", "hypertension", "2025-11-15", done, at("2025-11-20"), bp=(139, 89))  # F3 late
        c.follow_up(a, "p3", "hypertension", "2025-11-04", done, at("2025-11-05", "00:00:30"), bp=(140, 85))  # F4 late
        c.follow_up(a, "p5", "hypertension", "2025-07-01", done, at("2025-07-01"), bp=(128, 82))  # F5 on time
        c.follow_up(a, "p7", "hypertension", "2025-10-20", done, at("2025-10-20"), bp=(120, 80))  # F6 on time
        c.follow_up(a, "p9", "hypertension", "2024-12-15", done, at("2024-12-15"), bp=(130, 80))  # F7 on time
        c.follow_up(a, "p9", "hypertension", "2025-11-01", done, at("2025-11-01"), face_to_face=False,
                    bp=(120, 80))  # F8 on time (by phone: not a visit)
        c.follow_up(a, "p10", "hypertension", "2025-09-01", done, at("2025-09-01", "00:00"), bp=(125, 75))  # F9
        c.follow_up(a, "p11", "hypertension", "2025-11-11", done, at("2025-11-11"), bp=(145, 85))  # F10 on time
        c.follow_up(a, "d1", "diabetes", "2025-11-01", done, at("2025-11-01"), fpg=6.9)  # F11 on time
        c.follow_up(a, "d2", "diabetes", "2025-10-10", done, at("2025-10-10"), fpg=7.0)  # F12 on time
        c.follow_up(a, "d3", "diabetes", "2025-11-02", done, at("2025-11-02"), fpg=16.7)  # F13 on time
        c.follow_up(a, "d4", "diabetes", "2025-06-01", done, at("2025-06-01"), fpg=5.5)  # F14 on time
        c.follow_up(a, "d5", "diabetes", "2025-11-25", sched)  # F15 due, never done
        c.follow_up(a, "p6", "hypertension", "2025-12-05", sched)  # after the window's last day
        c.follow_up(a, "p8", "hypertension", "2025-11-20", cancelled)  # cancelled: not counted
        c.follow_up(a, "p3", "hypertension", "2024-11-30", done, at("2024-11-30"), bp=(150, 90))  # before the window
        c.reading(a, "p2", at("2025-10-20"), bp=(135, 85))
        c.reading(a, "p4", at("2025-10-15"), bp=(130, 90))
        c.reading(a, "p4", at("2025-11-25"), bp=(120, 70), setting=Setting.self_device)
        c.reading(a, "p4", at("2025-11-20"), fpg=5.0, setting=Setting.home_visit)
        c.reading(a, "p11", at("2025-11-11"), bp=(130, 80))
        c.reading(a, "p7", at("2025-11-01"), bp=(120, 80))
        c.reading(a, "p6", at("2024-11-30", "23:00"), bp=(130, 80))
        c.reading(b, "q1", at("2025-11-01"), bp=(120, 80))
        c.reading(b, "q2", at("2025-10-01"), bp=(125, 80))
        # registered populations: 屯里镇 100 hypertension (2024's 90 and 2026's 120 are not the end's year),
        # 40 diabetes; 曲沃县 50 hypertension, loaded for the county
        session.add_all([Population(region_code="141002100", priority_group="hypertension", year=2025, persons=100),
                         Population(region_code="141002100", priority_group="hypertension", year=2024, persons=90),
                         Population(region_code="141002100", priority_group="hypertension", year=2026, persons=120),
                         Population(region_code="141002100", priority_group="diabetes", year=2025, persons=40),
                         Population(region_code="141021", priority_group="hypertension", year=2024, persons=50)])
    return c


def _admin(app, client, username: str, institution: str) -> dict[str, str]:
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, username, [Role.health_admin], institution, PASSWORD)
    return login(client, username)


def _stats(client, headers, query: str = "", window: str = WINDOW) -> dict:
    response = client.get(f"/api/v1/stats/family-doctor?{window}&{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _coverage(figures: dict, group: str) -> dict:
    return next(row for row in figures["coverage"] if row["priority_group"] == group)


HIDDEN_HEARTS = {"registered": None, "controlled": None, "controlled_share": None, "no_visit_3m": None,
                 "no_visit_3m_share": None, "lost_to_follow_up": None, "lost_to_follow_up_share": None,
                 "suppressed": True}


def test_the_city_administrator_sees_the_hand_computed_hearts_figures(client, as_user, cohort, platform_db):
    body = _stats(client, as_user("healthadmin"))
    assert (body["since"], body["until"], body["group_by"], body["min_cell"], body["groups"]) == (
        "2024-11-30T16:00:00+00:00", "2025-11-30T16:00:00+00:00", [], 5, [])
    total = body["total"]
    # registered 12: p1-p6, p9-p11 (9) and q1-q3 (3); controlled p1 p2 p10 q1 q2 = 5/12; no visit in 3 months
    # p5 p6 p9 q3 = 4/12; lost p6 q3 = 2/12
    assert total["hypertension"] == {
        "registered": 12, "controlled": 5, "controlled_share": 0.4167, "no_visit_3m": 4, "no_visit_3m_share": 0.3333,
        "lost_to_follow_up": 2, "lost_to_follow_up_share": 0.1667, "suppressed": False}
    # registered 5 (d1-d5); controlled d1 = 1/5; no visit d4 d5 = 2/5; lost d5 = 1/5
    assert total["diabetes"] == {
        "registered": 5, "controlled": 1, "controlled_share": 0.2, "no_visit_3m": 2, "no_visit_3m_share": 0.4,
        "lost_to_follow_up": 1, "lost_to_follow_up_share": 0.2, "suppressed": False}
    # held at E: p1-p7 p9-p11 (10), d1-d5 (5), q1-q3 (3) = 18; signed in the window: all but p6's first = 19
    assert total["contracts"] == {"active": 18, "signed": 19, "suppressed": False}
    # due F1-F15 = 15; late F3 F4, never done F15: 12/15
    assert total["follow_ups"] == {"due": 15, "done_on_time": 12, "on_time_share": 0.8, "suppressed": False}
    # hypertension group held: 10 + 3 = 13 over 100 (屯里镇 2025) + 50 (曲沃县, latest year 2024) = 150
    assert _coverage(total, "hypertension") == {"priority_group": "hypertension", "persons": 13, "population": 150,
                                                "coverage": 0.0867, "suppressed": False}
    assert _coverage(total, "diabetes") == {"priority_group": "diabetes", "persons": 5, "population": 40,
                                            "coverage": 0.125, "suppressed": False}
    assert _coverage(total, "elderly_65") == {"priority_group": "elderly_65", "persons": None, "population": None,
                                              "coverage": None, "suppressed": True}  # 3 persons
    assert _coverage(total, "pregnant") == {"priority_group": "pregnant", "persons": 0, "population": None,
                                            "coverage": None, "suppressed": False}
    platform_db.rollback()
    (event,) = platform_db.scalars(select(AuditEvent).where(
        AuditEvent.resource_type == "FamilyDoctorStatistics")).all()
    assert (event.username, event.action, event.outcome, event.patient) == ("healthadmin", "read", "success", None)
    assert "group_by= groups=0" in event.detail
    assert cohort.person["p1"] not in str(body)


def test_a_paper_contract_entered_late_counts_from_the_day_it_began(client, as_user, cohort, platform_db):
    """p12 signed on paper on 2025-03-01, entered on 2025-11-20 with a controlled visit on 2025-11-21: registered
    (in effect more than 3 months before E) and controlled, so 6 of 13; held, and signed in the window."""
    with session_scope(platform_db.get_bind()) as session:
        team = session.scalars(select(Team).where(Team.code == "T-YAODU")).one()
        cohort.session = session
        cohort.sign(team, "p12", ["basic", "hypertension"], ["hypertension"], "2025-11-20")
        session.get(Contract, cohort.contract["p12"]).starts_on = date(2025, 3, 1)
        cohort.follow_up(team, "p12", "hypertension", "2025-11-21", FollowUpStatus.done, at("2025-11-21"),
                         bp=(130, 80))
    total = _stats(client, as_user("healthadmin"))["total"]
    assert (total["hypertension"]["registered"], total["hypertension"]["controlled"]) == (13, 6)
    assert total["contracts"] == {"active": 19, "signed": 20, "suppressed": False}


def test_by_team_the_small_team_is_suppressed(client, as_user, cohort):
    body = _stats(client, as_user("healthadmin"), "group_by=team")
    quwo, yaodu = body["groups"]
    assert (yaodu["team"], yaodu["team_name"], quwo["team"]) == ("T-YAODU", "屯里一队", "T-QUWO")
    # T-YAODU: 9 registered; controlled p1 p2 p10 = 3/9, no visit p5 p6 p9 = 3/9, lost p6 = 1/9
    assert yaodu["hypertension"] == {
        "registered": 9, "controlled": 3, "controlled_share": 0.3333, "no_visit_3m": 3, "no_visit_3m_share": 0.3333,
        "lost_to_follow_up": 1, "lost_to_follow_up_share": 0.1111, "suppressed": False}
    assert yaodu["contracts"] == {"active": 15, "signed": 16, "suppressed": False}
    assert _coverage(yaodu, "hypertension")["population"] is None  # a team has no registered population
    # T-QUWO: 3 contracts, 3 registered: every block with persons is a small cell
    assert quwo["hypertension"] == HIDDEN_HEARTS
    assert quwo["contracts"] == {"active": None, "signed": None, "suppressed": True}
    assert quwo["follow_ups"] == {"due": 0, "done_on_time": 0, "on_time_share": None, "suppressed": False}


def test_by_county_and_township_coverage_has_its_population(client, as_user, cohort):
    counties = _stats(client, as_user("healthadmin"), "group_by=county")["groups"]
    assert [(g["county"], g["county_name"]) for g in counties] == [("141002", "尧都区"), ("141021", "曲沃县")]
    # 尧都区 has no row of its own: the sum of its townships, 屯里镇's 100; 10 persons
    assert _coverage(counties[0], "hypertension") == {"priority_group": "hypertension", "persons": 10,
                                                      "population": 100, "coverage": 0.1, "suppressed": False}
    assert _coverage(counties[1], "hypertension")["suppressed"] is True
    townships = _stats(client, as_user("healthadmin"), "group_by=township")["groups"]
    assert [(g["township"], g["township_name"]) for g in townships] == [("141002100", "屯里镇"),
                                                                         ("141021101", "史村镇")]
    assert _coverage(townships[0], "diabetes")["coverage"] == 0.125  # 5 / 40


def test_by_month_states_are_taken_at_each_month_end(client, as_user, cohort):
    body = _stats(client, as_user("healthadmin"), "group_by=team,month",
                  f"since=2025-10-01T00:00:00%2B08:00&{UNTIL}")
    months = {(g["team"], g["month"]): g for g in body["groups"]}
    assert sorted(months) == [("T-QUWO", "2025-10"), ("T-QUWO", "2025-11"), ("T-YAODU", "2025-10"),
                              ("T-YAODU", "2025-11")]
    october = months[("T-YAODU", "2025-10")]
    # at 1 November: registered p1-p6 p8-p11 = 10 (p8 not yet terminated, p7 too recent); last visit since 1 August:
    # p1 F1 150/95 no, p2 V 135/85 yes, p4 V 130/90 no, p10 F9 yes -> 2/10; no visit p3 p5 p6 p8 p9 p11 = 6/10;
    # lost (nothing since 1 November 2024): p8, p11 = 2/10 (p6's reading of 30 November 2024 still counts)
    assert october["hypertension"] == {
        "registered": 10, "controlled": 2, "controlled_share": 0.2, "no_visit_3m": 6, "no_visit_3m_share": 0.6,
        "lost_to_follow_up": 2, "lost_to_follow_up_share": 0.2, "suppressed": False}
    assert october["follow_ups"]["suppressed"] is True  # F1 F6 F12: 3 due in October
    november = months[("T-YAODU", "2025-11")]
    # due in November: F2 F3 F4 F8 F10 F11 F13 F15 = 8, on time F2 F8 F10 F11 F13 = 5/8
    assert november["follow_ups"] == {"due": 8, "done_on_time": 5, "on_time_share": 0.625, "suppressed": False}
    assert november["hypertension"]["controlled"] == 3


def test_a_county_administrator_sees_only_their_county(app, client, cohort):
    yaodu = _stats(client, _admin(app, client, "yaodu.healthadmin", "YAODU-CH"), "group_by=team")
    assert [g["team"] for g in yaodu["groups"]] == ["T-YAODU"]
    assert yaodu["total"]["hypertension"]["registered"] == 9
    assert yaodu["total"]["contracts"] == {"active": 15, "signed": 16, "suppressed": False}
    quwo = _stats(client, _admin(app, client, "quwo.healthadmin", "QUWO-CH"), "group_by=team")
    assert [g["team"] for g in quwo["groups"]] == ["T-QUWO"]
    assert quwo["total"]["hypertension"] == HIDDEN_HEARTS  # their 3 residents only, a small cell
    assert quwo["total"]["diabetes"]["registered"] == 0 and quwo["total"]["follow_ups"]["due"] == 0


def test_a_clinician_is_refused_and_audited(client, as_user, cohort, platform_db):
    response = client.get(f"/api/v1/stats/family-doctor?{UNTIL}&group_by=nonsense", headers=as_user("yaodu.fd"))
    assert response.status_code == 403
    assert "registered" not in response.get_data(as_text=True)
    platform_db.rollback()
    assert platform_db.scalars(select(AuditEvent.outcome).where(AuditEvent.username == "yaodu.fd",
                                                                AuditEvent.outcome == "denied")).all()
    assert client.get("/api/v1/stats/family-doctor").status_code == 401


def test_a_bad_window_is_named(client, as_user, cohort):
    response = client.get("/api/v1/stats/family-doctor?since=2025-12-02T00:00:00%2B08:00&" + UNTIL,
                          headers=as_user("healthadmin"))
    assert response.status_code == 422
    assert "since" in str(response.get_json())
    response = client.get("/api/v1/stats/family-doctor?group_by=village", headers=as_user("healthadmin"))
    assert response.status_code == 422


def test_no_region_no_figures(app, cohort):
    window = Window(at("2024-12-01", "00:00").astimezone(UTC), at("2025-12-01", "00:00").astimezone(UTC), SH)
    with session_scope(app.extensions["hie.engines"].platform) as session:
        empty = family_doctor_figures(session, set(), window)
        county = family_doctor_figures(session, {"141021", "141021101"}, window)
    assert empty["total"]["contracts"] == {"active": 0, "signed": 0, "suppressed": False}
    assert county["total"]["contracts"]["suppressed"] is True
    assert _coverage(county["total"], "hypertension")["population"] == 50


def test_population_import_loads_all_rows_or_none(app, client, home, tmp_path, monkeypatch, platform_db):
    for name, value in hie_environ(home).items():
        monkeypatch.setenv(name, value)

    @click.group()
    def family_doctor() -> None:
        """The module's group, as the CLI mounts it."""

    register_population(family_doctor)
    good = tmp_path / "good.csv"
    good.write_text("region_code,priority_group,year,persons\n141002100,hypertension,2025,1200\n"
                    "141002,diabetes,2025,300\n141002100,hypertension,2025,1250\n", encoding="utf-8")
    result = CliRunner().invoke(family_doctor, ["population", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert "2 population row(s) loaded" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("region_code,priority_group,year,persons\n141002,diabetes,2025,301\n"
                   "999999,diabetes,2025,1\n141002,martians,2025,1\n141002,diabetes,20x5,1\n", encoding="utf-8")
    result = CliRunner().invoke(family_doctor, ["population", "import", str(bad)])
    assert result.exit_code == 1
    assert "line 3: region_code '999999'" in result.output and "line 4: priority_group 'martians'" in result.output
    assert "line 5: year '20x5'" in result.output and "3 bad row(s); nothing loaded" in result.output
    rows = platform_db.execute(select(Population.region_code, Population.priority_group, Population.persons)
                               .order_by(Population.region_code)).all()
    assert rows == [("141002", "diabetes", 300), ("141002100", "hypertension", 1250)]
