"""Referral rules below the API: deadlines per urgency and tenant, overdue with a controlled clock, the CLI,
down-referrals to the family-doctor team, the grace period setting."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import g
from sqlalchemy import select

from hie.platform import care
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.config import ConfigError
from hie.platform.db import finish_unit_of_work, session_scope
from hie.referral import services
from hie.referral.models import Direction, ReferralDeadline, Urgency
from hie.tenants.models import Institution, Tenant
from tests.conftest import hie_environ, new_patient

MADE = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def _identity(platform_db, username: str) -> Identity:
    user = platform_db.scalars(select(User).where(User.username == username)).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id="test")


def _body(patient_id: str, urgency: Urgency, **changes: object) -> dict:
    body = {"patient_id": patient_id, "direction": Direction.up, "urgency": urgency, "receiving_institution": "LF-PH",
            "department": None, "reason": "进一步诊治", "diagnoses": [], "clinical_summary": None, "records": []}
    body.update(changes)
    return body


def _create(app, identity: Identity, body: dict, made: datetime) -> str:
    """services.create inside one request's unit of work, committed."""
    with app.test_request_context("/api/v1/referrals", method="POST"):
        g.identity, g.request_id = identity, uuid.uuid4().hex
        referral_id = services.create(identity, body, made).id
        finish_unit_of_work(commit=True)
    return referral_id


@pytest.fixture
def township_patient(client, as_user):
    return new_patient(client, as_user("yaodu.fd"), mrn="T1-100")


def test_deadline_per_urgency_and_overdue_with_a_controlled_clock(app, client, township_patient, platform_db):
    fd = _identity(platform_db, "yaodu.fd")
    made = {urgency: _create(app, fd, _body(township_patient["id"], urgency), MADE) for urgency in Urgency}
    platform_db.rollback()  # a new snapshot (MariaDB reads repeatably within a transaction)
    with app.app_context():
        def late(minutes: int) -> set[str]:
            return {r.id for r in services.overdue(platform_db, MADE + timedelta(minutes=minutes))}

        assert late(30) == set()
        assert late(31) == {made[Urgency.emergency]}
        assert late(4 * 60 + 1) == {made[Urgency.emergency], made[Urgency.urgent]}
        assert late(48 * 60 - 1) == {made[Urgency.emergency], made[Urgency.urgent]}
        assert late(48 * 60 + 1) == set(made.values())
        linfen = platform_db.scalar(select(Institution.id).where(Institution.code == "LF-PH"))
        quwo = platform_db.scalar(select(Institution.id).where(Institution.code == "QUWO-CH"))
        assert len(services.overdue(platform_db, MADE + timedelta(days=3), linfen)) == 3
        assert services.overdue(platform_db, MADE + timedelta(days=3), quwo) == []


