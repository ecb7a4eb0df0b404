"""REST routes of the reading queues: the worklist of a reading department, claiming a read and giving it back."""

from __future__ import annotations

import http
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from hie.consult import queue
from hie.consult.api import blp
from hie.consult.models import Consultation, Kind
from hie.consult.services import READS
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session, utcnow
from hie.platform.schemas import PathSchema


def _clinical(view: Callable[..., Any]) -> Callable[..., Any]:
    """The permission before the query string: a caller without patient:read learns nothing from a 422."""
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        require(Permission.patient_read)
        return view(*args, **kwargs)
    return guarded


class QueueQuerySchema(PathSchema):
    """Which queue: the kind of read, optionally one department of the caller's institution."""

    class Meta:
        ordered = True

    kind = fields.String(required=True, validate=validate.OneOf([kind.value for kind in READS]))
    department = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


class QueueEntrySchema(Schema):
    """One open read: its deadline, whether it is overdue, who holds it (an expired claim shows as none)."""

    id = fields.String()
    kind = fields.String()
    urgency = fields.String()
    status = fields.String(metadata={"description": "requested, accepted or in_session"})
    department = fields.String()
    requester_institution = fields.String(allow_none=True, metadata={"description": "institution code"})
    master_person_id = fields.String(metadata={"description": "the patient in the EMPI (read the shared record "
                                                              "through the exchange; never a name here)"})
    question = fields.String()
    records = fields.List(fields.String())
    attachments = fields.Integer(metadata={"description": "files sent with the read"})
    created_at = fields.AwareDateTime()
    waiting_minutes = fields.Integer()
    due_at = fields.AwareDateTime(allow_none=True)
    overdue = fields.Boolean()
    claimed_by = fields.String(allow_none=True, metadata={"description": "username of the live claim's reader"})
    claim_expires_at = fields.AwareDateTime(allow_none=True)


def _entry(consultation: Consultation) -> dict[str, Any]:
    return queue.entries(platform_session(), [consultation], utcnow())[0]


@blp.route("/reading-queue")
class ReadingQueue(MethodView):
    """The caller's institution's open imaging or ECG reads."""

    decorators = [_clinical, login_required]

    @blp.arguments(QueueQuerySchema, location="query")
    @blp.response(200, QueueEntrySchema(many=True))
    @blp.paginate()
    def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """Open reads (requested, accepted, in session) of one kind, urgent first, then the longest waiting"""
        rows, total = queue.page(require(Permission.patient_read), Kind(query["kind"]), query["department"],
                                 pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return rows


@blp.route("/reading-queue/<string:consultation_id>/claim")
class ReadingClaim(MethodView):
    """Hold a read for one reader."""

    decorators = [login_required]

    @blp.response(200, QueueEntrySchema)
    @blp.alt_response(409, response=http.HTTPStatus.CONFLICT.name)
    def post(self, consultation_id: str) -> dict[str, Any]:
        """Claim a read for HIE_CONSULT_CLAIM_MINUTES (again to renew); a requested read is accepted and started.
        Another reader's live claim is 409 naming them; an expired one is taken over"""
        return _entry(queue.claim(require(Permission.patient_write), consultation_id))


@blp.route("/reading-queue/<string:consultation_id>/release")
class ReadingRelease(MethodView):
    """Give a read back to the queue."""

    decorators = [login_required]

    @blp.response(200, QueueEntrySchema)
    @blp.alt_response(409, response=http.HTTPStatus.CONFLICT.name)
    def post(self, consultation_id: str) -> dict[str, Any]:
        """Release the caller's claim on a read; the read keeps its state and waits for another reader"""
        return _entry(queue.release(require(Permission.patient_write), consultation_id))
