"""The audit trail as FHIR AuditEvent, for auditors of the event's region."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from hie.exchange.outcome import FhirError
from hie.platform.access import Permission, permissions_of, region_subtree
from hie.platform.audit import services as audit
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.identity import current_identity
from hie.platform.db import platform_session
from hie.platform.limits import MAX_ID, ascii_int
from hie.tenants.models import Tenant

_ACTIONS = {"create": "C", "read": "R", "search": "E", "update": "U", "login": "E", "logout": "E"}
_OUTCOMES = {"success": "0", "failure": "4", "denied": "4", "not_found": "4", "locked": "4", "error": "8"}


def to_fhir(event: AuditEvent) -> dict[str, Any]:
    """One audit row as an AuditEvent resource (R4)."""
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": str(event.seq),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "urn:hie:audit-action", "code": event.action}],
        "action": _ACTIONS.get(event.action, "E"),
        "recorded": event.occurred_at.isoformat(),
        "outcome": _OUTCOMES.get(event.outcome, "4"),
        "outcomeDesc": event.outcome + (f": {event.detail}" if event.detail else ""),
        "agent": [{"who": {"identifier": {"system": "urn:hie:user", "value": str(event.user_id or "")},
                           "display": event.username or "unknown"},
                   "requestor": True, "network": {"address": event.source_ip or "", "type": "2"}}],
        "source": {"site": event.tenant_code or "platform", "observer": {"display": "hie"}},
    }
    if event.purpose:
        resource["purposeOfEvent"] = [{"coding": [{"system": "urn:hie:purpose", "code": event.purpose}]}]
    if event.break_glass:
        resource["purposeOfEvent"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                   "code": "ETREAT", "display": "Emergency Treatment"}]}]
    entities = []
    if event.patient:
        entities.append({"what": {"identifier": {"system": "urn:hie:patient", "value": event.patient}},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"}})
    if event.resource_type and event.resource_id:
        entities.append({"what": {"reference": f"{event.resource_type}/{event.resource_id}"}})
    if entities:
        resource["entity"] = entities
    return resource


def read_audit_event(event_id: str) -> dict[str, Any]:
    """An auditor reads one event of their region; anything else is 404."""
    identity = current_identity()
    if Permission.audit_read not in permissions_of(identity):
        audit.record("read", "denied", resource_type="AuditEvent", resource_id=event_id[:80], purpose="audit")
        raise FhirError(403, "forbidden", "Reading audit events needs the audit:read permission.")
    session = platform_session()
    seq = ascii_int(event_id, 1, MAX_ID)
    event = session.get(AuditEvent, seq) if seq is not None else None
    if event is not None and event.tenant_code is not None:
        regions = region_subtree(session, identity.region_code)
        tenant_region = session.scalar(select(Tenant.region_code).where(Tenant.code == event.tenant_code))
        if tenant_region not in regions:
            event = None
    if event is None:
        audit.record("read", "not_found", resource_type="AuditEvent", resource_id=event_id[:80], purpose="audit")
        raise FhirError(404, "not-found", f"AuditEvent/{event_id} is not known or not visible to you.")
    audit.record("read", resource_type="AuditEvent", resource_id=event_id, purpose="audit",
                 patient=event.patient)
    return to_fhir(event)
