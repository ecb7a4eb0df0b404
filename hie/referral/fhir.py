"""Referrals over FHIR: each is a ServiceRequest (what is asked) and a Task (where it stands), same id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Response, request
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from hie.exchange.openapi import fhir_responses
from hie.exchange.outcome import FhirError, fhir_blueprint, fhir_response
from hie.platform.access import Permission, require
from hie.platform.audit import services as audit
from hie.platform.auth.decorators import authenticate_request
from hie.platform.db import platform_session
from hie.platform.limits import MAX_INT, ascii_int
from hie.referral import services, views
from hie.referral.models import Referral, ReferralStatus, ReferralStep, Urgency
from hie.tenants.models import Institution

bp = fhir_blueprint("fhir_referral", __name__)
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
INSTITUTION_SYSTEM = "urn:hie:institution"
DIRECTION_SYSTEM = "urn:hie:referral-direction"
REFERRAL_CODE = {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
SERVICE_REQUEST_STATUS = {
    ReferralStatus.requested: "active", ReferralStatus.accepted: "active", ReferralStatus.arrived: "active",
    ReferralStatus.completed: "completed", ReferralStatus.declined: "revoked", ReferralStatus.cancelled: "revoked",
    ReferralStatus.no_show: "revoked",
}
TASK_STATUS = {
    ReferralStatus.requested: "requested", ReferralStatus.accepted: "accepted", ReferralStatus.declined: "rejected",
    ReferralStatus.arrived: "in-progress", ReferralStatus.completed: "completed",
    ReferralStatus.cancelled: "cancelled", ReferralStatus.no_show: "failed",
}
PRIORITY = {Urgency.routine: "routine", Urgency.urgent: "urgent", Urgency.emergency: "stat"}
DEFAULT_COUNT, MAX_COUNT = 50, 100

SERVICE_REQUEST_CODES = ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
TASK_CODES = ("draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
              "on-hold", "failed", "completed", "entered-in-error")
REASON_STATES = (ReferralStatus.declined, ReferralStatus.cancelled, ReferralStatus.no_show)
MAX_PATIENT_ID, MAX_INSTITUTION_CODE = 36, 32


@dataclass(frozen=True)
class FhirType:
    """How one of the two resource types maps the referral: its statuses and the parameter naming the receiver."""

    name: str
    statuses: dict[ReferralStatus, str]
    codes: tuple[str, ...]
    receiver_param: str


SERVICE_REQUEST = FhirType("ServiceRequest", SERVICE_REQUEST_STATUS, SERVICE_REQUEST_CODES, "performer")
TASK = FhirType("Task", TASK_STATUS, TASK_CODES, "owner")


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _organization(code: str) -> dict[str, Any]:
    return {"reference": f"Organization/{code}", "identifier": {"system": INSTITUTION_SYSTEM, "value": code}}


def service_request(referral: Referral, codes: dict[int, str]) -> dict[str, Any]:
    """What is asked: who is referred, by whom, to whom, why, with what, and when to come."""
    reasons: list[dict[str, Any]] = [
        {"coding": [{"system": ICD10_SYSTEM, "code": d["code"], "display": d["text"]}], "text": d["text"]}
        for d in referral.diagnoses]
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": referral.id, "meta": {"lastUpdated": _instant(referral.updated_at)},
        "status": SERVICE_REQUEST_STATUS[referral.status], "intent": "order",
        "category": [{"coding": [{"system": DIRECTION_SYSTEM, "code": referral.direction.value}]}],
        "priority": PRIORITY[referral.urgency], "code": {"coding": [REFERRAL_CODE]},
        "subject": {"reference": f"Patient/{referral.sender_patient_id}"},
        "authoredOn": _instant(referral.created_at),
        "requester": _organization(codes[referral.sender_institution_id]),
        "performer": [_organization(codes[referral.receiver_institution_id])],
        "reasonCode": [*reasons, {"text": referral.reason}],
    }
    if referral.receiver_department:
        resource["performerType"] = {"text": referral.receiver_department}
    if referral.appointment_at is not None:
        resource["occurrenceDateTime"] = _instant(referral.appointment_at)
    if referral.records:
        resource["supportingInfo"] = [{"reference": reference} for reference in referral.records]
    if referral.follow_up_of:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{referral.follow_up_of}"}]
    if referral.clinical_summary:
        resource["note"] = [{"text": referral.clinical_summary}]
    return resource


def task(referral: Referral, codes: dict[int, str], backs: dict[str, str], reasons: dict[str, str]) -> dict[str, Any]:
    """Where the referral stands: its state, the deadline to answer, why it ended, and what came of it."""
    resource: dict[str, Any] = {
        "resourceType": "Task", "id": referral.id, "meta": {"lastUpdated": _instant(referral.updated_at)},
        "status": TASK_STATUS[referral.status], "businessStatus": {"text": referral.status.value},
        "intent": "order", "priority": PRIORITY[referral.urgency], "code": {"coding": [REFERRAL_CODE]},
        "focus": {"reference": f"ServiceRequest/{referral.id}"},
        "for": {"reference": f"Patient/{referral.sender_patient_id}"},
        "authoredOn": _instant(referral.created_at), "lastModified": _instant(referral.updated_at),
        "requester": _organization(codes[referral.sender_institution_id]),
        "owner": _organization(codes[referral.receiver_institution_id]),
        "restriction": {"period": {"end": _instant(referral.due_at)}},
    }
    if referral.id in reasons:
        resource["statusReason"] = {"text": reasons[referral.id]}
    outputs = []
    if referral.discharge_summary:
        outputs.append({"type": {"text": "discharge summary"}, "valueString": referral.discharge_summary})
    if referral.id in backs:
        outputs.append({"type": {"text": "back-referral"},
                        "valueReference": {"reference": f"ServiceRequest/{backs[referral.id]}"}})
    if outputs:
        resource["output"] = outputs
    return resource


def _reasons(session: Session, referrals: list[Referral]) -> dict[str, str]:
    """Why each declined, cancelled or missed referral ended, as its last step says."""
    ended = [r.id for r in referrals if r.status in REASON_STATES]
    if not ended:
        return {}
    rows = session.execute(select(ReferralStep.referral_id, ReferralStep.note)
                           .where(ReferralStep.referral_id.in_(ended), ReferralStep.to_status.in_(REASON_STATES))
                           .order_by(ReferralStep.at, ReferralStep.id))
    return {referral_id: note for referral_id, note in rows if note}


def _resources(fhir_type: FhirType, referrals: list[Referral]) -> list[dict[str, Any]]:
    session = platform_session()
    codes = views.institution_codes(session, {i for r in referrals
                                              for i in (r.sender_institution_id, r.receiver_institution_id)})
    if fhir_type is SERVICE_REQUEST:
        return [service_request(referral, codes) for referral in referrals]
    backs = views.back_referrals(session, [r.id for r in referrals])
    reasons = _reasons(session, referrals)
    return [task(referral, codes, backs, reasons) for referral in referrals]


def _read(fhir_type: FhirType, referral_id: str) -> Response:
    authenticate_request()
    referral = services.get_visible(require(Permission.patient_read), referral_id)
    return fhir_response(_resources(fhir_type, [referral])[0])


@bp.get("/ServiceRequest/<referral_id>")
def read_service_request(referral_id: str) -> Response:
    """Read what a referral of the caller's institution asks for."""
    return _read(SERVICE_REQUEST, referral_id)


