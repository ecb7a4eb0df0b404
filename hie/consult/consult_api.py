"""REST API of consultations: request, list, read, and one endpoint per move (accept books the session)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app
from flask.views import MethodView

from hie.consult import scheduling, services, views
from hie.consult.api import blp
from hie.consult.models import Consultation
from hie.consult.schemas import (
    ConsultAcceptSchema,
    ConsultationCountSchema,
    ConsultationInSchema,
    ConsultationOutSchema,
    ConsultationQuerySchema,
    ConsultCancelSchema,
    ConsultDeclineSchema,
    ConsultNoteSchema,
    ConsultRescheduleSchema,
)
from hie.platform.access import Permission, require, require_any
from hie.platform.auth.decorators import login_required
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session


def _needs(*permissions: Permission) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The permission before the body or query string: a caller without it learns nothing from a 422."""
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            require_any(*permissions)
            return view(*args, **kwargs)
        return guarded
    return decorate


_READER = _needs(Permission.patient_read, Permission.own_record_read)
_WRITER = _needs(Permission.patient_write)


def _extra() -> dict[str, str]:
    return current_app.config["HIE"].extra


def _shown(consultation: Consultation) -> dict[str, Any]:
    return views.full_view(platform_session(), consultation, _extra())


@blp.route("/consultations")
class Consultations(MethodView):
    """The institution's consultations, in and out, and the caller's own sessions."""

    decorators = [login_required]

    @_READER
    @blp.arguments(ConsultationQuerySchema, location="query")
    @blp.response(200, ConsultationOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """Incoming (default) or outgoing consultations, or with participant=me the sessions the caller is invited
        to (a resident too); newest first, by state, kind and urgency"""
        if filters.get("participant") == "me":
            identity = require_any(Permission.patient_read, Permission.own_record_read)
        else:
            identity = require(Permission.patient_read)
        rows, total = services.search(identity, filters, pagination_parameters.first_item,
                                      pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return views.list_view(platform_session(), rows, _extra())

    @_WRITER
    @blp.arguments(ConsultationInSchema)
    @blp.response(201, ConsultationOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask a specialist or a department of another institution about a patient of the caller's institution"""
        return _shown(services.create(require(Permission.patient_write), body))


@blp.route("/consultations/count")
class ConsultationCount(MethodView):
    """What waits in the inbox."""

    decorators = [login_required]

    @blp.response(200, ConsultationCountSchema)
    def get(self) -> dict[str, int]:
        """Incoming consultations not yet answered, and how many of them are urgent"""
        return services.unanswered(require(Permission.patient_read))


@blp.route("/consultations/<string:consultation_id>")
class ConsultationById(MethodView):
    """One consultation with its steps, participants, schedule and video link."""

    decorators = [_READER, login_required]

    @blp.response(200, ConsultationOutSchema)
    def get(self, consultation_id: str) -> dict[str, Any]:
        """Read a consultation the caller's institution asks or answers, or whose session the caller is invited to"""
        identity = require_any(Permission.patient_read, Permission.own_record_read)
        return _shown(services.get_visible(identity, consultation_id))


def _writer() -> Identity:
    return require(Permission.patient_write)


@blp.route("/consultations/<string:consultation_id>/accept")
class ConsultationAccept(MethodView):
    """requested -> accepted: the session is booked."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultAcceptSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The consulting side books the session: time, duration, consultants (never double-booked), optionally the
        patient; the requesting doctor is invited and a video room made"""
        return _shown(scheduling.accept(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/reschedule")
class ConsultationReschedule(MethodView):
    """accepted -> accepted at another time."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultRescheduleSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The consulting side moves the session (and may change its consultants)"""
        return _shown(scheduling.reschedule(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/decline")
class ConsultationDecline(MethodView):
    """requested -> declined."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultDeclineSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The consulting side declines, saying why; its care relationship ends at once"""
        return _shown(services.decline(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/start")
class ConsultationStart(MethodView):
    """accepted -> in_session."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultNoteSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The consulting side opens the session; refused (409) while no video service is configured"""
        return _shown(services.start(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/acknowledge")
class ConsultationAcknowledge(MethodView):
    """opinion_given -> acknowledged."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultNoteSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The requesting side confirms it has read the opinion"""
        return _shown(services.acknowledge(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/close")
class ConsultationClose(MethodView):
    """acknowledged -> closed."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultNoteSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The requesting side closes it; the consulting side reads on for HIE_CONSULT_GRACE_DAYS"""
        return _shown(services.close(_writer(), consultation_id, body))


@blp.route("/consultations/<string:consultation_id>/cancel")
class ConsultationCancel(MethodView):
    """requested or accepted -> cancelled."""

    decorators = [_WRITER, login_required]

    @blp.arguments(ConsultCancelSchema)
    @blp.response(200, ConsultationOutSchema)
    def post(self, body: dict[str, Any], consultation_id: str) -> dict[str, Any]:
        """The requesting side withdraws before the session; the care relationship ends at once"""
        return _shown(services.cancel(_writer(), consultation_id, body))
