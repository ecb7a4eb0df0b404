"""The consultant's opinion: each submission a new signed version (never a change of an old one), written to the
patient's shared record, readable and verifiable by the two institutions involved, with a draft referral when it
recommends one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask_smorest import abort
from sqlalchemy import func, select

from hie.consult import queue, record, services, signing
from hie.consult.models import Consultation, ConsultStatus, Opinion, SigningKey
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session, utcnow
from hie.platform.modules import installed
from hie.tenants.models import Institution

RESOURCE = "ConsultationOpinion"
DOCUMENT_TYPE = "hie.consult.opinion/1"
REFERRAL_MODULE = "hie.referral"
OPINION_FIELDS = ("findings", "impression", "diagnoses", "recommendations", "refer", "refer_to", "department",
                  "refer_urgency")


def _institution(institution_id: int) -> Institution:
    return platform_session().get_one(Institution, institution_id)


def _refer_to(consultation: Consultation, code: str | None) -> None:
    """A named referral target must be another active institution than the requester, else 422 (audited)."""
    if code is None:
        return
    target = platform_session().scalar(select(Institution).where(Institution.code == code))
    if target is None or not target.active or target.id == consultation.requester_institution_id:
        audit.record("create", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=services.patient_ref(consultation), detail=f"refer_to {code[:40]!r} refused")
        services.invalid("refer_to", f"{code!r} is not another active institution the patient could be referred to")


def document(identity: Identity, consultation: Consultation, version: int, key: SigningKey, signed_at: datetime,
             opinion: dict[str, Any]) -> dict[str, Any]:
    """What is signed: the opinion with the consultation, patient record, version, signer, key and time it binds to."""
    institution = _institution(identity.institution_id)
    return signing.normalised({
        "type": DOCUMENT_TYPE, "consultation_id": consultation.id, "kind": consultation.kind.value,
        "patient": {"tenant": consultation.requester_tenant_code, "id": consultation.patient_id},
        "version": version, "signed_at": signed_at.astimezone(UTC).isoformat(), "algorithm": signing.ALGORITHM,
        "key_id": key.id,
        "signer": {"user_id": identity.user_id, "username": identity.username, "institution": institution.code,
                   "institution_name": institution.name},
        "opinion": {name: opinion.get(name) for name in OPINION_FIELDS}})


def _latest(consultation_id: str) -> Opinion | None:
    return platform_session().scalar(select(Opinion).where(Opinion.consultation_id == consultation_id)
                                     .order_by(Opinion.version.desc()).limit(1))


def give(identity: Identity, consultation_id: str, body: dict[str, Any],
         now: datetime | None = None) -> tuple[Consultation, Opinion]:
    """Sign the opinion as the next version, write it to the shared record, and move the consultation to
    opinion_given; 404 / 403 / 409 as services.begin_move decides, 409 for a read's first opinion by anyone but the
    reader holding its claim, 422 for a refer_to that cannot be."""
    now = now or utcnow()
    consultation = services.begin_move(identity, consultation_id, "opinion")
    queue.check_claim(identity, consultation, now)
    _refer_to(consultation, body.get("refer_to"))
    session = platform_session()
    previous = _latest(consultation.id)
    version = previous.version + 1 if previous else 1
    key = signing.key_for(session, identity.user_id, now)
    signed = document(identity, consultation, version, key, now, body)
    text = signing.canonical(signed)
    fhir_reference = record.write(identity, consultation, signed, previous.fhir_reference if previous else None)
    opinion = Opinion(consultation_id=consultation.id, version=version, content=signed, canonical=text,
                      signature=signing.sign(key, text), signing_key_id=key.id, signed_by=identity.user_id,
                      signed_at=now, fhir_reference=fhir_reference)
    session.add(opinion)
    consultation.opinion_at = consultation.opinion_at or now
    consultation.answered_at = consultation.answered_at or now
    services.step(identity, consultation, ConsultStatus.opinion_given, now,
                  f"opinion version {version} signed ({signing.ALGORITHM} key {key.id})")
    session.flush()
    audit.record("create", resource_type=RESOURCE, resource_id=f"{consultation.id}/{version}",
                 patient=services.patient_ref(consultation), purpose="treatment",
                 detail=f"signed with key {key.id}, written as {fhir_reference}")
    return consultation, opinion


def visible_opinion(identity: Identity, consultation_id: str, version: int | None,
                    audited: bool = True) -> tuple[Consultation, Opinion]:
    """The consultation's latest opinion (or one version) for the two institutions involved; 404 otherwise,
    audited; a successful read is audited too unless the caller audits it with its outcome."""
    consultation = services.visible(identity, consultation_id)
    query = select(Opinion).where(Opinion.consultation_id == consultation.id)
    query = query.where(Opinion.version == version) if version is not None else query
    opinion = platform_session().scalar(query.order_by(Opinion.version.desc()).limit(1))
    if opinion is None:
        audit.record("read", "not_found", resource_type=RESOURCE, resource_id=f"{consultation.id}/{version or ''}",
                     patient=services.patient_ref(consultation))
        abort(404, message="No opinion has been given yet." if version is None else f"No opinion version {version}.")
    if audited:
        audit.record("read", resource_type=RESOURCE, resource_id=f"{consultation.id}/{opinion.version}",
                     patient=services.patient_ref(consultation), purpose="treatment")
    return consultation, opinion


def versions(identity: Identity, consultation_id: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the opinion's versions, newest first, each with its signer, key and record version."""
    consultation = services.visible(identity, consultation_id)
    session = platform_session()
    where = Opinion.consultation_id == consultation.id
    total = session.scalar(select(func.count()).select_from(Opinion).where(where)) or 0
    rows = session.scalars(select(Opinion).where(where).order_by(Opinion.version.desc()).offset(offset).limit(limit))
    audit.record("search", resource_type=RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), purpose="treatment", detail=f"versions={total}")
    return [summary(opinion) for opinion in rows], total


