"""EMPI REST API: cross-reference (PIX), demographic query (PDQ) and stewardship."""

from __future__ import annotations

from typing import Any

from flask import current_app, g
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import func, select

from hie.empi import queries, stewardship
from hie.empi.index import survivor, unseal_demographics
from hie.empi.models import PersonEvent, PersonRecord, ReviewItem, ReviewStatus
from hie.empi.schemas import (
    CrossReferenceQuerySchema,
    CrossReferenceSchema,
    DemographicQuerySchema,
    MergeSchema,
    PersonEventSchema,
    PersonMatchSchema,
    PersonSchema,
    ReviewDecisionSchema,
    ReviewSchema,
)
from hie.empi.services import thresholds_for
from hie.platform.access import Permission, require, require_any
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.tenants.models import Institution

blp = Blueprint("empi", __name__, url_prefix="/api/v1/empi", description="Master patient index")


def person_ref(person_id: str) -> str:
    """How the audit names a master person."""
    return f"empi/{person_id}"


def _cache() -> Any:
    return current_app.extensions["hie.cache"]


def _ring() -> Any:
    return current_app.extensions["hie.keyring"]


@blp.route("/xref")
class CrossReference(MethodView):
    """PIX."""

    decorators = [login_required]

    @blp.arguments(CrossReferenceQuerySchema, location="query")
    @blp.response(200, CrossReferenceSchema)
    def get(self, query: dict[str, str]) -> dict[str, Any]:
        """Master person of one of the caller's own local records, with its local ids elsewhere"""
        identity = require(Permission.patient_read)
        session = platform_session()
        person_id = queries.cross_reference(session, _cache(), identity.institution_id, query["local_id"])
        if person_id is None:
            audit.record("xref", "not_found", resource_type="MasterPerson", resource_id=query["local_id"])
            abort(404, message="No record with that local id at your institution.")
        audit.record("xref", resource_type="MasterPerson", resource_id=person_id, patient=person_ref(person_id),
                     purpose="treatment")
        held = queries.holdings(session, identity, person_id)
        return {"master_person_id": person_id, "identifiers": held.identifiers, "other_records": held.other_records}


