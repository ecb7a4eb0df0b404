"""Consultation files: checked against their declared type, size-limited, sealed at rest, read back byte for byte
only by the institutions involved; every refusal audited and nothing stored."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime
from typing import Any

import pytest
from flask import Flask, g
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from hie.consult import attachments, services
from hie.consult.models import Attachment, Consultation, ConsultStatus, Kind, Urgency
from hie.platform.audit.models import AuditEvent
from hie.platform.audit.services import flush_pending
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.config import ConfigError, load_config
from hie.platform.crypto import DecryptionError
from hie.platform.db import finish_unit_of_work
from tests.conftest import new_patient

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"plain-marker-" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-body" * 20
PDF = b"%PDF-1.7\n" + b"pdf-body" * 20
DICOM = b"\x00" * 128 + b"DICM" + b"dicom-body" * 20


def identity_of(platform_db: Session, username: str) -> Identity:
    """The Identity a login of this user would carry."""
    user = platform_db.scalars(select(User).where(User.username == username)).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id="test")


def in_request(app: Flask, identity: Identity, call: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run a service inside one request's unit of work as the API does: (200, result) committed, or (status,
    the refusal) rolled back; the audit events are written either way."""
    engines, ring = app.extensions["hie.engines"], app.extensions["hie.keyring"]
    with app.test_request_context("/api/v1/consultations", method="POST"):
        g.identity, g.request_id = identity, uuid.uuid4().hex
        try:
            result = call(*args, **kwargs)
        except HTTPException as refusal:
            finish_unit_of_work(commit=False)
            flush_pending(engines.platform, ring, failed=True)
            return refusal.code or 500, refusal
        finish_unit_of_work(commit=True)
        flush_pending(engines.platform, ring, failed=False)
        return 200, result


def create(app: Flask, platform_db: Session, patient_id: str, kind: Kind = Kind.imaging_read,
           urgency: Urgency = Urgency.routine, made: datetime | None = None, department: str = "放射科",
           requester: str = "yaodu.fd", consultant: str = "LF-PH") -> str:
    """A consultation from the township centre, made at a controlled time."""
    body = {"kind": kind, "urgency": urgency, "patient_id": patient_id, "consultant_institution": consultant,
            "department": department, "question": "请协助阅片", "records": []}
    status, consultation = in_request(app, identity_of(platform_db, requester), services.create,
                                      identity_of(platform_db, requester), body, made)
    assert status == 200, consultation
    platform_db.rollback()
    return consultation.id


def upload_body(content: bytes, media_type: str, filename: str = "胸片.png") -> dict[str, str]:
    return {"filename": filename, "media_type": media_type, "content_base64": base64.b64encode(content).decode()}


@pytest.fixture
def consultation(app, client, as_user, platform_db) -> str:
    patient = new_patient(client, as_user("yaodu.fd"), mrn="T1-ATT")
    return create(app, platform_db, patient["id"])


def _stored(platform_db: Session) -> int:
    platform_db.rollback()
    return platform_db.scalar(select(func.count()).select_from(Attachment)) or 0


def _events(platform_db: Session, request_id: str) -> list[AuditEvent]:
    platform_db.rollback()
    return list(platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id)))


def test_a_good_file_round_trips_byte_for_byte_and_is_sealed_at_rest(client, as_user, platform_db, consultation,
                                                                    app):
    response = client.post(f"/api/v1/consultations/{consultation}/attachments", json=upload_body(PNG, "image/png"),
                           headers=as_user("yaodu.fd"))
    assert response.status_code == 201, response.get_json()
    shown = response.get_json()
    assert (shown["filename"], shown["media_type"], shown["size"]) == ("胸片.png", "image/png", len(PNG))
    assert shown["sha256"] == hashlib.sha256(PNG).hexdigest() and shown["uploaded_by"] == "yaodu.fd"
    created = [e for e in _events(platform_db, response.headers["X-Request-Id"]) if e.action == "create"]
    row = platform_db.get(Consultation, consultation)
    assert [(e.resource_id, e.outcome, e.patient) for e in created] == [
        (shown["id"], "success", services.patient_ref(row))]

    stored = platform_db.get_one(Attachment, shown["id"])
    assert b"plain-marker" not in stored.content_enc and b"IHDR" not in stored.content_enc
    ring = app.extensions["hie.keyring"]
    assert ring.decrypt_bytes(stored.content_enc, attachments.content_aad(stored.id, consultation)) == PNG
    with pytest.raises(DecryptionError):  # bound to its row: the same ciphertext does not open as another file
        ring.decrypt_bytes(stored.content_enc, attachments.content_aad(str(uuid.uuid4()), consultation))

    listed = client.get(f"/api/v1/consultations/{consultation}/attachments", headers=as_user("lfph.specialist"))
    assert listed.status_code == 200 and [a["id"] for a in listed.get_json()] == [shown["id"]]
    download = client.get(f"/api/v1/consultations/{consultation}/attachments/{shown['id']}",
                          headers=as_user("lfph.specialist"))
    assert download.status_code == 200 and download.data == PNG
    assert download.headers["Content-Type"] == "image/png"
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''%E8%83%B8%E7%89%87.png" in download.headers["Content-Disposition"]
    reads = [e for e in _events(platform_db, download.headers["X-Request-Id"]) if e.action == "read"]
    assert [(e.username, e.resource_id, e.patient) for e in reads] == [
        ("lfph.specialist", shown["id"], services.patient_ref(row))]


