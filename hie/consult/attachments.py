"""Files sent with a consultation (images, PDFs, DICOM): the declared type checked against the content's magic bytes,
size-limited, sealed under the key ring with the row's id as associated data, and read back only by the involved
institutions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Any, NoReturn

from flask import current_app
from flask_smorest import abort
from sqlalchemy import func, select
from sqlalchemy.orm import defer

from hie.consult import services
from hie.consult.models import Attachment, Consultation, ConsultStatus
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.config import Config, ConfigError
from hie.platform.crypto import keyring
from hie.platform.db import new_id, platform_session, utcnow

log = logging.getLogger(__name__)

RESOURCE = "ConsultationAttachment"
MAX_FILE_SETTING = "HIE_CONSULT_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES = 1_500_000
JSON_ROOM = 2048  # the body around the base64 text: keys, media type and a filename of 200 escaped characters
MAX_FILES = 50  # per consultation
DICOM_PREAMBLE = 128
# media type -> (what the content starts with, at which offset)
SIGNATURES: dict[str, tuple[bytes, int]] = {
    "image/jpeg": (b"\xff\xd8\xff", 0),
    "image/png": (b"\x89PNG\r\n\x1a\n", 0),
    "application/pdf": (b"%PDF-", 0),
    "application/dicom": (b"DICM", DICOM_PREAMBLE),
}
MEDIA_TYPES = tuple(SIGNATURES)
# The requester adds files until the opinion is given; the consultant while the consultation is not over.
REQUESTER_UPLOADS = (ConsultStatus.requested, ConsultStatus.accepted, ConsultStatus.in_session)
CONSULTANT_UPLOADS = (*REQUESTER_UPLOADS, ConsultStatus.opinion_given, ConsultStatus.acknowledged)
_FORBIDDEN_IN_NAMES = frozenset("/\\") | frozenset(chr(c) for c in (*range(32), 127))


def largest_file_fitting(max_request_bytes: int) -> int:
    """The largest file whose base64 text, with the JSON around it, fits in one request body."""
    return max(0, (max_request_bytes - JSON_ROOM) // 4 * 3)


def max_file_bytes(config: Config) -> int:
    """HIE_CONSULT_MAX_FILE_BYTES, checked against HIE_MAX_REQUEST_BYTES since the file travels base64 in JSON;
    unset, 1.5 MB or what fits."""
    fitting = largest_file_fitting(config.max_request_bytes)
    raw = config.extra.get(MAX_FILE_SETTING)
    if not raw:
        if fitting < 1:
            raise ConfigError(f"HIE_MAX_REQUEST_BYTES {config.max_request_bytes} leaves no room for a consultation "
                              f"file; raise it above {JSON_ROOM + 4}")
        return min(DEFAULT_MAX_FILE_BYTES, fitting)
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{MAX_FILE_SETTING} must be a whole number of bytes of at least 1, got {raw!r}")
    if int(raw) > fitting:
        raise ConfigError(f"{MAX_FILE_SETTING} {raw} does not fit in a request: files are sent base64 in JSON "
                          f"(4 bytes per 3), and HIE_MAX_REQUEST_BYTES {config.max_request_bytes} holds at most "
                          f"{fitting}; raise HIE_MAX_REQUEST_BYTES or lower {MAX_FILE_SETTING}")
    return int(raw)


def content_aad(attachment_id: str, consultation_id: str) -> str:
    """The associated data that binds a sealed file to its row and its consultation."""
    return f"consultation_attachments/{attachment_id}/{consultation_id}/content"


def sniff(content: bytes) -> str | None:
    """Which allowed type the content's magic bytes say it is, if any."""
    return next((media_type for media_type, (magic, offset) in SIGNATURES.items()
                 if content[offset:offset + len(magic)] == magic), None)


def _refuse(consultation: Consultation, field: str, message: str) -> NoReturn:
    """422 naming the field, audited with the patient; nothing is stored."""
    audit.record("create", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), detail=f"upload refused: {field} {message}"[:500])
    services.invalid(field, message)


def _may_upload(identity: Identity, consultation: Consultation) -> None:
    """The requester until the opinion is given, the consultant until the end; else 409 naming the state."""
    requester = identity.institution_id == consultation.requester_institution_id
    states = REQUESTER_UPLOADS if requester else CONSULTANT_UPLOADS
    if consultation.status not in states:
        side = services.REQUESTER if requester else services.CONSULTANT
        audit.record("create", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=services.patient_ref(consultation),
                     detail=f"upload refused: consultation is {consultation.status.value}")
        abort(409, message=f"The consultation is {consultation.status.value}; the {side} institution adds files "
                           f"only when it is {' or '.join(s.value for s in states)}.")
    count = platform_session().scalar(select(func.count()).select_from(Attachment).where(
        Attachment.consultation_id == consultation.id)) or 0
    if count >= MAX_FILES:
        audit.record("create", "failure", resource_type=RESOURCE, resource_id=consultation.id,
                     patient=services.patient_ref(consultation), detail=f"upload refused: {count} files already")
        abort(409, message=f"The consultation already holds {count} files, the most it takes.")