def test_a_tenant_sets_its_own_deadline(app, client, township_patient, platform_db):
    linfen = platform_db.scalar(select(Tenant.id).where(Tenant.code == "linfen"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        session.add(ReferralDeadline(tenant_id=linfen, urgency=Urgency.routine, minutes=120))
    fd = _identity(platform_db, "yaodu.fd")
    referral_id = _create(app, fd, _body(township_patient["id"], Urgency.routine), MADE)
    platform_db.rollback()
    with app.app_context():
        assert [r.id for r in services.overdue(platform_db, MADE + timedelta(minutes=121))] == [referral_id]
        assert services.overdue(platform_db, MADE + timedelta(minutes=119)) == []


def test_overdue_flag_and_count_in_the_api(app, client, township_patient, platform_db, as_user):
    fd = _identity(platform_db, "yaodu.fd")
    referral_id = _create(app, fd, _body(township_patient["id"], Urgency.urgent),
                          datetime.now(UTC) - timedelta(hours=5))
    spec = as_user("lfph.specialist")
    assert client.get(f"/api/v1/referrals/{referral_id}", headers=spec).get_json()["overdue"] is True
    assert client.get("/api/v1/referrals/count", headers=spec).get_json() == {"unanswered": 1, "overdue": 1}
    accepted = client.post(f"/api/v1/referrals/{referral_id}/accept", headers=spec,
                           json={"appointment_at": "2030-01-01T08:00:00Z"})
    assert accepted.get_json()["overdue"] is False
    assert client.get("/api/v1/referrals/count", headers=spec).get_json() == {"unanswered": 0, "overdue": 0}


def test_cli_lists_overdue_referrals(app, client, home, township_patient, platform_db):
    fd = _identity(platform_db, "yaodu.fd")
    late = _create(app, fd, _body(township_patient["id"], Urgency.emergency), datetime.now(UTC) - timedelta(hours=3))
    _create(app, fd, _body(township_patient["id"], Urgency.routine), datetime.now(UTC))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HIE_")}, **hie_environ(home)}
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", "referrals", "overdue"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "1 overdue referral(s)"
    assert lines[0].startswith(f"{late}  emergency YAODU-T1 -> LF-PH") and "2h 30m late" in lines[0]
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", "referrals", "overdue", "--institution",
                             "QUWO-CH"], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "0 overdue referral(s)"


def test_cli_sets_a_tenants_deadline(app, client, home, platform_db):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HIE_")}, **hie_environ(home)}
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", "referrals", "deadline", "linfen", "urgent",
                             "90"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    linfen = platform_db.scalar(select(Tenant.id).where(Tenant.code == "linfen"))
    assert platform_db.get(ReferralDeadline, (linfen, Urgency.urgent)).minutes == 90
    result = subprocess.run([sys.executable, "-m", "hie.platform.cli", "referrals", "deadline", "nowhere", "urgent",
                             "90"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no tenant 'nowhere'" in result.stderr


def test_down_to_a_same_level_institution_only_for_the_family_doctor_team(client, as_user, platform_db, app):
    """A hospital may refer down to a lower level, or to the team holding the patient's family-doctor contract."""
    doctor = as_user("yaodu.doctor")
    patient = new_patient(client, doctor, mrn="CH-100")
    body = {"patient_id": patient["id"], "direction": "down", "receiving_institution": "QUWO-CH", "reason": "随访"}
    refused = client.post("/api/v1/referrals", json=body, headers=doctor)
    assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == "direction"
    quwo = platform_db.scalar(select(Institution.id).where(Institution.code == "QUWO-CH"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, quwo, patient["master_person_id"], care.CareKind.contract, source_ref="contract/1")
    allowed = client.post("/api/v1/referrals", json=body, headers=doctor)
    assert allowed.status_code == 201, allowed.get_json()
    lateral = client.post("/api/v1/referrals", headers=doctor, json={**body, "direction": "lateral"})
    assert lateral.status_code == 201
    down = client.post("/api/v1/referrals", headers=doctor, json={**body, "receiving_institution": "YAODU-T1"})
    assert down.status_code == 201


@pytest.mark.parametrize(("raw", "days"), [(None, 30), ("0", 0), ("7", 7)])
def test_grace_period_setting(raw, days):
    assert services.grace_period({} if raw is None else {"HIE_REFERRAL_GRACE_DAYS": raw}) == timedelta(days=days)


@pytest.mark.parametrize("raw", ["-1", "thirty", "٣", "400"])
def test_malformed_grace_period_is_named(raw):
    with pytest.raises(ConfigError, match="HIE_REFERRAL_GRACE_DAYS"):
        services.grace_period({"HIE_REFERRAL_GRACE_DAYS": raw})


def test_a_malformed_grace_period_stops_the_app_at_start_up(tmp_path):
    from hie.platform.app import create_app
    from hie.platform.config import load_config

    config = load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "t" * 40, "HIE_REFERRAL_GRACE_DAYS": "soon"})
    with pytest.raises(ConfigError, match="HIE_REFERRAL_GRACE_DAYS"):
        create_app(config)