def summary(opinion: Opinion) -> dict[str, Any]:
    """One version in a list: who signed it when, with which key, and where the record holds it."""
    content = opinion.content
    return {"consultation_id": opinion.consultation_id, "version": opinion.version, "signed_at": opinion.signed_at,
            "signer": content.get("signer"), "key_id": opinion.signing_key_id,
            "impression": (content.get("opinion") or {}).get("impression"), "fhir_reference": opinion.fhir_reference}


def referral_installed() -> bool:
    """Whether the referral module is in the app's list, so a referral can be drafted."""
    return any(module.name == REFERRAL_MODULE for module in installed())


def _direction(sender: Institution, receiver: Institution) -> str | None:
    """up to a higher level, lateral to the same, down to a lower one; None where either takes no referrals."""
    from hie.referral.services import LEVEL_RANK

    ours, theirs = LEVEL_RANK.get(sender.level), LEVEL_RANK.get(receiver.level)
    if ours is None or theirs is None:
        return None
    return "up" if theirs > ours else "lateral" if theirs == ours else "down"


def draft_referral(consultation: Consultation, opinion: Opinion) -> tuple[dict[str, Any] | None, str | None]:
    """A body for POST /api/v1/referrals, from the requester, when the opinion recommends referring; else a note."""
    signed = opinion.content
    content = signed.get("opinion") or {}
    if not content.get("refer"):
        return None, None
    if not referral_installed():
        return None, "The opinion recommends a referral; the referral module is not installed, so refer the patient " \
                     "by the usual route."
    session = platform_session()
    sender = _institution(consultation.requester_institution_id)
    code = content.get("refer_to")
    receiver = session.scalar(select(Institution).where(Institution.code == code)) if code \
        else _institution(consultation.consultant_institution_id)
    direction = _direction(sender, receiver) if receiver is not None else None
    if receiver is None or direction is None:
        return None, f"The opinion recommends a referral, but {code or 'the consulting institution'} does not " \
                     f"receive referrals from {sender.code}."
    own = [opinion.fhir_reference.split("/_history/", 1)[0]] if opinion.fhir_reference else []
    summary_text = "\n\n".join(filter(None, (content.get("findings"), content.get("recommendations"))))
    body = {"patient_id": consultation.patient_id, "direction": direction,
            "urgency": content.get("refer_urgency") or consultation.urgency.value,
            "receiving_institution": receiver.code,
            "department": (content.get("department") or consultation.department)[:100],
            "reason": f"Recommended by remote consultation: {content.get('impression', '')}"[:2000],
            "diagnoses": list(content.get("diagnoses") or [])[:20], "clinical_summary": summary_text[:20000] or None,
            "records": [*own, *(r for r in consultation.records if r not in own)][:50]}
    return body, None


