"""Demo family-doctor care: three teams, a few hundred contracted residents with a year of readings and chronic-disease
follow-ups (controlled, not controlled, urgent, lost to follow-up), health-education articles, and the populations
the coverage figures divide by. Everything goes through the module's own services, as a request would."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.exchange.demo_data import GIVEN, MOBILE_PREFIXES, SURNAMES, demo_people, resident_record
from hie.exchange.resources import local_zone
from hie.family_doctor import education, followups, services, teams, vitals
from hie.family_doctor.models import Condition, Contract, FollowUp, Population, Team, TeamRole
from hie.patients import services as patients
from hie.patients.models import Patient
from hie.platform.auth import accounts
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import session_scope
from hie.platform.scripted import identity_of, in_request
from hie.platform.standards import check_digit
from hie.tenants.demo import DEMO_PASSWORD, login_line
from hie.tenants.models import Institution
from hie.tenants.services import tenant_session

SEED = 20261130
RESIDENT = "yaodu.resident"
# username, platform role, institution, display name
STAFF: tuple[tuple[str, Role, str, str], ...] = (
    ("yaodu.t1.nurse", Role.nurse, "YAODU-T1", "刘护士"),
    ("yaodu.publichealth", Role.nurse, "YAODU-T1", "孙公卫医师"),
    ("yaodu.village1", Role.family_doctor, "YAODU-T1-V1", "郭村医"),
    ("yaodu.t1.doctor2", Role.family_doctor, "YAODU-T1", "张医生"),
    ("yaodu.village2", Role.family_doctor, "YAODU-T1-V2", "段村医"),
    ("quwo.familydoctor", Role.family_doctor, "QUWO-T1", "贾医生"),
)


@dataclass(frozen=True)
class DemoTeam:
    """A team, the villages it serves, its members, and the village clinic whose new residents it signs."""

    code: str
    name: str
    institution: str
    areas: tuple[str, ...]
    members: tuple[tuple[str, TeamRole], ...]
    village: tuple[str, str, str] | None  # (clinic code, village doctor, village name) registering new residents
    county: str
    township: str


TEAMS = (
    DemoTeam("YAODU-T1-A", "屯里镇家庭医生一队（东关村）", "YAODU-T1", ("141002100201",),
             (("yaodu.familydoctor", TeamRole.lead_doctor), ("yaodu.t1.nurse", TeamRole.nurse),
              ("yaodu.publichealth", TeamRole.public_health), ("yaodu.village1", TeamRole.village_doctor)),
             ("YAODU-T1-V1", "yaodu.village1", "东关村"), "尧都区", "屯里镇"),
    DemoTeam("YAODU-T1-B", "屯里镇家庭医生二队（南庄村）", "YAODU-T1", ("141002100202",),
             (("yaodu.t1.doctor2", TeamRole.lead_doctor), ("yaodu.village2", TeamRole.village_doctor)),
             ("YAODU-T1-V2", "yaodu.village2", "南庄村"), "尧都区", "屯里镇"),
    DemoTeam("QUWO-T1-A", "史村镇家庭医生团队", "QUWO-T1", ("141021100201", "141021100202"),
             (("quwo.familydoctor", TeamRole.lead_doctor),), None, "曲沃县", "史村镇"),
)
NEW_RESIDENTS = 70  # registered afresh per team, beside the township centre's own demo patients
COUNTY_CODES = {"尧都区": "141002", "曲沃县": "141021"}
# (title, tags, body): what the township's public-health physician sends the contracted residents
ARTICLES = (
    ("高血压患者冬季注意事项", ["hypertension"],
     "## 冬季血压容易升高\n\n- 每天早晚各测一次血压，记录下来，随访时带给家庭医生。\n- 按时服药，不要自行停药。\n"
     "- 清淡饮食，每天食盐不超过5克。\n- 出现剧烈头痛、胸闷、视物模糊时立即就医或拨打120。"),
    ("糖尿病足的日常护理", ["diabetes"],
     "## 每天检查双脚\n\n1. 温水洗脚，水温不超过37℃。\n2. 擦干趾缝，涂抹润肤霜。\n3. 发现破溃、红肿及时找家庭医生。"),
    ("老年人防跌倒", ["elderly_65"],
     "## 居家防跌倒\n\n- 地面保持干燥，卫生间加装扶手。\n- 起床做到三个半分钟：醒后躺半分钟、坐半分钟、站半分钟。"),
    ("流感季节，签约居民免费接种提醒", [],
     "屯里镇卫生院已到流感疫苗，签约居民可预约接种。请携带身份证到卫生院预防接种门诊。"),
)


def _people(rng: random.Random, spec: DemoTeam, village: str, clinic: str, today: date,
            taken: set[str]) -> list[dict[str, Any]]:
    """New residents of one village: mostly older adults, some young children and pregnant women."""
    county, township, rows = spec.county, spec.township, []
    while len(rows) < NEW_RESIDENTS:
        kind = rng.random()
        sex = "F" if kind > 0.94 else rng.choice("MF")
        age = rng.randint(1, 6) if kind < 0.04 else rng.randint(24, 34) if kind > 0.94 else rng.randint(40, 88)
        birth = date(today.year - age, rng.randint(1, 12), rng.randint(1, 28))
        body = f"{COUNTY_CODES[county]}{birth:%Y%m%d}{rng.randrange(500, 999):03d}"
        if body in taken or (int(body[-1]) % 2 == 1) != (sex == "M"):
            continue
        taken.add(body)
        rows.append({"mrn": f"{clinic.replace('-', '')}{900000 + len(rows)}", "sex": sex,
                     "name": rng.choice(SURNAMES) + rng.choice(GIVEN[sex]), "birth_date": birth,
                     "id_number": body + check_digit(body),
                     "phone": rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}",
                     "address": f"山西省临汾市{county}{township}{village}{rng.randint(1, 98)}号"})
    return rows


def _age(birth: date | None, today: date) -> int:
    return 0 if birth is None else today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _terms(rng: random.Random, birth: date | None, sex: str, today: date) -> dict[str, Any]:
    """Packages and priority groups as a township doctor would sign them for this person."""
    age = _age(birth, today)
    htn = age >= 35 and rng.random() < 0.15 + age / 160
    dm = age >= 35 and rng.random() < 0.06 + age / 500
    groups = [g for g, yes in (("elderly_65", age >= 65), ("hypertension", htn), ("diabetes", dm),
                               ("children_0_6", age <= 6), ("pregnant", sex == "F" and 22 <= age <= 35),
                               ("disabled", age >= 60 and rng.random() < 0.04)) if yes]
    packages = ["basic", *[p for p, g in (("hypertension", "hypertension"), ("diabetes", "diabetes"),
                                          ("elderly", "elderly_65"), ("children", "children_0_6"),
                                          ("maternal", "pregnant")) if g in groups]]
    return {"packages": packages, "priority_groups": groups}


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=local_zone()).astimezone(UTC)


def _values(rng: random.Random, condition: Condition, profile: str, last: bool) -> dict[str, float]:
    """One visit's readings for a profile: mostly controlled, poorly controlled, or in danger at the last visit."""
    poor = profile == "poor" and rng.random() < 0.7
    if profile == "urgent" and last:
        systolic, diastolic = rng.randint(181, 196), rng.randint(100, 114)
    elif poor:
        systolic, diastolic = rng.randint(142, 168), rng.randint(86, 102)
    else:
        systolic, diastolic = rng.randint(112, 138), rng.randint(68, 88)
    values = {"systolic": systolic, "diastolic": min(diastolic, systolic - 25), "heart_rate": rng.randint(60, 92),
              "weight": round(rng.uniform(52, 82), 1)}
    if condition is Condition.diabetes:
        values["fasting_glucose"] = round(rng.uniform(7.4, 11.5) if poor else rng.uniform(5.2, 6.9), 1)
    return values


