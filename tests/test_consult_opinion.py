"""The signed opinion through the API: versions, verification, tampering, the shared record ($everything, FHIR
history), who may give and read it, wrong states and bad bodies refused with nothing stored, the draft referral."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import g
from sqlalchemy import func, select, text, update

from hie.consult import opinions, services
from hie.consult.models import Consultation, ConsultationStep, ConsultStatus, Kind, Opinion, SigningKey, Urgency
from hie.exchange.models import FhirResource
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role, User
from hie.platform.db import finish_unit_of_work, session_scope
from hie.platform.modules import installed
from hie.tenants.models import Institution
from tests.conftest import PASSWORD, new_patient, shard_engine
from tests.fhir_helpers import create

MADE = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CONSULTANT, REQUESTER = "lfph.specialist", "yaodu.doctor"
OPINION = {"findings": "心电图示窦性心律，V1-V4 导联 ST 段抬高。", "impression": "急性前壁心肌梗死可能",
           "diagnoses": [{"code": "I21.0", "text": "急性前壁心肌梗死"}],
           "recommendations": "尽快行冠状动脉造影。", "refer": False}


def identity_of(platform_db, username: str) -> Identity:
    """The Identity a request of this seeded user carries."""
    user = platform_db.scalars(select(User).where(User.username == username)).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id="test")


def consultation(app, platform_db, patient_id: str, kind: Kind = Kind.consultation, records: tuple[str, ...] = (),
                 status: ConsultStatus = ConsultStatus.in_session, claimed_by: str | None = CONSULTANT) -> str:
    """yaodu.doctor asks LF-PH (services.create in one committed unit of work), then the row is put in a state;
    a read is claimed for an hour by claimed_by."""
    requester = identity_of(platform_db, REQUESTER)
    body = {"patient_id": patient_id, "kind": kind, "urgency": Urgency.routine, "consultant_institution": "LF-PH",
            "department": "心内科", "question": "请协助诊断", "records": list(records), "consultant_user_id": None}
    with app.test_request_context("/api/v1/consultations", method="POST"):
        g.identity, g.request_id = requester, uuid.uuid4().hex
        consultation_id = services.create(requester, body, MADE).id
        finish_unit_of_work(commit=True)
    with session_scope(app.extensions["hie.engines"].platform) as session:
        session.execute(update(Consultation).where(Consultation.id == consultation_id).values(status=status))
        if kind in services.READS and claimed_by is not None:
            reader = session.scalar(select(User.id).where(User.username == claimed_by))
            session.execute(update(Consultation).where(Consultation.id == consultation_id).values(
                claimed_by=reader, claim_expires_at=datetime.now(UTC) + timedelta(hours=1)))
    platform_db.rollback()
    return consultation_id


def give(client, as_user, consultation_id: str, body: dict | None = None, username: str = CONSULTANT):
    """POST the opinion as a user."""
    return client.post(f"/api/v1/consultations/{consultation_id}/opinion", json=body or OPINION,
                       headers=as_user(username))


def everything(client, as_user, patient_id: str, username: str = REQUESTER) -> list[dict]:
    """The patient's $everything resources as a user sees them."""
    response = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=as_user(username))
    assert response.status_code == 200, response.get_json()
    return [entry["resource"] for entry in response.get_json()["entry"]]


def stored(platform_db, consultation_id: str) -> dict[str, int]:
    """What a refused request must not have written."""
    platform_db.rollback()
    count = platform_db.scalar
    return {"opinions": count(select(func.count()).select_from(Opinion)),
            "keys": count(select(func.count()).select_from(SigningKey)),
            "steps": count(select(func.count()).select_from(ConsultationStep)
                           .where(ConsultationStep.consultation_id == consultation_id))}


def fhir_rows(app) -> int:
    """Every non-Patient FHIR resource in every shard."""
    total = 0
    for code in ("linfen", "yaodu", "quwo"):
        with shard_engine(app, code).connect() as conn:
            total += conn.execute(select(func.count()).select_from(FhirResource)
                                  .where(FhirResource.resource_type != "Patient")).scalar()
    return total


@pytest.fixture
def patient(client, as_user):
    return new_patient(client, as_user(REQUESTER))


