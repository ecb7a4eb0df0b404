"""Demo patients for `hie demo`, stored through transaction Bundles as the demo clinicians would send them."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from flask import Flask, g
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hie.empi.models import ReviewItem, ReviewStatus
from hie.exchange import store
from hie.exchange.bundles import transaction
from hie.exchange.demo_records import GLUCOSE, HBA1C, PANELS, Demographics, RecordBuilder
from hie.patients.models import Patient
from hie.platform import care
from hie.platform.audit.services import flush_pending
from hie.platform.auth import accounts
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import finish_unit_of_work, platform_session, session_scope
from hie.platform.jobs.services import discard_uncommitted, dispatch_committed
from hie.platform.standards import check_digit
from hie.tenants.demo import DEMO_PASSWORD, login_line
from hie.tenants.models import Institution
from hie.tenants.services import resolved_url, tenant_session

SEED = 20261101
PATIENTS = 300
LOOK_ALIKE = ("QUWO-CH", "QUWOCH900001")  # a namesake without an ID card, left for a steward to review
TODAY = date(2026, 10, 31)
# Each institution's records are sent by its demo clinician, so the audit and access checks are real.
WRITERS = {"YAODU-T1": "yaodu.familydoctor", "YAODU-CH": "yaodu.doctor", "QUWO-CH": "quwo.doctor",
           "LF-PH": "specialist"}
CARE_KINDS = {"YAODU-T1": care.CareKind.contract, "LF-PH": care.CareKind.referral,
              "YAODU-CH": care.CareKind.consultation, "QUWO-CH": care.CareKind.consultation}
COUNTIES = {  # GB/T 2260 code: county, townships (real ones of each county)
    "141002": ("尧都区", ("屯里镇", "乔李镇", "大阳镇", "县底镇", "刘村镇", "金殿镇", "吴村镇", "尧庙镇", "段店乡")),
    "141021": ("曲沃县", ("乐昌镇", "史村镇", "曲村镇", "高显镇", "里村镇", "北董乡", "杨谈乡")),
    "141022": ("翼城县", ("唐兴镇", "南梁镇", "里砦镇", "隆化镇")),
    "141023": ("襄汾县", ("新城镇", "赵康镇", "汾城镇", "南贾镇", "襄陵镇")),
    "141024": ("洪洞县", ("大槐树镇", "甘亭镇", "曲亭镇", "苏堡镇", "赵城镇")),
    "141081": ("侯马市", ("上马街道", "张村街道", "新田乡", "凤城乡")),
    "141082": ("霍州市", ("鼓楼街道", "白龙镇", "辛置镇", "大张镇")),
}
VILLAGES = ("东关村", "南庄村", "西街村", "北王村", "李家庄村", "段家庄村", "郭家村", "下靳村", "上官村", "东张村")
SURNAMES = "王李张刘陈杨赵郭贾段薛乔吕梁韩武宋卫柴史"
GIVEN = {"M": ("建国", "志强", "海军", "永平", "国栋", "晓东", "俊杰", "文斌", "宏伟", "卫东", "红军", "保平",
               "天明", "建军", "鹏飞", "金生", "福来", "树林"),
         "F": ("秀英", "桂兰", "玉梅", "丽娟", "春花", "晓燕", "美玲", "海霞", "红梅", "淑芳", "彩霞", "丽萍",
               "雪梅", "慧敏", "芳", "翠兰", "月娥", "爱琴")}
RESIDENT = "yaodu.resident"
MOBILE_PREFIXES = ("139", "138", "135", "136", "150", "152", "158", "187", "189", "133", "177", "183")


@dataclass(frozen=True)
class DemoPerson:
    """A person, the institutions that register them, and which of those get a care relationship."""

    demographics: Demographics
    registrations: tuple[tuple[str, str], ...]  # (institution code, MRN)
    cared_by: tuple[str, ...]


class _People:
    """Seeded demographics with unique resident IDs and phones, as the EMPI would see real ones."""

    def __init__(self, seed: int) -> None:
        self.rng, self.ids, self.phones = random.Random(seed), set[str](), set[str]()
        self.mrns: dict[str, int] = {}

    def _id_number(self, county: str, birth: date, sex: str) -> str:
        while True:
            sequence = self.rng.randrange(1, 500) * 2 - (sex == "M")
            body = f"{county}{birth:%Y%m%d}{sequence:03d}"
            if body not in self.ids:
                self.ids.add(body)
                return body + check_digit(body)

    def _phone(self) -> str:
        while True:
            phone = self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"
            if phone not in self.phones:
                self.phones.add(phone)
                return phone

    def _mrn(self, institution: str) -> str:
        self.mrns[institution] = self.mrns.get(institution, 0) + 1
        return f"{institution.replace('-', '')}{100000 + self.mrns[institution]}"

    def _demographics(self, county: str, township: str) -> Demographics:
        rng = self.rng
        sex = rng.choice("MF")
        age = rng.randint(35, 86)
        birth = date(TODAY.year - age, rng.randint(1, 12), rng.randint(1, 28))
        address = f"山西省临汾市{COUNTIES[county][0]}{township}{rng.choice(VILLAGES)}{rng.randint(1, 98)}号"
        return Demographics(name=rng.choice(SURNAMES) + rng.choice(GIVEN[sex]), sex=sex, birth=birth,
                            id_number=self._id_number(county, birth, sex), phone=self._phone(), address=address,
                            htn=rng.random() < 0.25 + age / 150, dm=rng.random() < 0.1 + age / 400)

    def person(self, index: int) -> DemoPerson:
        """Where a person lives decides where they are seen; about a third also go to the city hospital."""
        rng, draw = self.rng, self.rng.random()
        if index == 0 or draw < 0.40:
            county, township, home = "141002", "屯里镇", "YAODU-T1"
            second = "LF-PH" if index == 0 or rng.random() < 0.45 else "YAODU-CH" if rng.random() < 0.3 else None
        elif draw < 0.58:
            county, home = "141002", "YAODU-CH"
            township = rng.choice(COUNTIES[county][1][1:])
            second = "LF-PH" if rng.random() < 0.35 else None
        elif draw < 0.80:
            county, home = "141021", "QUWO-CH"
            township = rng.choice(COUNTIES[county][1])
            second = "LF-PH" if rng.random() < 0.35 else None
        else:
            county, home, second = rng.choice(("141022", "141023", "141024", "141081", "141082")), "LF-PH", None
            township = rng.choice(COUNTIES[county][1])
        demographics = self._demographics(county, township)
        institutions = (home, second) if second else (home,)
        cared = institutions if second and (index == 0 or rng.random() < 0.7) else ()
        return DemoPerson(demographics, tuple((code, self._mrn(code)) for code in institutions), cared)


def demo_people(count: int = PATIENTS, seed: int = SEED) -> list[DemoPerson]:
    """The same people on every run: the generator is seeded."""
    people = _People(seed)
    return [people.person(index) for index in range(count)]


def resident_record() -> tuple[str, str]:
    """(institution code, MRN) of the demo resident's own record: the first person, at their township centre."""
    return demo_people(1)[0].registrations[0]


