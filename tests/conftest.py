"""Fixtures: a provisioned test region on SQLite (default) or on MariaDB shards plus Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.orm import Session

from hie.consult.models import (
    Attachment,
    Consultation,
    ConsultationStep,
    Opinion,
    Participant,
    SigningKey,
    TeachingInvite,
    TeachingRegistration,
    TeachingSession,
)
from hie.empi.models import (
    BlockingKey,
    MasterPerson,
    MatchModel,
    NotAMatch,
    PersonEvent,
    PersonRecord,
    RegionThresholds,
    ReviewItem,
)
from hie.exchange.models import BulkExport, FhirResource, FhirResourceVersion, FhirToken, RecordLocation
from hie.exchange.search_index import FhirDate
from hie.family_doctor.models import (
    Alert,
    Article,
    Contract,
    Delivery,
    FollowUp,
    Population,
    Team,
    TeamArea,
    TeamMember,
    Vitals,
)
from hie.patients.models import Patient
from hie.patients.name_index import PatientSearchToken
from hie.patients.stats import InstitutionPatientCount
from hie.platform.app import create_app
from hie.platform.audit.models import AuditChainHead, AuditEvent, AuditPending, ShardAuditPending
from hie.platform.audit.services import GENESIS_HASH
from hie.platform.auth import accounts
from hie.platform.auth.models import AuthSession, LoginAlert, LoginThrottle, Role, User, UserRole
from hie.platform.care import CareRelationship
from hie.platform.config import load_config
from hie.platform.db import session_scope
from hie.platform.jobs.models import HandledEvent, PlatformOutboxEvent, TenantOutboxEvent
from hie.referral.models import (
    InstitutionWebhook,
    Notification,
    NotificationRead,
    Referral,
    ReferralDeadline,
    ReferralSlot,
    ReferralStep,
    WebhookDelivery,
)
from hie.tenants import services
from hie.tenants.models import Institution, InstitutionLevel, Region, RegionLevel, Tenant

MYSQL_URL = os.environ.get("HIE_TEST_MYSQL_URL")
REDIS_URL = os.environ.get("HIE_TEST_REDIS_URL")
PASSWORD = "Test-pass-123"
TENANTS = ("linfen", "yaodu", "quwo")
MYSQL_PREFIX = f"hie_test{os.getpid()}_"
SEEDED_REGIONS = ("141000", "141002", "141021", "141002100")

USERS: dict[str, tuple[Role, str]] = {
    "admin": (Role.platform_admin, "LF-HC"),
    "auditor": (Role.auditor, "LF-HC"),
    "healthadmin": (Role.health_admin, "LF-HC"),
    "lfph.specialist": (Role.specialist, "LF-PH"),
    "yaodu.admin": (Role.tenant_admin, "YAODU-CH"),
    "yaodu.itadmin": (Role.institution_admin, "YAODU-CH"),
    "yaodu.doctor": (Role.clinician, "YAODU-CH"),
    "yaodu.nurse": (Role.nurse, "YAODU-CH"),
    "yaodu.fd": (Role.family_doctor, "YAODU-T1"),
    "yaodu.auditor": (Role.auditor, "YAODU-CH"),
    "quwo.doctor": (Role.clinician, "QUWO-CH"),
    "quwo.admin": (Role.tenant_admin, "QUWO-CH"),
    "steward": (Role.data_steward, "LF-HC"),
}


def _drop_mysql_databases() -> None:
    engine = create_engine(MYSQL_URL)
    with engine.begin() as conn:
        pattern = MYSQL_PREFIX.replace("_", "\\_") + "%"
        names = conn.execute(text("SHOW DATABASES LIKE :pattern"), {"pattern": pattern}).scalars().all()
        for name in names:
            conn.execute(text(f"DROP DATABASE `{name}`"))
    engine.dispose()


def hie_environ(home: Path) -> dict[str, str]:
    """The HIE_* variables of the test region, also handed to CLI subprocesses."""
    # The suite logs in hundreds of times a minute: the host's login rate is tested on its own (test_login_bound);
    # requests chain their own audit events, so a test reads them chained (the sequencer thread: test_audit_sequencer).
    env = {"HIE_HOME": str(home), "HIE_SECRET_KEY": "t" * 40, "HIE_LOGIN_RATE": "100000",
           "HIE_AUDIT_CHAIN_INTERVAL": "0"}
    if MYSQL_URL:
        env["HIE_PLATFORM_DB_URL"] = f"{MYSQL_URL}/{MYSQL_PREFIX}platform"
        env["HIE_TENANT_DB_URL_TEMPLATE"] = f"{MYSQL_URL}/{MYSQL_PREFIX}{{tenant}}"
    if REDIS_URL:
        env["HIE_REDIS_URL"] = REDIS_URL
    return env


def _seed(app: Flask) -> None:
    engines = app.extensions["hie.engines"]
    with session_scope(engines.platform) as session:
        services.ensure_region(session, "141000", "临汾市", RegionLevel.city, None)
        services.ensure_region(session, "141002", "尧都区", RegionLevel.county, "141000")
        services.ensure_region(session, "141021", "曲沃县", RegionLevel.county, "141000")
        services.ensure_region(session, "141002100", "屯里镇", RegionLevel.township, "141002")
        for code, region in zip(TENANTS, ("141000", "141002", "141021"), strict=True):
            tenant = services.add_tenant(session, app.config["HIE"], code, code.title(), region)
            services.provision(engines, tenant)
        for code, name, tenant, level in (
            ("LF-PH", "临汾市人民医院", "linfen", InstitutionLevel.tertiary_hospital),
            ("LF-HC", "临汾市卫生健康委员会", "linfen", InstitutionLevel.administration),
            ("YAODU-CH", "尧都区人民医院", "yaodu", InstitutionLevel.secondary_hospital),
            ("YAODU-T1", "屯里镇卫生院", "yaodu", InstitutionLevel.township_health_centre),
            ("QUWO-CH", "曲沃县人民医院", "quwo", InstitutionLevel.secondary_hospital),
        ):
            services.add_institution(session, code, name, tenant, level.value)
        with app.app_context():
            for username, (role, institution) in USERS.items():
                accounts.add_user(session, username, [role], institution, PASSWORD)


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HIE_HOME of the test run."""
    return tmp_path_factory.mktemp("hie-home")