@bp.get("/Task/<referral_id>")
def read_task(referral_id: str) -> Response:
    """Read where a referral of the caller's institution stands."""
    return _read(TASK, referral_id)


def _invalid(fhir_type: FhirType, name: str, message: str) -> FhirError:
    expression = f"{fhir_type.name}.{name}" if name == "status" else name
    return FhirError(400, "invalid", message, [expression])


def _values(fhir_type: FhirType, name: str, raw: str, longest: int) -> list[str]:
    """The comma-separated alternatives of one parameter, each a bare id or code."""
    values = raw.split(",")
    if any(not value or len(value) > longest for value in values):
        raise _invalid(fhir_type, name, f"Parameter {name} takes values of 1 to {longest} characters.")
    return values


def _references(fhir_type: FhirType, name: str, raw: str, kind: str, longest: int) -> list[str]:
    """`<kind>/<id>` or a bare id, comma-separated for OR."""
    wanted = []
    for value in raw.split(","):
        if "/" in value:
            prefix, _, value = value.partition("/")
            if prefix != kind:
                raise _invalid(fhir_type, name, f"Parameter {name} must be {kind}/<id> or a bare id.")
        wanted.append(value)
    return _values(fhir_type, name, ",".join(wanted), longest)


def _count(fhir_type: FhirType, name: str, low: int, high: int, default: int) -> int:
    values = request.args.getlist(name)
    if not values:
        return default
    value = ascii_int(values[0], low, high) if len(values) == 1 else None
    if value is None:
        raise _invalid(fhir_type, name, f"Parameter {name} must be given once, a whole number from {low} to "
                       f"{high} in digits 0-9.")
    return value