def look_alike(people: list[DemoPerson]) -> DemoPerson:
    """Someone with a county-hospital patient's name, sex and birth date, registered in another county without an
    ID card: the EMPI neither links nor ignores such a pair, so the demo's data steward has a review to decide."""
    original = next(p for p in people if p.registrations[0][0] == "YAODU-CH" and len(p.registrations) == 1)
    demographics = replace(original.demographics, id_number="", phone="13703570001",
                           address="山西省临汾市曲沃县乐昌镇东关村1号")
    return DemoPerson(demographics, (LOOK_ALIKE,), ())


def _primary_care(builder: RecordBuilder, rng: random.Random) -> None:
    """Township clinic: chronic-disease follow-ups every quarter, vaccinations, allergies."""
    person = builder.person
    chronic = person.htn or person.dm
    first = TODAY - timedelta(days=rng.randint(120, 200))
    builder.chronic(first, prescribe=True)
    for number in range(2 if chronic else 1):
        day = first + timedelta(days=91 * number + rng.randint(0, 10))
        encounter = builder.encounter(day, reason="慢病随访" if chronic else "健康体检")
        builder.blood_pressure(encounter, day)
        if person.dm:
            builder.lab(HBA1C if number else GLUCOSE, encounter, day.isoformat())
    if rng.random() < 0.3:
        builder.immunization(TODAY - timedelta(days=rng.randint(20, 700)))
    if rng.random() < 0.08:
        builder.allergy(first)


def _hospital(builder: RecordBuilder, rng: random.Random, home: bool, city: bool) -> None:
    """County or city hospital: an outpatient work-up (lab panel or imaging), sometimes an inpatient stay."""
    person = builder.person
    day = TODAY - timedelta(days=rng.randint(60, 500))
    encounter = builder.encounter(day, reason="高血压、糖尿病复诊" if person.htn or person.dm else "门诊就诊")
    builder.chronic(day, prescribe=home)
    if rng.random() < 0.65:
        builder.panel(rng.choice(tuple(PANELS)), encounter, day)
        if person.dm:
            builder.lab(HBA1C, encounter, day.isoformat())
    if rng.random() < 0.3:
        builder.imaging(encounter, day)
    if rng.random() < (0.15 if city else 0.08):
        admitted = day + timedelta(days=rng.randint(20, 50))
        discharged = admitted + timedelta(days=rng.randint(4, 12))
        chronic = [code for key, code in (("htn", "I10"), ("dm", "E11.9")) if getattr(person, key)]
        reasons = chronic or ["J18.9"]  # otherwise admitted with pneumonia, the commonest admission
        stay = builder.encounter(admitted, (discharged - admitted).days, reason="住院治疗")
        builder.panel("24362-6" if chronic else "58410-2", stay, admitted)
        builder.discharge_summary(stay, admitted, discharged, reasons)


def bundle_for(person: DemoPerson, institution: str, mrn: str) -> dict[str, Any]:
    """One institution's transaction Bundle for one person, the same on every run."""
    rng = random.Random(f"{SEED}:{mrn}")
    builder = RecordBuilder(rng, institution, mrn, person.demographics, TODAY)
    if institution == "YAODU-T1":
        _primary_care(builder, rng)
    else:
        _hospital(builder, rng, home=institution == person.registrations[0][0], city=institution == "LF-PH")
    return builder.bundle()


