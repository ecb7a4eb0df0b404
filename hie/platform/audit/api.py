"""The audit trail for auditors, limited to the tenants of their region (at least their own tenant)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import func, or_, select

from hie.platform.access import Permission, region_subtree, require
from hie.platform.audit.models import AuditEvent
from hie.platform.audit.schemas import AuditEventSchema, AuditQuerySchema
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.tenants.models import Tenant

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="Audit trail")


@blp.route("")
class AuditEvents(MethodView):
    """Audit events, newest first."""

    decorators = [login_required]

    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditEventSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[AuditEvent]:
        """Search the audit trail by patient, user, action, outcome and time"""
        identity = require(Permission.audit_read)
        session = platform_session()
        regions = region_subtree(session, identity.region_code)
        # An auditor always sees their own tenant, also when it has no region (and so no subtree).
        tenant_codes = {identity.tenant_code,
                        *session.scalars(select(Tenant.code).where(Tenant.region_code.in_(regions)))}
        query = select(AuditEvent).where(
            or_(AuditEvent.tenant_code.in_(tenant_codes), AuditEvent.tenant_code.is_(None))
        )
        if "patient" in filters:
            wanted = filters["patient"]
            # A bare record id also finds attempts made from other tenants, which name the caller's shard.
            query = query.where(AuditEvent.patient == wanted if "/" in wanted else AuditEvent.patient.endswith(
                "/" + wanted, autoescape=True))
        if "user" in filters:
            query = query.where(AuditEvent.username == filters["user"])
        if "action" in filters:
            query = query.where(AuditEvent.action == filters["action"])
        if "outcome" in filters:
            query = query.where(AuditEvent.outcome == filters["outcome"])
        if "since" in filters:
            query = query.where(AuditEvent.occurred_at >= filters["since"])
        if "until" in filters:
            query = query.where(AuditEvent.occurred_at <= filters["until"])
        pagination_parameters.item_count = session.scalar(select(func.count()).select_from(query.subquery()))
        return list(session.scalars(
            query.order_by(AuditEvent.seq.desc())
            .offset(pagination_parameters.first_item).limit(pagination_parameters.page_size)
        ))