@pytest.fixture(scope="session")
def app(home: Path) -> Iterator[Flask]:
    """One app and one provisioned region for the whole run; each test starts from clean data."""
    if MYSQL_URL:
        _drop_mysql_databases()
    config = load_config(hie_environ(home), argon2_time_cost=1, argon2_memory_kib=1024, testing=True,
                         login_free_failures=3, login_alert_failures=9)
    application = create_app(config)
    with application.app_context():
        services.upgrade_all(application.extensions["hie.engines"])
    _seed(application)
    yield application
    application.extensions["hie.engines"].dispose()
    if MYSQL_URL:
        _drop_mysql_databases()


def wipe(app: Flask) -> None:
    """Delete everything a test may have written, keep the seeded region."""
    engines = app.extensions["hie.engines"]
    with session_scope(engines.platform) as session:
        session.execute(update(MasterPerson).values(merged_into=None))
        session.execute(update(Referral).values(follow_up_of=None))
        session.execute(update(Contract).values(previous_id=None))
        for model in (Opinion, SigningKey, Attachment, Participant, ConsultationStep, Consultation,
                      TeachingRegistration, TeachingInvite, TeachingSession):
            session.execute(delete(model))
        for model in (Delivery, Article, Alert, FollowUp, Vitals, Contract, TeamMember, TeamArea, Team, Population):
            session.execute(delete(model))
        for model in (WebhookDelivery, NotificationRead, Notification, InstitutionWebhook, ReferralStep, Referral,
                      ReferralDeadline, ReferralSlot):
            session.execute(delete(model))
        for model in (AuditEvent, AuditPending, HandledEvent, PlatformOutboxEvent, AuthSession, CareRelationship,
                      InstitutionPatientCount, BlockingKey, ReviewItem, NotAMatch, PersonEvent, PersonRecord,
                      MasterPerson, MatchModel, RegionThresholds, RecordLocation, LoginThrottle, LoginAlert,
                      BulkExport):
            session.execute(delete(model))
        session.execute(delete(User).where(User.username.not_in(list(USERS))))
        session.execute(update(User).values(active=True))
        session.execute(delete(UserRole))
        ids = dict(session.execute(select(User.username, User.id)).all())
        session.add_all(UserRole(user_id=ids[name], role=role) for name, (role, _) in USERS.items())
        session.execute(update(AuditChainHead).values(last_seq=0, last_hash=GENESIS_HASH))
        session.execute(delete(Institution).where(
            Institution.code.not_in(["LF-PH", "LF-HC", "YAODU-CH", "YAODU-T1", "QUWO-CH"])))
        session.execute(delete(Tenant).where(Tenant.code.not_in(list(TENANTS))))
        session.execute(update(Region).where(Region.code.not_in(SEEDED_REGIONS)).values(parent_code=None))
        session.execute(delete(Region).where(Region.code.not_in(SEEDED_REGIONS)))
    for code in TENANTS:
        with session_scope(shard_engine(app, code)) as shard:
            for model in (FhirToken, FhirDate, PatientSearchToken, FhirResourceVersion, FhirResource, Patient):
                shard.execute(delete(model))
            shard.execute(delete(TenantOutboxEvent))
            shard.execute(delete(ShardAuditPending))
    client = app.extensions["hie.redis"]
    if client is not None:
        client.flushdb()