def _writer(session: Session, institution: str) -> Identity:
    """The institution's demo clinician as the access policy sees them after login."""
    user = session.scalars(select(User).where(User.username == WRITERS[institution])).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id=f"demo-data-{user.id}")


def _registered(app: Flask, institution: Institution) -> set[str]:
    """MRNs the institution already holds, so a rerun (or a resumed run) stores nothing twice."""
    engines = app.extensions["hie.engines"]
    with Session(engines.engine(resolved_url(engines.config, institution.tenant))) as shard:
        return set(shard.scalars(select(Patient.mrn).where(Patient.institution_id == institution.id)))


def _store(app: Flask, identity: Identity, bundle: dict[str, Any],
           cared_by: list[tuple[int, care.CareKind]]) -> int:
    """One request's unit of work, finished exactly as the app's after_request finishes it."""
    engines, ring = app.extensions["hie.engines"], app.extensions["hie.keyring"]
    with app.app_context(), app.test_request_context("/fhir", method="POST"):
        g.identity, g.request_id = identity, uuid.uuid4().hex
        try:
            response = transaction(identity, bundle)
            patient_id = response["entry"][0]["resource"]["id"]
            person_id = store.person_of(identity.tenant_code, patient_id)
            for institution_id, kind in cared_by:
                if person_id and not care.has_active(platform_session(), institution_id, person_id):
                    care.grant(platform_session(), institution_id, person_id, kind, source_ref="hie-demo")
            finish_unit_of_work(commit=True)
        except BaseException:
            finish_unit_of_work(commit=False)
            flush_pending(engines.platform, ring, failed=True)
            discard_uncommitted()
            raise
        flush_pending(engines.platform, ring, failed=False)
        dispatch_committed()
    return len(bundle["entry"])


def load_demo_records(app: Flask, echo: Callable[[str], None]) -> None:
    """Give a new user a working exchange at once: patients in several tenants, linked across them."""
    started = time.monotonic()
    engines = app.extensions["hie.engines"]
    with Session(engines.platform, expire_on_commit=False) as session:
        institutions = {i.code: i for i in session.scalars(select(Institution).where(Institution.code.in_(WRITERS)))}
        writers = {code: _writer(session, code) for code in WRITERS}
    done = {code: _registered(app, institution) for code, institution in institutions.items()}
    people = demo_people()
    registrations = resources = 0
    for person in (*people, look_alike(people)):
        last = len(person.registrations) - 1
        for position, (code, mrn) in enumerate(person.registrations):
            if mrn in done[code]:
                continue
            cared = [(institutions[c].id, CARE_KINDS[c]) for c in person.cared_by] if position == last else []
            resources += _store(app, writers[code], bundle_for(person, code, mrn), cared)
            registrations += 1
    if not registrations:
        echo(f"demo records: already loaded ({len(people)} patients)")
        return
    tenants = {writers[code].tenant_code for person in people for code, _ in person.registrations}
    linked = sum(len(person.registrations) > 1 for person in people)
    with Session(engines.platform) as session:
        reviews = session.scalar(select(func.count()).select_from(ReviewItem)
                                 .where(ReviewItem.status == ReviewStatus.open))
    echo(f"demo records: {len(people)} patients, {registrations} registrations at {len(writers)} institutions "
         f"in {len(tenants)} tenants ({linked} registered in two, {sum(bool(p.cared_by) for p in people)} "
         f"with care relationships), {resources} resources in {time.monotonic() - started:.1f} s; "
         f"{reviews} EMPI review(s) open")


def _ensure_resident(app: Flask) -> None:
    """The resident account stands for the first demo person's record at their township centre: registered with
    the EMPI like every record, so the resident sees their records in every institution that holds them."""
    engines = app.extensions["hie.engines"]
    institution_code, mrn = resident_record()
    with session_scope(engines.platform) as session:
        if session.scalar(select(User.id).where(User.username == RESIDENT)) is not None:
            return
        clinic = session.scalars(select(Institution).where(Institution.code == institution_code)).one()
        with tenant_session(engines, clinic.tenant) as shard:
            patient_id = shard.scalars(select(Patient.id).where(Patient.institution_id == clinic.id,
                                                                Patient.mrn == mrn)).one()
            accounts.add_user(session, RESIDENT, [Role.resident], institution_code, DEMO_PASSWORD,
                              patient_id=patient_id, shard=shard)


def build_demo_records(app: Flask, echo: Callable[[str], None]) -> None:
    """The exchange's demo step: the records, then the resident account that stands for one of them."""
    load_demo_records(app, echo)
    _ensure_resident(app)


def demo_logins() -> list[str]:
    """The demo resident's row of the printed logins, and where their records are."""
    return [login_line(RESIDENT, Role.resident, resident_record()[0]),
            "The resident's own record id is patient_id in GET /api/v1/auth/me, their records "
            "GET /fhir/Patient/{patient_id}/$everything."]
