"""The kernel's platform-database models; migrations add each installed module's with import_all("platform_models")."""

from hie.platform.audit.models import AuditChainHead, AuditEvent
from hie.platform.auth.models import AuthSession, LoginAlert, LoginThrottle, User, UserRole
from hie.platform.care import CareRelationship
from hie.platform.jobs.models import HandledEvent, PlatformOutboxEvent
from hie.tenants.models import Institution, Region, Tenant

__all__ = [
    "AuditChainHead", "AuditEvent", "AuthSession", "CareRelationship", "HandledEvent", "Institution", "LoginAlert",
    "LoginThrottle", "PlatformOutboxEvent", "Region", "Tenant", "User", "UserRole",
]