def _filtered(fhir_type: FhirType, query: Select[tuple[Referral]]) -> Select[tuple[Referral]]:
    """The query narrowed by every search parameter (repeated ones AND, commas OR); unknown ones are 400."""
    accepted = {"patient", "status", "requester", fhir_type.receiver_param, "_count", "_offset"}
    for name in request.args:
        if name not in accepted:
            raise _invalid(fhir_type, name, f"Unknown search parameter {name!r} for {fhir_type.name}.")
    for raw in request.args.getlist("patient"):
        ids = _references(fhir_type, "patient", raw, "Patient", MAX_PATIENT_ID)
        query = query.where(or_(Referral.sender_patient_id.in_(ids), Referral.receiver_patient_id.in_(ids)))
    for raw in request.args.getlist("status"):
        wanted = _values(fhir_type, "status", raw, 20)
        unknown = [code for code in wanted if code not in fhir_type.codes]
        if unknown:
            raise _invalid(fhir_type, "status", f"{unknown[0]!r} is not a {fhir_type.name} status; use one of "
                           f"{', '.join(fhir_type.codes)}.")
        query = query.where(Referral.status.in_([s for s, code in fhir_type.statuses.items() if code in wanted]))
    for name, column in (("requester", Referral.sender_institution_id),
                         (fhir_type.receiver_param, Referral.receiver_institution_id)):
        for raw in request.args.getlist(name):
            institutions = _references(fhir_type, name, raw, "Organization", MAX_INSTITUTION_CODE)
            query = query.where(column.in_(select(Institution.id).where(Institution.code.in_(institutions))))
    return query


def _link(fhir_type: FhirType, relation: str, offset: int) -> dict[str, str]:
    given = [(name, value) for name, value in request.args.items(multi=True) if name != "_offset"]
    return {"relation": relation,
            "url": f"{request.host_url}fhir/{fhir_type.name}?{urlencode([*given, ('_offset', str(offset))])}"}