def _visit(condition: Condition, contract_id: str, day: date, values: dict[str, float],
           rng: random.Random) -> dict[str, Any]:
    return {"contract_id": contract_id, "condition": condition, "visited_at": _at(day, rng.randint(8, 16)),
            "method": rng.choice(("clinic", "clinic", "home")), "vitals": values,
            "medication_adherence": rng.choice(("regular", "regular", "regular", "intermittent")),
            "lifestyle": {"smoking_per_day": rng.choice((0, 0, 0, 5, 10)), "exercise_per_week": rng.randint(0, 7),
                          "salt_intake": rng.choice(("light", "moderate", "moderate", "heavy"))},
            "medications": [{"name": "氨氯地平片", "dose": "5mg", "frequency": "qd"}]
            if condition is Condition.hypertension else [{"name": "二甲双胍片", "dose": "0.5g", "frequency": "tid"}]}


class _Player:
    """Signs the residents and plays their year of care, each step one unit of work of the doctor who did it."""

    def __init__(self, app: Flask, rng: random.Random, today: date) -> None:
        self.app, self.rng, self.today = app, rng, today
        self.visits = self.readings = 0

    def resident(self, doctor: Identity, patient_id: str, terms: dict[str, Any], profile: str) -> None:
        """Sign one resident and play their year: one unit of work, as a doctor entering a year's paper forms."""
        lost = profile == "lost"
        started = self.today - timedelta(days=self.rng.randint(400, 520) if lost else self.rng.randint(200, 360))
        body = {"patient_id": patient_id, **terms, "starts_on": started, "term_days": 730 if lost else 365}
        in_request(self.app, doctor, lambda: self._care_year(doctor, services.sign(doctor, body), profile))

    def _care_year(self, doctor: Identity, contract: Contract, profile: str) -> None:
        """Follow-ups for each chronic condition by the verdicts; an annual check for everyone else."""
        conditions = [Condition(c) for c in services.conditions_of(contract.packages)]
        if not conditions:
            entry = {"client_id": f"demo-check-{contract.id}", "contract_id": contract.id, "setting": "clinic",
                     "taken_at": _at(contract.starts_on + timedelta(days=self.rng.randint(10, 60)), 9),
                     **_values(self.rng, Condition.hypertension, "regular", False),
                     "height": self.rng.randint(150, 178), "waist": self.rng.randint(70, 98)}
            vitals.record_entry(doctor, entry)
            self.readings += 1
            return
        for condition in conditions:
            day = contract.starts_on + timedelta(days=self.rng.randint(3, 20))
            end = contract.starts_on + timedelta(days=60) if profile == "lost" else \
                self.today - timedelta(days=self.rng.randint(100, 130)) if profile == "overdue" else self.today
            while day < end:
                last = day + timedelta(days=14) >= end
                body = _visit(condition, contract.id, day, _values(self.rng, condition, profile, last), self.rng)
                follow_up, _ = followups.record(doctor, body)
                self.visits += 1
                gap = 90 if follow_up.classification.value == "controlled" else 14
                day += timedelta(days=gap + self.rng.choice((-6, -3, -1, 0, 0, 2, 5)))  # mostly on time

    def self_readings(self, resident: Identity) -> None:
        """The demo resident's own home blood pressure, about weekly for three months, uploaded from their device."""
        entries = [{"client_id": f"home-bp-{day.isoformat()}", "taken_at": _at(day, 7),
                    "systolic": self.rng.randint(128, 146), "diastolic": self.rng.randint(78, 92),
                    "heart_rate": self.rng.randint(64, 80)}
                   for day in (self.today - timedelta(days=7 * week + 1) for week in range(13))]
        in_request(self.app, resident, lambda: [vitals.record_entry(resident, e, self_reported=True) for e in entries])
        self.readings += len(entries)