@blp.route("/persons")
class PersonQuery(MethodView):
    """PDQ."""

    decorators = [login_required]

    @blp.arguments(DemographicQuerySchema, location="query")
    @blp.response(200, PersonMatchSchema(many=True))
    def get(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Find master persons by demographics, with a score and a match grade; a person's id and local records
        only where the caller may read them, other registrations as a count (stewards see all)"""
        identity = require_any(Permission.patient_read, Permission.empi_steward)
        count = query.pop("count")
        if not any(query.values()):
            abort(400, message="Give at least one of name, sex, birth_date, id_number, phone, address.")
        session = platform_session()
        matches = queries.demographic_query(session, _ring(), query, count,
                                            thresholds_for(session, identity.region_code))
        held = {m.person_id: queries.holdings(session, identity, m.person_id) for m in matches}
        shown = {person_id for person_id, holding in held.items() if holding.visible}
        audit.record("search", resource_type="MasterPerson", purpose=queries.purpose(identity),
                     detail=queries.audit_detail(_ring(), g.request_id, "search", query, matches, shown))
        return [{"master_person_id": m.person_id if m.person_id in shown else None, "score": m.score,
                 "weight": round(m.weight, 3), "grade": m.grade, "identifiers": held[m.person_id].identifiers,
                 "other_records": held[m.person_id].other_records} for m in matches]


def _steward() -> Any:
    return require(Permission.empi_steward)


def _person_or_404(person_id: str) -> Any:
    person = queries.person(platform_session(), person_id)
    if person is None:
        abort(404, message="No such master person.")
    return person


@blp.route("/persons/<string:person_id>")
class PersonById(MethodView):
    """A master person."""

    decorators = [login_required]

    @blp.response(200, PersonSchema)
    def get(self, person_id: str) -> dict[str, Any]:
        """A master person's status and local ids (stewards)"""
        _steward()
        person = _person_or_404(person_id)
        audit.record("read", resource_type="MasterPerson", resource_id=person.id, patient=person_ref(person.id),
                     purpose="stewardship")
        return {"master_person_id": person.id, "status": person.status.value, "merged_into": person.merged_into,
                "identifiers": queries.identifiers(platform_session(), person.id)}


@blp.route("/persons/<string:person_id>/history")
class PersonHistory(MethodView):
    """Links, merges, unmerges."""

    decorators = [login_required]

    @blp.response(200, PersonEventSchema(many=True))
    def get(self, person_id: str) -> list[PersonEvent]:
        """Everything that happened to a master person, oldest first (stewards)"""
        _steward()
        _person_or_404(person_id)
        audit.record("read", resource_type="MasterPersonHistory", resource_id=person_id,
                     patient=person_ref(person_id), purpose="stewardship")
        return list(platform_session().scalars(
            select(PersonEvent).where((PersonEvent.person_id == person_id) | (PersonEvent.other_person_id == person_id))
            .order_by(PersonEvent.id)))


def _steward_action(action: str, person_id: str, run: Any) -> Any:
    identity = _steward()
    _person_or_404(person_id)
    try:
        event = run(identity.user_id)
    except stewardship.StewardshipError as exc:
        audit.record(action, "failure", resource_type="MasterPerson", resource_id=person_id,
                     patient=person_ref(person_id), detail=str(exc))
        abort(409, message=str(exc))
    except LookupError:
        abort(404, message="No such master person.")
    audit.record(action, resource_type="MasterPerson", resource_id=person_id, patient=person_ref(person_id),
                 purpose="stewardship", detail=f"event {event.id}")
    return event


@blp.route("/persons/<string:person_id>/merge")
class Merge(MethodView):
    """Merge two master persons."""

    decorators = [login_required]

    @blp.arguments(MergeSchema)
    @blp.response(200, PersonEventSchema)
    def post(self, body: dict[str, str], person_id: str) -> PersonEvent:
        """Merge this master person into another; undo with unmerge (stewards)"""
        return _steward_action("merge", person_id, lambda user_id: stewardship.merge(
            platform_session(), _ring(), _cache(), person_id, body["into"], user_id))


@blp.route("/persons/<string:person_id>/unmerge")
class Unmerge(MethodView):
    """Undo a merge."""

    decorators = [login_required]

    @blp.response(200, PersonEventSchema)
    def post(self, person_id: str) -> PersonEvent:
        """Restore a merged master person with exactly the records it had (stewards)"""
        return _steward_action("unmerge", person_id, lambda user_id: stewardship.unmerge(
            platform_session(), _cache(), person_id, user_id))


def _side(record: PersonRecord) -> dict[str, Any]:
    session = platform_session()
    raw = unseal_demographics(current_app.extensions["hie.keyring"], record)["raw"]
    return {
        "record_id": record.id, "master_person_id": survivor(session, record.person_id),
        "institution_code": session.scalar(select(Institution.code).where(Institution.id == record.institution_id)),
        "local_id": record.local_id, "demographics": raw,
    }


def _review_out(item: ReviewItem) -> dict[str, Any]:
    session = platform_session()
    return {"id": item.id, "status": item.status.value, "weight": round(item.weight, 3), "levels": item.levels,
            "veto": item.veto, "record": _side(session.get(PersonRecord, item.record_id)),
            "candidate": _side(session.get(PersonRecord, item.candidate_id))}


@blp.route("/reviews")
class Reviews(MethodView):
    """The review queue."""

    decorators = [login_required]

    @blp.response(200, ReviewSchema(many=True))
    @blp.paginate(page_size=20, max_page_size=100)
    def get(self, pagination_parameters: Any) -> list[dict[str, Any]]:
        """Open possible matches, both records side by side (stewards)"""
        _steward()
        session = platform_session()
        query = select(ReviewItem).where(ReviewItem.status == ReviewStatus.open)
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        items = session.scalars(query.order_by(ReviewItem.id).offset(pagination_parameters.first_item)
                                .limit(pagination_parameters.page_size)).all()
        for item in items:
            audit.record("read", resource_type="EmpiReview", resource_id=str(item.id), purpose="stewardship")
        return [_review_out(item) for item in items]


@blp.route("/reviews/<int:review_id>")
class ReviewDecision(MethodView):
    """Decide a possible match."""

    decorators = [login_required]

    @blp.arguments(ReviewDecisionSchema)
    @blp.response(200, ReviewSchema)
    def post(self, body: dict[str, str], review_id: int) -> dict[str, Any]:
        """Link the two records' persons, or mark them not a match so they are not proposed again (stewards)"""
        identity = _steward()
        session = platform_session()
        try:
            item = stewardship.decide_review(session, _ring(), _cache(), review_id, body["decision"], identity.user_id)
        except LookupError:
            abort(404, message="No such review.")
        except stewardship.StewardshipError as exc:
            abort(409, message=str(exc))
        audit.record(body["decision"], resource_type="EmpiReview", resource_id=str(review_id),
                     purpose="stewardship")
        return _review_out(item)