def _search(fhir_type: FhirType) -> Response:
    """A searchset of the caller's institution's referrals, newest first, each read audited."""
    authenticate_request()
    identity = require(Permission.patient_read)
    query = _filtered(fhir_type, select(Referral).where(or_(
        Referral.sender_institution_id == identity.institution_id,
        Referral.receiver_institution_id == identity.institution_id)))
    count = _count(fhir_type, "_count", 0, MAX_COUNT, DEFAULT_COUNT)
    offset = _count(fhir_type, "_offset", 0, MAX_INT, 0)
    session = platform_session()
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(Referral.created_at.desc(), Referral.id.desc())
                                .offset(offset).limit(count))) if count else []
    asked = ",".join(sorted(request.args))
    audit.record("search", resource_type=services.RESOURCE, purpose="treatment",
                 detail=f"fhir {fhir_type.name} params={asked} total={total} results={len(rows)}")
    for referral in rows:
        audit.record("read", resource_type=services.RESOURCE, resource_id=referral.id, purpose="treatment",
                     patient=audit.patient_ref(referral.sender_tenant_code, referral.sender_patient_id))
    links = [_link(fhir_type, "self", offset)]
    if count and offset + count < total:
        links.append(_link(fhir_type, "next", offset + count))
    entries = [{"fullUrl": f"{request.host_url}fhir/{fhir_type.name}/{resource['id']}", "resource": resource,
                "search": {"mode": "match"}} for resource in _resources(fhir_type, rows)]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if entries:
        bundle["entry"] = entries
    return fhir_response(bundle)


@bp.get("/ServiceRequest")
def search_service_requests() -> Response:
    """Search the caller's institution's referrals as ServiceRequests."""
    return _search(SERVICE_REQUEST)


@bp.get("/Task")
def search_tasks() -> Response:
    """Search the caller's institution's referrals as Tasks."""
    return _search(TASK)


def _search_parameters(fhir_type: FhirType) -> list[dict[str, Any]]:
    reference = {"type": "string", "minLength": 1}
    return [
        {"in": "query", "name": "patient", "required": False, "schema": reference,
         "description": "Patient/<id> or <id>: either side's record of the patient"},
        {"in": "query", "name": "status", "required": False,
         "schema": {"type": "string", "enum": list(fhir_type.codes)}},
        {"in": "query", "name": "requester", "required": False, "schema": reference,
         "description": "Organization/<code> or <code>: the sending institution"},
        {"in": "query", "name": fhir_type.receiver_param, "required": False, "schema": reference,
         "description": "Organization/<code> or <code>: the receiving institution"},
        {"in": "query", "name": "_count", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}},
        {"in": "query", "name": "_offset", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT}},
    ]


def capability_resources() -> list[dict[str, Any]]:
    """ServiceRequest and Task as the CapabilityStatement declares them: read and search, written through the API."""
    return [{"type": fhir_type.name, "interaction": [{"code": "read"}, {"code": "search-type"}],
             "documentation": f"Referrals of the caller's institution as {fhir_type.name}s; they are made and moved "
                              f"through /api/v1/referrals, not written over FHIR.",
             "searchParam": [{"name": "patient", "type": "reference"}, {"name": "status", "type": "token"},
                             {"name": "requester", "type": "reference"},
                             {"name": fhir_type.receiver_param, "type": "reference"}]}
            for fhir_type in (SERVICE_REQUEST, TASK)]


def openapi_operations() -> dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """The four routes for the served OpenAPI document (hie.exchange.openapi reads them via the module)."""
    referral_id = {"in": "path", "name": "referral_id", "required": True, "schema": {"type": "string"}}
    errors = ("400", "401", "403", "404")
    operations: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {}
    for fhir_type, read, search in ((SERVICE_REQUEST, "read_service_request", "search_service_requests"),
                                    (TASK, "read_task", "search_tasks")):
        operations[f"fhir_referral.{read}"] = ("get", {
            "summary": f"A referral of the caller's institution as a {fhir_type.name}",
            "responses": fhir_responses(200, "FhirResource", fhir_type.name, errors)}, [referral_id])
        operations[f"fhir_referral.{search}"] = ("get", {
            "summary": f"Search the caller's institution's referrals as {fhir_type.name}s",
            "parameters": _search_parameters(fhir_type),
            "responses": fhir_responses(200, "FhirBundle", "searchset", errors)}, [])
    return operations
