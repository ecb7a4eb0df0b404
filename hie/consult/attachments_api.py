"""REST routes of a consultation's files: upload (JSON with the file base64, since every body on the platform is
JSON), list, download."""

from __future__ import annotations

import http
import io
from typing import Any

from flask import Response, send_file
from flask.views import MethodView
from marshmallow import Schema, fields

from hie.consult import attachments
from hie.consult.api import blp
from hie.consult.models import Attachment
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.schemas import PathSchema


class AttachmentInSchema(PathSchema):
    """One file, base64 in JSON; the type is checked against the content (the checks are audited, so they live in
    the service, not here)."""

    class Meta:
        ordered = True

    filename = fields.String(required=True, metadata={"description": "1 to 200 characters, no / \\ or control "
                                                                     "characters"})
    media_type = fields.String(required=True, metadata={
        "description": f"one of {', '.join(attachments.MEDIA_TYPES)}; the content's magic bytes must agree"})
    content_base64 = fields.String(required=True, metadata={
        "description": f"the file, standard base64; at most {attachments.MAX_FILE_SETTING} bytes once decoded "
                       f"(default {attachments.DEFAULT_MAX_FILE_BYTES}), and the whole body within "
                       "HIE_MAX_REQUEST_BYTES"})


class AttachmentOutSchema(Schema):
    """A file's description; its content is downloaded on its own."""

    id = fields.String()
    consultation_id = fields.String()
    filename = fields.String()
    media_type = fields.String()
    size = fields.Integer(metadata={"description": "bytes"})
    sha256 = fields.String(metadata={"description": "hex SHA-256 of the file as uploaded"})
    uploaded_by = fields.String(allow_none=True, metadata={"description": "username"})
    uploaded_at = fields.AwareDateTime()


def _shown(rows: list[Attachment]) -> list[dict[str, Any]]:
    names = attachments.usernames({row.uploaded_by for row in rows})
    return [{"id": row.id, "consultation_id": row.consultation_id, "filename": row.filename,
             "media_type": row.media_type, "size": row.size, "sha256": row.sha256,
             "uploaded_by": names.get(row.uploaded_by), "uploaded_at": row.uploaded_at} for row in rows]


@blp.route("/consultations/<string:consultation_id>/attachments")
class ConsultationAttachments(MethodView):
    """The files sent with a consultation."""

    decorators = [login_required]

    @blp.response(200, AttachmentOutSchema(many=True))
    @blp.paginate()
    def get(self, consultation_id: str, pagination_parameters: Any) -> list[dict[str, Any]]:
        """The consultation's files, oldest first; for the asking and the answering institution only"""
        rows = attachments.listing(require(Permission.patient_read), consultation_id)
        pagination_parameters.item_count = len(rows)
        first = pagination_parameters.first_item
        return _shown(rows[first:first + pagination_parameters.page_size])

    @blp.arguments(AttachmentInSchema)
    @blp.response(201, AttachmentOutSchema)
    @blp.alt_response(409, response=http.HTTPStatus.CONFLICT.name)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """Add an image (JPEG, PNG), a PDF or a DICOM file: the requester until the opinion is given, the consultant
        until the consultation ends; a file whose content is not of its declared type is refused"""
        return _shown([attachments.upload(require(Permission.patient_write), consultation_id, body)])[0]


@blp.route("/consultations/<string:consultation_id>/attachments/<string:attachment_id>")
class ConsultationAttachment(MethodView):
    """One file's content."""

    decorators = [login_required]

    @blp.response(200, {"type": "string", "format": "binary"}, content_type="application/octet-stream",
                  description="The file as uploaded, with its media type and a download file name")
    def get(self, consultation_id: str, attachment_id: str) -> Response:
        """Download a file of the consultation (served as an attachment, never sniffed)"""
        attachment, content = attachments.download(require(Permission.patient_read), consultation_id, attachment_id)
        response = send_file(io.BytesIO(content), mimetype=attachment.media_type, as_attachment=True,
                             download_name=attachment.filename, conditional=False, etag=False, max_age=0)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response