def test_a_consultation_opinion_is_signed_verifies_and_shows_in_everything(app, client, as_user, platform_db,
                                                                          patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    response = give(client, as_user, consultation_id)
    assert response.status_code == 201, response.get_json()
    shown = response.get_json()
    assert shown["version"] == 1 and shown["latest_version"] == 1
    assert shown["opinion"]["impression"] == OPINION["impression"]
    assert shown["signer"]["username"] == CONSULTANT and shown["signer"]["institution"] == "LF-PH"
    assert shown["signature"]["algorithm"] == "Ed25519"
    assert shown["draft_referral"] is None and shown["referral_note"] is None
    platform_db.rollback()
    row = platform_db.get(Consultation, consultation_id)
    assert row.status is ConsultStatus.opinion_given and row.opinion_at is not None
    steps = platform_db.scalars(select(ConsultationStep).where(ConsultationStep.consultation_id == consultation_id)
                                .order_by(ConsultationStep.id)).all()
    assert steps[-1].to_status is ConsultStatus.opinion_given and "version 1" in steps[-1].note

    verified = client.get(f"/api/v1/consultations/{consultation_id}/opinion/verify", headers=as_user(REQUESTER))
    assert verified.status_code == 200
    result = verified.get_json()
    assert result["valid"] is True and result["problems"] == []
    assert (result["version"], result["algorithm"], result["key_id"]) == (1, "Ed25519", shown["signature"]["key_id"])
    assert result["signer"]["username"] == CONSULTANT

    kind, resource_id, _, version = shown["fhir_reference"].split("/")
    assert (kind, version) == ("DocumentReference", "1") and resource_id.startswith("yaodu.")
    found = [r for r in everything(client, as_user, patient["id"]) if r["resourceType"] == "DocumentReference"]
    assert [r["id"] for r in found] == [resource_id]
    note = found[0]
    assert note["type"]["coding"][0]["code"] == "11488-4" and note["docStatus"] == "final"
    assert note["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert note["identifier"] == [{"system": "urn:hie:consultation", "value": consultation_id}]
    assert note["author"][1]["identifier"]["value"] == "LF-PH"
    attachment = note["content"][0]["attachment"]
    assert attachment["contentType"] == "text/markdown"
    rendered = base64.b64decode(attachment["data"]).decode()
    assert OPINION["impression"] in rendered and "I21.0" in rendered and CONSULTANT in rendered
    yaodu_ch = platform_db.scalar(select(Institution.id).where(Institution.code == "YAODU-CH"))
    with shard_engine(app, "yaodu").connect() as conn:
        holder = conn.execute(select(FhirResource.institution_id).where(FhirResource.id == resource_id)).scalar()
    assert holder == yaodu_ch  # the requester's record, in the requester's shard
    assert resource_id in {r["id"] for r in everything(client, as_user, patient["id"], CONSULTANT)}
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "ConsultationOpinion",
                                                          AuditEvent.action == "create")).all()
    assert [(e.username, e.outcome, e.patient) for e in events] == [
        (CONSULTANT, "success", f"yaodu/{patient['id']}")]


@pytest.mark.parametrize(("kind", "loinc", "section"), [(Kind.imaging_read, "18748-4", "RAD"),
                                                         (Kind.ecg_read, "11524-6", "EC")])
def test_a_read_is_a_diagnostic_report_with_its_imaging_study(app, client, as_user, platform_db, patient, kind,
                                                              loinc, section):
    study = create(client, as_user(REQUESTER), {
        "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{patient['id']}"},
        "started": "2026-11-01T09:00:00+08:00",
        "procedureCode": [{"coding": [{"system": "http://loinc.org", "code": "24627-2"}]}]})
    consultation_id = consultation(app, platform_db, patient["id"], kind, records=(f"ImagingStudy/{study['id']}",))
    body = {**OPINION, "diagnoses": [{"code": "I21.0", "text": "急性前壁心肌梗死"}, {"code": "I10", "text": "高血压"}]}
    response = give(client, as_user, consultation_id, body)
    assert response.status_code == 201, response.get_json()
    reports = [r for r in everything(client, as_user, patient["id"]) if r["resourceType"] == "DiagnosticReport"]
    assert len(reports) == 1
    report = reports[0]
    assert f"DiagnosticReport/{report['id']}/_history/1" == response.get_json()["fhir_reference"]
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == loinc
    assert report["category"][0]["coding"][0]["code"] == section
    assert report["conclusion"] == OPINION["impression"]
    assert [c["coding"][0] for c in report["conclusionCode"]] == [
        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "I21.0", "display": "急性前壁心肌梗死"},
        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10", "display": "高血压"}]
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert report["performer"][1]["identifier"]["value"] == "LF-PH"