def _add_staff_and_teams(app: Flask) -> None:
    with session_scope(app.extensions["hie.engines"].platform) as session:
        for username, role, institution, display in STAFF:
            if session.scalar(select(User.id).where(User.username == username)) is None:
                accounts.add_user(session, username, [role], institution, DEMO_PASSWORD, display)
        for spec in TEAMS:
            institution = session.scalars(select(Institution).where(Institution.code == spec.institution)).one()
            team = teams.add_team(session, spec.code, spec.name, institution, list(spec.areas))
            for username, team_role in spec.members:
                teams.add_member(session, team, username, team_role)


def _township_patients(app: Flask, session: Session) -> list[tuple[str, date | None, str]]:
    """(patient id, birth date, sex) of YAODU-T1's own demo patients: they sign with the township's teams."""
    clinic = session.scalars(select(Institution).where(Institution.code == "YAODU-T1")).one()
    with tenant_session(app.extensions["hie.engines"], clinic.tenant) as shard:
        rows = shard.execute(select(Patient.id, Patient.birth_date, Patient.sex, Patient.mrn)
                             .where(Patient.institution_id == clinic.id).order_by(Patient.mrn)).all()
    resident_mrn = resident_record()[1]  # the demo resident's record first: they get a contract of their own
    return [(r.id, r.birth_date, r.sex) for r in sorted(rows, key=lambda r: r.mrn != resident_mrn)]


def _profile(rng: random.Random) -> str:
    draw = rng.random()
    return "regular" if draw < 0.55 else "poor" if draw < 0.75 else "overdue" if draw < 0.86 else \
        "lost" if draw < 0.95 else "urgent"