@pytest.mark.parametrize(("content", "media_type"), [(JPEG, "image/jpeg"), (PDF, "application/pdf"),
                                                     (DICOM, "application/dicom")])
def test_each_allowed_type_is_taken(client, as_user, consultation, content, media_type):
    response = client.post(f"/api/v1/consultations/{consultation}/attachments",
                           json=upload_body(content, media_type, "file"), headers=as_user("yaodu.fd"))
    assert response.status_code == 201 and response.get_json()["media_type"] == media_type
    download = client.get(f"/api/v1/consultations/{consultation}/attachments/{response.get_json()['id']}",
                          headers=as_user("yaodu.fd"))
    assert download.data == content and download.headers["Content-Type"].startswith(media_type)


@pytest.mark.parametrize(("body", "field", "said"), [
    (upload_body(PNG, "image/gif"), "media_type", "must be one of image/jpeg, image/png"),
    (upload_body(b"GIF89a" + PNG, "text/html"), "media_type", "must be one of"),
    (upload_body(PNG, "application/pdf"), "content_base64", "is not application/pdf as declared (it looks like "
                                                            "image/png)"),
    (upload_body(b"<html><script>alert(1)</script>", "image/jpeg"), "content_base64",
     "matches none of the allowed types"),
    (upload_body(b"DICM" + b"\x00" * 200, "application/dicom"), "content_base64", "is not application/dicom"),
    (upload_body(b"%PDF-" + b"x" * 2000, "application/pdf"), "content_base64", "holds more than 1000 bytes"),
    ({"filename": "a.pdf", "media_type": "application/pdf", "content_base64": "JVBERi0*"}, "content_base64",
     "is not base64"),
    ({"filename": "a.pdf", "media_type": "application/pdf", "content_base64": ""}, "content_base64", "is empty"),
    (upload_body(PDF, "application/pdf", "../../etc/passwd"), "filename", "without path separators"),
])
def test_a_bad_file_is_refused_naming_the_field_audited_and_nothing_stored(app, client, as_user, platform_db,
                                                                           consultation, monkeypatch, body, field,
                                                                           said):
    monkeypatch.setitem(app.config["HIE"].extra, attachments.MAX_FILE_SETTING, "1000")
    response = client.post(f"/api/v1/consultations/{consultation}/attachments", json=body,
                           headers=as_user("yaodu.fd"))
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert [(e["field"], said in e["message"]) for e in problem["errors"]] == [(field, True)], problem
    assert _stored(platform_db) == 0
    refused = [(e.action, e.outcome, e.resource_id, e.patient) for e in _events(
        platform_db, response.headers["X-Request-Id"]) if e.resource_type == attachments.RESOURCE]
    row = platform_db.get(Consultation, consultation)
    assert refused == [("create", "failure", consultation, services.patient_ref(row))]


def test_a_file_of_exactly_the_limit_is_taken_one_byte_more_is_not(app, client, as_user, platform_db,
                                                                    consultation, monkeypatch):
    monkeypatch.setitem(app.config["HIE"].extra, attachments.MAX_FILE_SETTING, "1000")
    url = f"/api/v1/consultations/{consultation}/attachments"
    exact = b"%PDF-" + b"x" * 995
    assert client.post(url, json=upload_body(exact, "application/pdf"), headers=as_user("yaodu.fd")).status_code \
        == 201
    over = client.post(url, json=upload_body(exact + b"x", "application/pdf"), headers=as_user("yaodu.fd"))
    assert over.status_code == 422 and over.get_json()["errors"][0]["field"] == "content_base64"
    assert "holds 1001 bytes" in over.get_json()["errors"][0]["message"]
    assert _stored(platform_db) == 1