def view(consultation: Consultation, opinion: Opinion) -> dict[str, Any]:
    """One version as both sides see it: the signed content, the signature, the record, and a draft referral."""
    key = platform_session().get_one(SigningKey, opinion.signing_key_id)
    draft, note = draft_referral(consultation, opinion)
    content = opinion.content
    return {**summary(opinion), "kind": content.get("kind"), "opinion": content.get("opinion"),
            "latest_version": _latest(consultation.id).version,  # type: ignore[union-attr]
            "signature": {"algorithm": signing.ALGORITHM, "key_id": key.id, "public_key": key.public_key,
                          "value": opinion.signature, "canonicalisation": signing.CANONICALISATION},
            "draft_referral": draft, "referral_note": note}


def _binding(consultation: Consultation, opinion: Opinion, key: SigningKey) -> list[str]:
    """What the signed content claims against the rows it belongs to: consultation, patient, version, signer, key,
    time."""
    signed = opinion.content if isinstance(opinion.content, dict) else {}
    claims = {
        "consultation": (signed.get("consultation_id"), consultation.id),
        "patient": (signed.get("patient"), {"tenant": consultation.requester_tenant_code,
                                            "id": consultation.patient_id}),
        "version": (signed.get("version"), opinion.version),
        "signer": ((signed.get("signer") or {}).get("user_id"), opinion.signed_by),
        "key": (signed.get("key_id"), key.id),
        "key owner": (key.user_id, opinion.signed_by),
        "signed_at": (signed.get("signed_at"), opinion.signed_at.astimezone(UTC).isoformat()),
    }
    return [f"the {name} in the signed content does not match the stored one"
            for name, (claimed, stored) in claims.items() if claimed != stored]


def verify(identity: Identity, consultation_id: str, version: int | None) -> dict[str, Any]:
    """Recompute the canonical text from the stored content and check the signature with the stored public key."""
    consultation, opinion = visible_opinion(identity, consultation_id, version, audited=False)
    key = platform_session().get_one(SigningKey, opinion.signing_key_id)
    try:
        text = signing.canonical(opinion.content)
        problems = [] if text == opinion.canonical else ["the stored content differs from the stored canonical text"]
    except (TypeError, ValueError):
        text, problems = None, ["the stored content has no canonical form"]
    if text is not None and not signing.verify(key.public_key, opinion.signature, text):
        problems.append("the signature does not match the content")
    problems += _binding(consultation, opinion, key)
    audit.record("read", resource_type=RESOURCE, resource_id=f"{consultation.id}/{opinion.version}",
                 patient=services.patient_ref(consultation), purpose="treatment",
                 detail=f"verify: {'valid' if not problems else '; '.join(problems)}"[:500])
    return {"valid": not problems, "consultation_id": consultation.id, "version": opinion.version,
            "signer": (opinion.content.get("signer") if isinstance(opinion.content, dict) else None),
            "signed_by": opinion.signed_by, "signed_at": opinion.signed_at, "key_id": key.id,
            "public_key": key.public_key, "algorithm": signing.ALGORITHM,
            "canonicalisation": signing.CANONICALISATION, "problems": problems}