def shard_engine(app: Flask, tenant_code: str):  # noqa: ANN201
    """The engine of one tenant's shard, for asserting what is stored where."""
    engines = app.extensions["hie.engines"]
    return engines.engine(app.config["HIE"].tenant_db_url(tenant_code))


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    """A test client on a clean region."""
    wipe(app)
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture
def platform_db(app: Flask) -> Iterator[Session]:
    """A Session on the platform database for assertions."""
    with Session(app.extensions["hie.engines"].platform) as session:
        yield session


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Authorization headers for a seeded user."""
    response = client.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


@pytest.fixture
def as_user(client: FlaskClient):  # noqa: ANN201
    """as_user('yaodu.doctor') -> headers; tokens are cached per test."""
    cache: dict[str, dict[str, str]] = {}

    def headers(username: str) -> dict[str, str]:
        if username not in cache:
            cache[username] = login(client, username)
        return cache[username]

    return headers


def add_resident(app: Flask, institution: str, patient_id: str, username: str = "resident.wang") -> None:
    """A resident account standing for one patient record of a yaodu institution."""
    with session_scope(app.extensions["hie.engines"].platform) as session, \
            Session(shard_engine(app, "yaodu")) as shard:
        accounts.add_user(session, username, [Role.resident], institution, PASSWORD, patient_id=patient_id,
                          shard=shard)


def valid_id(body17: str) -> str:
    """A resident ID with the right GB 11643 check digit."""
    from hie.platform.standards import check_digit

    return body17 + check_digit(body17)


def new_patient(client: FlaskClient, headers: dict[str, str], mrn: str = "MRN-1", **fields: object) -> dict:
    """Register a patient through the API and return the response body."""
    body = {"mrn": mrn, "name": "王秀英", "sex": "F", "birth_date": "1958-03-12",
            "id_number": valid_id("14100219580312002"), "phone": "13935712345",
            "address": "山西省临汾市尧都区屯里镇东关村12号"}
    body.update(fields)
    response = client.post("/api/v1/patients", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()