def _populations(app: Flask, year: int, signed: dict[tuple[str, str], int]) -> None:
    """The demo townships' registered populations of each group: the figures' coverage denominators (made up for
    the demo, about twice the signed residents, as a township half way to its target would have)."""
    with session_scope(app.extensions["hie.engines"].platform) as session:
        for (region, group), persons in signed.items():
            if session.get(Population, (region, group, year)) is None:
                session.add(Population(region_code=region, priority_group=group, year=year,
                                       persons=max(persons * 2 + 3, 10)))


def _articles(app: Flask, writer: Identity) -> int:
    for title, tags, body in ARTICLES:
        article = in_request(app, writer, lambda t=title, g=tags, b=body: education.create(
            writer, {"title": t, "tags": g, "body": b}))
        in_request(app, writer, lambda a=article.id: education.publish(writer, a))
    return len(ARTICLES)


def add_demo_family_doctor(app: Flask, echo: Callable[[str], None]) -> None:
    """The family-doctor module's demo step: once, so a rerun adds nothing."""
    started, engines = time.monotonic(), app.extensions["hie.engines"]
    with Session(engines.platform) as session:
        if session.scalar(select(Team.id).where(Team.code == TEAMS[0].code)) is not None:
            count = session.scalar(select(func.count()).select_from(Contract)) or 0
            echo(f"demo family doctor: already made ({count} contracts)")
            return
    _add_staff_and_teams(app)
    rng, today = random.Random(SEED), services.local_today()
    player = _Player(app, rng, today)
    taken = {p.demographics.id_number[:17] for p in demo_people()}
    signed: dict[tuple[str, str], int] = {}
    with Session(engines.platform, expire_on_commit=False) as session:
        who = {name: identity_of(session, name, "demo-family-doctor")
               for name in ["yaodu.familydoctor", "yaodu.publichealth", RESIDENT, *(s[0] for s in STAFF)]}
        plan: list[tuple[Identity, str, date | None, str, DemoTeam]] = [
            (who["yaodu.t1.doctor2" if index % 3 == 1 else "yaodu.familydoctor"], patient_id, birth, sex,
             TEAMS[1] if index % 3 == 1 else TEAMS[0]) for index, (patient_id, birth, sex) in
            enumerate(_township_patients(app, session))]
    for spec in TEAMS:
        clinic, doctor_name, village = spec.village or (spec.institution, spec.members[0][0], "东关村")
        doctor = who[doctor_name]
        for person in _people(rng, spec, village, clinic, today, taken):
            patient = in_request(app, doctor, lambda d=doctor, p=person: patients.register(d, p))
            plan.append((doctor, patient.id, person["birth_date"], person["sex"], spec))
    for index, (doctor, patient_id, birth, sex, spec) in enumerate(plan):
        terms = _terms(rng, birth, sex, today)
        if index == 0:  # the demo resident: hypertensive, followed closely
            elderly = _age(birth, today) >= 65
            terms = {"packages": ["basic", "hypertension", *(["elderly"] if elderly else [])],
                     "priority_groups": ["hypertension", *(["elderly_65"] if elderly else [])]}
        player.resident(doctor, patient_id, terms, "regular" if index == 0 else _profile(rng))
        township = "141002100" if spec.institution == "YAODU-T1" else "141021100"
        for group in terms["priority_groups"]:
            signed[(township, group)] = signed.get((township, group), 0) + 1
    player.self_readings(who[RESIDENT])
    _populations(app, today.year, signed)
    articles = _articles(app, who["yaodu.publichealth"])
    with Session(engines.platform) as session:
        overdue = session.scalar(select(func.count()).select_from(FollowUp).where(
            FollowUp.status == "scheduled", FollowUp.due_on < today)) or 0
    echo(f"demo family doctor: {len(TEAMS)} teams, {len(plan)} contracted residents, {player.visits} follow-ups "
         f"({overdue} now overdue), {player.readings} other readings, {articles} articles "
         f"in {time.monotonic() - started:.1f} s")


def demo_logins() -> list[str]:
    """The family-doctor accounts in the printed table, and where to look."""
    return [*(login_line(username, role, institution) for username, role, institution, _ in STAFF),
            "Family doctor: GET /api/v1/family-doctor/worklist as yaodu.familydoctor; the resident's own portal "
            "GET /api/v1/me/contract, /me/vitals, /me/follow-ups as yaodu.resident; figures "
            "GET /api/v1/stats/family-doctor as healthadmin."]