def decode(consultation: Consultation, media_type: str, text: str, limit: int) -> bytes:
    """The file's bytes, if the declared type is allowed, the text is base64, the size within the limit and the
    content of the declared type; else 422 naming the field (audited)."""
    if media_type not in SIGNATURES:
        _refuse(consultation, "media_type", f"must be one of {', '.join(MEDIA_TYPES)}, not {media_type[:80]!r}")
    compact = "".join(text.split())
    if len(compact) // 4 * 3 > limit + 2:
        _refuse(consultation, "content_base64", f"holds more than {limit} bytes, the most a file may have")
    try:
        content = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        _refuse(consultation, "content_base64", "is not base64 text (A-Z, a-z, 0-9, +, / and = padding)")
    if not content:
        _refuse(consultation, "content_base64", "is empty")
    if len(content) > limit:
        _refuse(consultation, "content_base64", f"holds {len(content)} bytes; a file may have at most {limit}")
    found = sniff(content)
    if found != media_type:
        seen = f"it looks like {found}" if found else "its content matches none of the allowed types"
        _refuse(consultation, "content_base64", f"is not {media_type} as declared ({seen})")
    return content


def _filename(consultation: Consultation, raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > 200 or any(char in _FORBIDDEN_IN_NAMES for char in name):
        _refuse(consultation, "filename", "must be 1 to 200 characters without path separators or control "
                                          "characters")
    return name


def upload(identity: Identity, consultation_id: str, body: dict[str, Any]) -> Attachment:
    """Add a checked file to a consultation of the caller's institution, sealed; the sha256 of the plain file kept."""
    consultation = services.visible(identity, consultation_id, "create", lock=True)
    _may_upload(identity, consultation)
    name = _filename(consultation, body["filename"])
    content = decode(consultation, body["media_type"], body["content_base64"], max_file_bytes(
        current_app.config["HIE"]))
    attachment_id = new_id()
    attachment = Attachment(
        id=attachment_id, consultation_id=consultation.id, filename=name, media_type=body["media_type"],
        size=len(content), sha256=hashlib.sha256(content).hexdigest(),
        content_enc=keyring().encrypt_bytes(content, content_aad(attachment_id, consultation.id)),
        uploaded_by=identity.user_id, uploaded_at=utcnow())
    platform_session().add(attachment)
    platform_session().flush()
    audit.record("create", resource_type=RESOURCE, resource_id=attachment.id, patient=services.patient_ref(
        consultation), purpose="treatment", detail=f"consultation {consultation.id}: {attachment.media_type}, "
                                                   f"{attachment.size} bytes")
    return attachment


def listing(identity: Identity, consultation_id: str) -> list[Attachment]:
    """The files of a consultation the caller's institution is involved in, oldest first (contents not loaded)."""
    consultation = services.visible(identity, consultation_id)
    rows = list(platform_session().scalars(
        select(Attachment).options(defer(Attachment.content_enc)).where(Attachment.consultation_id == consultation.id)
        .order_by(Attachment.uploaded_at, Attachment.id)))
    audit.record("read", resource_type=RESOURCE, resource_id=consultation.id,
                 patient=services.patient_ref(consultation), purpose="treatment",
                 detail=f"attachments of consultation {consultation.id}: {len(rows)}")
    return rows


def download(identity: Identity, consultation_id: str, attachment_id: str) -> tuple[Attachment, bytes]:
    """One file of a consultation the caller's institution is involved in, opened; another id answers 404."""
    consultation = services.visible(identity, consultation_id)
    attachment = platform_session().get(Attachment, attachment_id) if len(attachment_id) <= 36 else None
    if attachment is None or attachment.consultation_id != consultation.id:
        audit.record("read", "not_found", resource_type=RESOURCE, resource_id=attachment_id[:80],
                     patient=services.patient_ref(consultation), detail=f"consultation {consultation.id}")
        abort(404, message="No such file in this consultation.")
    content = keyring().decrypt_bytes(attachment.content_enc, content_aad(attachment.id, consultation.id))
    if hashlib.sha256(content).hexdigest() != attachment.sha256:
        log.error("attachment %s opens but does not match its sha256", attachment.id)
        abort(500, message="The stored file does not match its checksum.")
    audit.record("read", resource_type=RESOURCE, resource_id=attachment.id,
                 patient=services.patient_ref(consultation), purpose="treatment",
                 detail=f"consultation {consultation.id}: {attachment.media_type}, {attachment.size} bytes")
    return attachment, content


def usernames(user_ids: set[int]) -> dict[int, str]:
    """Who uploaded or claimed, by user id, in one query."""
    if not user_ids:
        return {}
    rows = platform_session().execute(select(User.id, User.username).where(User.id.in_(user_ids)))
    return {user_id: username for user_id, username in rows.all()}
