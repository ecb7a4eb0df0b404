"""How a referral is shown: institutions by code, the back-referral it led to, its steps."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.referral.models import Referral, ReferralStep
from hie.referral.services import is_overdue
from hie.tenants.models import Institution


def institution_codes(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """Institution codes by id, in one query."""
    wanted = set(ids)
    if not wanted:
        return {}
    return dict(session.execute(select(Institution.id, Institution.code).where(Institution.id.in_(wanted))).all())


def back_referrals(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """The down-referral each completed referral led to, by the referral's id."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = session.execute(select(Referral.follow_up_of, Referral.id).where(Referral.follow_up_of.in_(wanted)))
    return {parent: child for parent, child in rows if parent is not None}


def steps_of(session: Session, referral: Referral, codes: dict[int, str]) -> list[dict[str, Any]]:
    """Every move of the referral, oldest first."""
    steps = session.scalars(select(ReferralStep).where(ReferralStep.referral_id == referral.id)
                            .order_by(ReferralStep.at, ReferralStep.id)).all()
    missing = {step.institution_id for step in steps} - codes.keys()
    codes = {**codes, **institution_codes(session, missing)}
    return [{"from_status": step.from_status.value if step.from_status else None, "to_status": step.to_status.value,
             "username": step.username, "role": step.role, "institution": codes[step.institution_id],
             "at": step.at, "note": step.note} for step in steps]


def view(referral: Referral, codes: dict[int, str], backs: dict[str, str], now: datetime | None = None,
         steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The referral as the REST API shows it."""
    out: dict[str, Any] = {
        "id": referral.id, "direction": referral.direction.value, "urgency": referral.urgency.value,
        "status": referral.status.value, "patient_id": referral.sender_patient_id,
        "patient_tenant_code": referral.sender_tenant_code, "master_person_id": referral.master_person_id,
        "sending_institution": codes[referral.sender_institution_id],
        "receiving_institution": codes[referral.receiver_institution_id],
        "department": referral.receiver_department, "receiver_patient_id": referral.receiver_patient_id,
        "reason": referral.reason, "diagnoses": referral.diagnoses, "clinical_summary": referral.clinical_summary,
        "records": referral.records, "appointment_at": referral.appointment_at,
        "discharge_summary": referral.discharge_summary, "follow_up_of": referral.follow_up_of,
        "back_referral_id": backs.get(referral.id), "created_at": referral.created_at,
        "updated_at": referral.updated_at, "due_at": referral.due_at, "answered_at": referral.answered_at,
        "overdue": is_overdue(referral, now),
    }
    if steps is not None:
        out["steps"] = steps
    return out


def full_view(session: Session, referral: Referral) -> dict[str, Any]:
    """One referral with its steps."""
    codes = institution_codes(session, (referral.sender_institution_id, referral.receiver_institution_id))
    return view(referral, codes, back_referrals(session, [referral.id]), steps=steps_of(session, referral, codes))


def list_view(session: Session, referrals: list[Referral]) -> list[dict[str, Any]]:
    """A page of referrals, without their steps."""
    codes = institution_codes(session, {i for r in referrals
                                        for i in (r.sender_institution_id, r.receiver_institution_id)})
    backs = back_referrals(session, [r.id for r in referrals])
    return [view(referral, codes, backs) for referral in referrals]
