"""A team's alerts (alarming readings, urgent or recommended referrals): listing, resolving, and sending the upward
referral an alert drafted through the referral module."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask_smorest import abort
from marshmallow import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from hie.family_doctor import followups
from hie.family_doctor.models import Alert, Contract, FollowUp, Team, Vitals
from hie.family_doctor.services import membership, require_member, team_identity
from hie.patients.models import Patient
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.db import platform_session, shard_session, utcnow

RESOURCE = "FamilyDoctorAlert"


def _with_patient(query: Select[Any]) -> Select[Any]:
    """The alert's patient record: its contract's, or else its reading's."""
    reading = aliased(Vitals)
    return (query.add_columns(func.coalesce(Contract.tenant_code, reading.tenant_code),
                              func.coalesce(Contract.patient_id, reading.patient_id))
            .outerjoin(Contract, Contract.id == Alert.contract_id)
            .outerjoin(reading, reading.id == Alert.vitals_id))


def _ref(tenant_code: str | None, patient_id: str | None) -> str | None:
    return audit.patient_ref(tenant_code, patient_id) if tenant_code and patient_id else None


def _usernames(session: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(session.execute(select(User.id, User.username).where(User.id.in_(wanted))).all())


def views(session: Session, rows: list[tuple[Alert, str | None, str | None]]) -> list[dict[str, Any]]:
    """Alerts as the API shows them: the patient by record id and tenant, never by name."""
    names = _usernames(session, (alert.resolved_by for alert, _t, _p in rows))
    return [{"id": alert.id, "kind": alert.kind, "message": alert.message, "contract_id": alert.contract_id,
             "patient_id": patient_id, "patient_tenant_code": tenant_code,
             "master_person_id": alert.master_person_id, "follow_up_id": alert.follow_up_id,
             "vitals_id": alert.vitals_id, "draft_referral": alert.draft_referral, "created_at": alert.created_at,
             "resolved_at": alert.resolved_at, "resolved_by": names.get(alert.resolved_by) if alert.resolved_by
             else None, "resolution": alert.resolution} for alert, tenant_code, patient_id in rows]


def _visible(identity: Identity, alert_id: int, action: str,
             lock: bool = False) -> tuple[Alert, str | None, str | None, Team]:
    """An alert of the caller's team with its patient record; any other id, or a caller in no team, is 404, audited
    (an alert names a patient, so even its existence is the team's)."""
    session = platform_session()
    found = membership(session, identity.user_id)
    clinical = access.Permission.patient_read in access.permissions_of(identity)
    row = session.execute(_with_patient(select(Alert).where(Alert.id == alert_id))).first()
    if row is None or found is None or not clinical or row[0].team_id != found[0].id:
        audit.record(action, "denied" if row else "not_found", resource_type=RESOURCE, resource_id=str(alert_id),
                     patient=_ref(row[1], row[2]) if row else None)
        abort(404, message="No such alert.")
    alert = row[0]
    if lock:
        session.refresh(alert, with_for_update=True)
    return alert, row[1], row[2], found[0]


def read(identity: Identity, alert_id: int) -> dict[str, Any]:
    """One alert of the caller's team, its reading audited with the patient."""
    alert, tenant_code, patient_id, _team = _visible(identity, alert_id, "read")
    audit.record("read", resource_type=RESOURCE, resource_id=str(alert.id), patient=_ref(tenant_code, patient_id),
                 purpose="treatment")
    return views(platform_session(), [(alert, tenant_code, patient_id)])[0]


def search(identity: Identity, resolved: bool, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the team's open (or resolved) alerts, newest first; each shown is audited with its patient."""
    team, _member = require_member(identity, "search")
    session = platform_session()
    where = (Alert.team_id == team.id, Alert.resolved_at.is_not(None) if resolved else Alert.resolved_at.is_(None))
    total = session.scalar(select(func.count()).select_from(Alert).where(*where)) or 0
    rows = [tuple(row) for row in session.execute(_with_patient(select(Alert).where(*where))
                                                   .order_by(Alert.created_at.desc(), Alert.id.desc())
                                                   .offset(offset).limit(limit))]
    audit.record("search", resource_type=RESOURCE, purpose="treatment",
                 detail=f"resolved={resolved} results={len(rows)}")
    for alert, tenant_code, patient_id in rows:
        audit.record("read", resource_type=RESOURCE, resource_id=str(alert.id),
                     patient=_ref(tenant_code, patient_id), purpose="treatment")
    return views(session, rows), total  # type: ignore[arg-type]


def _open(identity: Identity, alert_id: int, action: str) -> tuple[Alert, str | None, str | None, Team]:
    """An open alert of the caller's team, locked; 409 if someone resolved it already."""
    alert, tenant_code, patient_id, team = _visible(identity, alert_id, "update", lock=True)
    if alert.resolved_at is not None:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=str(alert.id),
                     patient=_ref(tenant_code, patient_id), detail=f"{action} refused: alert already resolved")
        abort(409, message=f"The alert was resolved already ({alert.resolution}).")
    return alert, tenant_code, patient_id, team


def _close(identity: Identity, alert: Alert, patient: str | None, resolution: str, now: datetime) -> None:
    alert.resolved_at, alert.resolved_by, alert.resolution = now, identity.user_id, resolution[:500]
    audit.record("update", resource_type=RESOURCE, resource_id=str(alert.id), patient=patient, purpose="treatment",
                 detail=f"alert resolved: {resolution}"[:500])


def resolve(identity: Identity, alert_id: int, body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The team has dealt with the alert, and says how."""
    alert, tenant_code, patient_id, _team = _open(identity, alert_id, "resolve")
    _close(identity, alert, _ref(tenant_code, patient_id), body["resolution"].strip(), now or utcnow())
    platform_session().flush()
    return views(platform_session(), [(alert, tenant_code, patient_id)])[0]


def _acting(identity: Identity, team: Team, contract: Contract) -> Identity:
    """Who sends the referral: the team's institution when it holds the signed record, else the caller's own
    institution (a village clinic that registered the resident)."""
    patient = shard_session(contract.tenant_code).get(Patient, contract.patient_id)
    if patient is not None and patient.institution_id != team.institution_id \
            and patient.institution_id == identity.institution_id:
        return identity
    return team_identity(identity, team)


def send_referral(identity: Identity, alert_id: int, changes: dict[str, Any], now: datetime | None = None) -> Any:
    """Send the alert's draft referral (with the caller's changes) through the referral module, as the team's
    institution; the follow-up records the referral and the alert is resolved."""
    from hie.referral import services as referrals
    from hie.referral.schemas import ReferralInSchema

    now = now or utcnow()
    alert, tenant_code, patient_id, team = _open(identity, alert_id, "referral")
    patient = _ref(tenant_code, patient_id)
    if not followups.referral_installed() or alert.draft_referral is None or alert.contract_id is None:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=str(alert.id), patient=patient,
                     detail="referral refused: no draft referral")
        abort(409, message="The referral module is not installed." if not followups.referral_installed()
              else "This alert carries no draft referral; refer through /api/v1/referrals.")
    asked = {**alert.draft_referral, **{key: value for key, value in changes.items() if value is not None}}
    try:
        body = ReferralInSchema().load(asked)
    except ValidationError as error:
        messages: dict[str, list[str]] = error.messages  # type: ignore[assignment]
        field, problems = next(iter(messages.items()))
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=str(alert.id), patient=patient,
                     detail=f"referral refused: {field}")
        abort(422, message=f"{field} {problems[0]}", errors={"json": messages})
    session = platform_session()
    contract = session.get_one(Contract, alert.contract_id)
    referral = referrals.create(_acting(identity, team, contract), body, now)
    if alert.follow_up_id is not None:
        session.get_one(FollowUp, alert.follow_up_id).referral_id = referral.id
    _close(identity, alert, patient, f"referral {referral.id} sent to {body['receiving_institution']}", now)
    session.flush()
    return referral