def test_an_uninvolved_institution_gets_404_on_every_file_route_audited_with_the_patient(client, as_user,
                                                                                        platform_db, consultation):
    good = client.post(f"/api/v1/consultations/{consultation}/attachments", json=upload_body(PDF, "application/pdf"),
                       headers=as_user("yaodu.fd")).get_json()
    row = platform_db.get(Consultation, consultation)
    base = f"/api/v1/consultations/{consultation}/attachments"
    for method, url, body in (("GET", base, None), ("GET", f"{base}/{good['id']}", None),
                              ("POST", base, upload_body(PDF, "application/pdf"))):
        for user in ("quwo.doctor", "yaodu.doctor"):  # another tenant; the same tenant, another institution
            response = client.open(url, method=method, json=body, headers=as_user(user))
            assert response.status_code == 404, (method, url, user)
            assert b"%PDF" not in response.data
            events = _events(platform_db, response.headers["X-Request-Id"])
            assert [(e.username, e.outcome, e.patient) for e in events] == [
                (user, "denied", services.patient_ref(row))]
    assert _stored(platform_db) == 1


def test_another_consultations_file_id_answers_404(app, client, as_user, platform_db, consultation):
    other_patient = new_patient(client, as_user("yaodu.fd"), mrn="T1-OTHER")
    other = create(app, platform_db, other_patient["id"])
    theirs = client.post(f"/api/v1/consultations/{other}/attachments", json=upload_body(PDF, "application/pdf"),
                         headers=as_user("yaodu.fd")).get_json()
    for attachment_id in (theirs["id"], str(uuid.uuid4()), "x" * 300):
        response = client.get(f"/api/v1/consultations/{consultation}/attachments/{attachment_id}",
                              headers=as_user("lfph.specialist"))
        assert response.status_code == 404
        events = _events(platform_db, response.headers["X-Request-Id"])
        assert [(e.action, e.outcome) for e in events] == [("read", "not_found")]


def test_the_requester_adds_files_until_the_opinion_the_consultant_after(client, as_user, platform_db,
                                                                         consultation):
    platform_db.execute(update(Consultation).where(Consultation.id == consultation)
                        .values(status=ConsultStatus.opinion_given))
    platform_db.commit()
    url = f"/api/v1/consultations/{consultation}/attachments"
    refused = client.post(url, json=upload_body(PDF, "application/pdf"), headers=as_user("yaodu.fd"))
    assert refused.status_code == 409 and "The consultation is opinion_given" in refused.get_json()["detail"]
    assert [(e.action, e.outcome) for e in _events(platform_db, refused.headers["X-Request-Id"])] == [
        ("create", "failure")]
    assert _stored(platform_db) == 0
    assert client.post(url, json=upload_body(PDF, "application/pdf"),
                       headers=as_user("lfph.specialist")).status_code == 201
    platform_db.execute(update(Consultation).where(Consultation.id == consultation)
                        .values(status=ConsultStatus.closed))
    platform_db.commit()
    closed = client.post(url, json=upload_body(PDF, "application/pdf"), headers=as_user("lfph.specialist"))
    assert closed.status_code == 409 and _stored(platform_db) == 1


def test_a_role_without_patient_write_may_not_upload(client, as_user, platform_db, consultation):
    response = client.post(f"/api/v1/consultations/{consultation}/attachments",
                           json=upload_body(PDF, "application/pdf"), headers=as_user("auditor"))
    assert response.status_code == 403 and _stored(platform_db) == 0


def _config(**extra: str):  # noqa: ANN202
    return load_config({"HIE_HOME": "/tmp/hie-unused", "HIE_SECRET_KEY": "t" * 40, **extra})


def test_the_file_limit_setting():
    assert attachments.max_file_bytes(_config()) == attachments.DEFAULT_MAX_FILE_BYTES
    assert attachments.max_file_bytes(_config(HIE_CONSULT_MAX_FILE_BYTES="5000")) == 5000
    # unset, the default shrinks to what a smaller request body holds
    assert attachments.max_file_bytes(_config(HIE_MAX_REQUEST_BYTES="1048576")) == (1048576 - 2048) // 4 * 3
    fitting = attachments.largest_file_fitting(2 * 1024 * 1024)
    assert attachments.max_file_bytes(_config(HIE_CONSULT_MAX_FILE_BYTES=str(fitting))) == fitting
    for raw, said in (("big", "whole number"), ("0", "whole number"), ("-5", "whole number"), ("٣", "whole number"),
                      (str(fitting + 1), "does not fit in a request")):
        with pytest.raises(ConfigError, match=f"HIE_CONSULT_MAX_FILE_BYTES.*{said}"):
            attachments.max_file_bytes(_config(HIE_CONSULT_MAX_FILE_BYTES=raw))


def test_a_file_limit_beyond_the_request_size_stops_the_app_at_start_up(tmp_path):
    from hie.platform.app import create_app

    config = load_config({"HIE_HOME": str(tmp_path), "HIE_SECRET_KEY": "t" * 40,
                          "HIE_CONSULT_MAX_FILE_BYTES": "3000000"})
    with pytest.raises(ConfigError, match="HIE_CONSULT_MAX_FILE_BYTES 3000000 does not fit"):
        create_app(config)