@pytest.mark.parametrize("claimed_by", [None, "lfph.reader"])
def test_a_reads_first_opinion_needs_the_callers_live_claim(app, client, as_user, platform_db, patient, claimed_by):
    with session_scope(app.extensions["hie.engines"].platform) as session:
        accounts.add_user(session, "lfph.reader", [Role.specialist], "LF-PH", PASSWORD)
    consultation_id = consultation(app, platform_db, patient["id"], Kind.imaging_read, claimed_by=claimed_by)
    nothing = stored(platform_db, consultation_id)
    response = give(client, as_user, consultation_id)
    assert response.status_code == 409
    assert ("claim it first" if claimed_by is None else "claimed by lfph.reader") in response.get_json()["detail"]
    assert stored(platform_db, consultation_id) == nothing and fhir_rows(app) == 0
    assert give(client, as_user, consultation_id, username="lfph.reader").status_code == (
        201 if claimed_by else 409)


def test_a_new_version_keeps_the_old_one_verifiable_and_in_fhir_history(app, client, as_user, platform_db, patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    first = give(client, as_user, consultation_id).get_json()
    assert len(everything(client, as_user, patient["id"])) == 2  # the Patient and the note, now cached
    platform_db.rollback()
    before = platform_db.scalars(select(Opinion)).one()
    first_row = (before.content, before.canonical, before.signature, before.signed_at)
    changed = {**OPINION, "impression": "急性前壁心肌梗死，建议转诊", "refer": True}
    second = give(client, as_user, consultation_id, changed)
    assert second.status_code == 201, second.get_json()
    second = second.get_json()
    assert second["version"] == 2 and second["signature"]["key_id"] == first["signature"]["key_id"]
    platform_db.rollback()
    rows = platform_db.scalars(select(Opinion).order_by(Opinion.version)).all()
    assert [r.version for r in rows] == [1, 2]
    assert (rows[0].content, rows[0].canonical, rows[0].signature, rows[0].signed_at) == first_row
    headers = as_user(REQUESTER)
    base = f"/api/v1/consultations/{consultation_id}/opinion"
    for version in (1, 2):
        result = client.get(f"{base}/verify?version={version}", headers=headers).get_json()
        assert (result["valid"], result["version"]) == (True, version)
    assert client.get(base, headers=headers).get_json()["opinion"]["impression"] == changed["impression"]
    old = client.get(f"{base}?version=1", headers=headers).get_json()
    assert old["opinion"]["impression"] == OPINION["impression"] and old["latest_version"] == 2
    assert client.get(f"{base}?version=3", headers=headers).status_code == 404
    listed = client.get(f"{base}/versions", headers=headers)
    assert [v["version"] for v in listed.get_json()] == [2, 1]
    assert '"total": 2' in listed.headers["X-Pagination"]
    reference = second["fhir_reference"].split("/_history/")[0]
    assert first["fhir_reference"] == f"{reference}/_history/1" and second["fhir_reference"].endswith("/_history/2")
    v1 = client.get(f"/fhir/{reference}/_history/1", headers=headers).get_json()
    v2 = client.get(f"/fhir/{reference}", headers=headers).get_json()
    assert (v1["docStatus"], v2["docStatus"]) == ("final", "amended")
    assert v1["description"] == OPINION["impression"] and v2["description"] == changed["impression"]
    notes = [r for r in everything(client, as_user, patient["id"]) if r["resourceType"] == "DocumentReference"]
    assert [(r["meta"]["versionId"], r["description"]) for r in notes] == [("2", changed["impression"])]
    platform_db.rollback()
    assert platform_db.get(Consultation, consultation_id).status is ConsultStatus.opinion_given


@pytest.mark.parametrize("tamper", ["content", "canonical", "signature"])
def test_a_changed_byte_in_the_stored_opinion_fails_verification(app, client, as_user, platform_db, patient, tamper):
    consultation_id = consultation(app, platform_db, patient["id"])
    assert give(client, as_user, consultation_id).status_code == 201
    give(client, as_user, consultation_id, {**OPINION, "findings": "复查：ST 段回落。"})
    platform_db.rollback()
    row = platform_db.scalars(select(Opinion).where(Opinion.version == 1)).one()
    with session_scope(app.extensions["hie.engines"].platform) as session:
        if tamper == "content":
            content = {**row.content, "opinion": {**row.content["opinion"], "impression": "急性下壁心肌梗死可能"}}
            session.execute(update(Opinion).where(Opinion.id == row.id).values(content=content))
        elif tamper == "canonical":
            session.execute(update(Opinion).where(Opinion.id == row.id).values(
                canonical=row.canonical.replace("前壁", "下壁", 1)))
        else:
            flipped = base64.b64decode(row.signature)
            flipped = bytes([flipped[0] ^ 1]) + flipped[1:]
            session.execute(update(Opinion).where(Opinion.id == row.id).values(
                signature=base64.b64encode(flipped).decode()))
    base = f"/api/v1/consultations/{consultation_id}/opinion/verify"
    result = client.get(f"{base}?version=1", headers=as_user(CONSULTANT)).get_json()
    assert result["valid"] is False and result["problems"], result
    expected = {"content": "the signature does not match the content",
                "canonical": "the stored content differs from the stored canonical text",
                "signature": "the signature does not match the content"}[tamper]
    assert expected in result["problems"]
    assert client.get(f"{base}?version=2", headers=as_user(CONSULTANT)).get_json()["valid"] is True


def test_a_signed_time_or_version_moved_in_the_row_fails_verification(app, client, as_user, platform_db, patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    assert give(client, as_user, consultation_id).status_code == 201
    with session_scope(app.extensions["hie.engines"].platform) as session:
        session.execute(update(Opinion).values(signed_at=datetime(2026, 1, 1, tzinfo=UTC)))
    result = client.get(f"/api/v1/consultations/{consultation_id}/opinion/verify",
                        headers=as_user(REQUESTER)).get_json()
    assert result["valid"] is False
    assert result["problems"] == ["the signed_at in the signed content does not match the stored one"]


def test_only_the_consulting_side_gives_and_only_the_two_institutions_read(app, client, as_user, platform_db,
                                                                          patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    nothing = stored(platform_db, consultation_id)
    refused = give(client, as_user, consultation_id, username=REQUESTER)
    assert refused.status_code == 403
    assert give(client, as_user, consultation_id, username="quwo.doctor").status_code == 404
    assert give(client, as_user, str(uuid.uuid4())).status_code == 404
    assert stored(platform_db, consultation_id) == nothing and fhir_rows(app) == 0
    denied = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "Consultation",
                                                          AuditEvent.outcome.in_(["denied", "not_found"]))).all()
    assert sorted((e.username, e.outcome) for e in denied) == [
        (CONSULTANT, "not_found"), ("quwo.doctor", "denied"), (REQUESTER, "denied")]
    assert give(client, as_user, consultation_id).status_code == 201
    base = f"/api/v1/consultations/{consultation_id}/opinion"
    for path in (base, f"{base}/versions", f"{base}/verify"):
        assert client.get(path, headers=as_user(REQUESTER)).status_code == 200, path
        assert client.get(path, headers=as_user(CONSULTANT)).status_code == 200, path
        outsider = client.get(path, headers=as_user("quwo.doctor"))
        assert outsider.status_code == 404, path
        assert outsider.get_json()["detail"] == "No such consultation."  # as for an id that does not exist
    assert client.get(base, headers=as_user("yaodu.itadmin")).status_code == 403  # no clinical role


@pytest.mark.parametrize("status", [ConsultStatus.requested, ConsultStatus.accepted, ConsultStatus.acknowledged,
                                    ConsultStatus.closed, ConsultStatus.cancelled, ConsultStatus.declined])
def test_an_opinion_from_a_wrong_state_is_409_naming_it(app, client, as_user, platform_db, patient, status):
    consultation_id = consultation(app, platform_db, patient["id"], status=status)
    nothing = stored(platform_db, consultation_id)
    response = give(client, as_user, consultation_id)
    assert response.status_code == 409
    assert status.value in response.get_json()["detail"]
    assert stored(platform_db, consultation_id) == nothing and fhir_rows(app) == 0
    assert platform_db.get(Consultation, consultation_id).status is status
    assert platform_db.scalar(select(AuditEvent.outcome).where(AuditEvent.resource_type == "Consultation",
                                                               AuditEvent.action == "update")) == "failure"


@pytest.mark.parametrize(("change", "field"), [
    ({"diagnoses": [{"code": "I21.0", "text": "心梗"}, {"code": "i21", "text": "心梗"}]}, "diagnoses[1].code"),
    ({"diagnoses": [{"code": "U07.1", "text": "COVID-19"}]}, "diagnoses[0].code"),
    ({"diagnoses": [{"code": "I10"}]}, "diagnoses[0].text"),
    ({"findings": "   "}, "findings"),
    ({"impression": None}, "impression"),
    ({"refer_to": "LF-PH"}, "refer_to"),
    ({"refer": True, "refer_urgency": "soon"}, "refer_urgency"),
    ({"refer": True, "refer_to": "NO-SUCH"}, "refer_to"),
    ({"refer": True, "refer_to": "YAODU-CH"}, "refer_to"),
])
def test_a_bad_body_is_422_naming_the_field_and_stores_nothing(app, client, as_user, platform_db, patient, change,
                                                               field):
    consultation_id = consultation(app, platform_db, patient["id"])
    nothing = stored(platform_db, consultation_id)
    response = give(client, as_user, consultation_id, {**OPINION, **change})
    assert response.status_code == 422, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == [field], response.get_json()
    assert stored(platform_db, consultation_id) == nothing and fhir_rows(app) == 0
    assert platform_db.get(Consultation, consultation_id).status is ConsultStatus.in_session


def test_refer_offers_a_draft_referral_the_requester_can_send(app, client, as_user, platform_db, patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    body = {**OPINION, "refer": True, "department": "心内科", "refer_urgency": "urgent"}
    shown = give(client, as_user, consultation_id, body).get_json()
    draft = shown["draft_referral"]
    reference = shown["fhir_reference"].split("/_history/")[0]
    assert draft == {"patient_id": patient["id"], "direction": "up", "urgency": "urgent",
                     "receiving_institution": "LF-PH", "department": "心内科",
                     "reason": f"Recommended by remote consultation: {OPINION['impression']}",
                     "diagnoses": OPINION["diagnoses"],
                     "clinical_summary": f"{OPINION['findings']}\n\n{OPINION['recommendations']}",
                     "records": [reference]}
    sent = client.post("/api/v1/referrals", json=draft, headers=as_user(REQUESTER))
    assert sent.status_code == 201, sent.get_json()
    assert sent.get_json()["records"] == [reference]
    lateral = give(client, as_user, consultation_id, {**OPINION, "refer": True, "refer_to": "QUWO-CH"}).get_json()
    assert lateral["draft_referral"]["direction"] == "lateral"
    assert lateral["draft_referral"]["receiving_institution"] == "QUWO-CH"
    assert lateral["draft_referral"]["urgency"] == "routine"


def test_without_the_referral_module_refer_is_a_note(app, client, as_user, platform_db, patient, monkeypatch):
    consultation_id = consultation(app, platform_db, patient["id"])
    monkeypatch.setattr(opinions, "installed", lambda: tuple(m for m in installed() if m.name != "hie.referral"))
    shown = give(client, as_user, consultation_id, {**OPINION, "refer": True}).get_json()
    assert shown["draft_referral"] is None
    assert "referral module is not installed" in shown["referral_note"]


def test_the_stored_opinion_is_the_signed_canonical_text(app, client, as_user, platform_db, patient):
    consultation_id = consultation(app, platform_db, patient["id"])
    decomposed = {**OPINION, "impression": "Cafe\u0301 syndrome"}  # e + combining acute: stored and signed as NFC
    assert give(client, as_user, consultation_id, decomposed).status_code == 201
    with app.extensions["hie.engines"].platform.connect() as conn:
        canonical = conn.execute(text("SELECT canonical FROM consultation_opinions")).scalar()
    assert "Caf\u00e9 syndrome" in canonical and "\u0301" not in canonical
    assert canonical.startswith('{"algorithm":"Ed25519","consultation_id":') and ": " not in canonical
