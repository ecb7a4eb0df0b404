"""GET /api/v1/referrals/<id>/slip: the referral slip (双向转诊单) as a PDF for the patient to carry."""

from __future__ import annotations

import http
from typing import NoReturn
from zoneinfo import ZoneInfo

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import abort

from hie.empi import services as empi
from hie.patients.models import Patient
from hie.patients.sealing import unseal
from hie.platform import access
from hie.platform.access import Permission, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.crypto import keyring
from hie.platform.db import platform_session, shard_session, utcnow
from hie.referral import services
from hie.referral.api import blp
from hie.referral.models import Referral, ReferralStatus
from hie.referral.slip import SlipContent, build_slip
from hie.tenants.models import Institution

# A declined, cancelled or no-show referral sends no one anywhere: a slip for it would send the patient in vain.
PRINTABLE = (ReferralStatus.requested, ReferralStatus.accepted, ReferralStatus.arrived, ReferralStatus.completed)
PDF = "application/pdf"


def _refuse(referral: Referral, status: int, outcome: str, message: str) -> NoReturn:
    audit.record("print", outcome, resource_type=services.RESOURCE, resource_id=referral.id,
                 patient=audit.patient_ref(referral.sender_tenant_code, referral.sender_patient_id),
                 detail=f"slip refused: {message}")
    abort(status, message=message)


def slip_content(identity: Identity, referral: Referral) -> tuple[SlipContent, access.Basis]:
    """What the slip shows and why the caller may see it: the sender, or a receiver while in care; else refused."""
    if referral.status not in PRINTABLE:
        _refuse(referral, 409, "failure", f"The referral is {referral.status.value}; a slip is printed only when it "
                f"is {', '.join(s.value for s in PRINTABLE)}.")
    session = platform_session()
    patient = shard_session(referral.sender_tenant_code).get(Patient, referral.sender_patient_id)
    basis = None
    if patient is not None:
        person_id = empi.person_of_patient(session, referral.sender_tenant_code, patient.id)
        record = access.PatientRecordRef(referral.sender_tenant_code, patient.id, patient.institution_id, person_id)
        basis = access.patient_basis(session, identity, record, write=False)
    if patient is None or basis is None:
        _refuse(referral, 403, "denied", "Your institution may no longer see this patient's record, so it cannot "
                "print the referral slip.")
    sender = session.get(Institution, referral.sender_institution_id)
    receiver = session.get(Institution, referral.receiver_institution_id)
    clinician = session.get(User, referral.requested_by)
    return SlipContent(
        referral_id=referral.id,
        patient_name=unseal(keyring(), referral.sender_tenant_code, patient, "name") or "",
        sex=patient.sex,
        birth_date=patient.birth_date,
        sender_institution=sender.name if sender else "",
        sender_clinician=clinician.display_name if clinician else "",
        receiver_institution=receiver.name if receiver else "",
        receiver_department=referral.receiver_department,
        direction=referral.direction.value,
        urgency=referral.urgency.value,
        reason=referral.reason,
        diagnoses=[(d["code"], d["text"]) for d in referral.diagnoses],
        clinical_summary=referral.clinical_summary or "",
        appointment_at=referral.appointment_at,
        issued_at=utcnow(),
    ), basis


@blp.route("/referrals/<string:referral_id>/slip")
class ReferralSlip(MethodView):
    """The printable slip of one referral."""

    decorators = [login_required]

    @blp.response(200, {"type": "string", "format": "binary"}, content_type=PDF,
                  description="The slip as an A4 PDF in Chinese, with a QR code of urn:hie:referral:<id>")
    @blp.alt_response(409, response=http.HTTPStatus.CONFLICT.name)
    def get(self, referral_id: str) -> Response:
        """Print the referral slip (双向转诊单) for the patient to carry; a sender, or a receiver while in care"""
        identity = require(Permission.patient_read)
        referral = services.get_visible(identity, referral_id)
        content, basis = slip_content(identity, referral)
        pdf = build_slip(content, ZoneInfo(current_app.config["HIE"].timezone))
        audit.record("print", resource_type=services.RESOURCE, resource_id=referral.id,
                     patient=audit.patient_ref(referral.sender_tenant_code, referral.sender_patient_id),
                     purpose=basis.value)
        return Response(pdf, mimetype=PDF, headers={
            "Content-Disposition": f'inline; filename="referral-{referral.id}.pdf"', "Cache-Control": "no-store"})
