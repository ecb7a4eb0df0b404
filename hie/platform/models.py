"""Every platform-database model, imported so metadata and migrations see the whole schema."""

from hie.empi.models import (
    BlockingKey,
    MasterPerson,
    MatchModel,
    NotAMatch,
    PersonEvent,
    PersonRecord,
    RegionThresholds,
    ReviewItem,
)
from hie.exchange.models import RecordLocation
from hie.patients.stats import InstitutionPatientCount
from hie.platform.audit.models import AuditChainHead, AuditEvent
from hie.platform.auth.models import AuthSession, User, UserRole
from hie.platform.care import CareRelationship
from hie.platform.jobs.models import HandledEvent, PlatformOutboxEvent
from hie.tenants.models import Institution, Region, Tenant

__all__ = [
    "AuditChainHead", "AuditEvent", "AuthSession", "BlockingKey", "CareRelationship", "HandledEvent", "Institution",
    "InstitutionPatientCount", "MasterPerson", "MatchModel", "NotAMatch", "PersonEvent", "PersonRecord",
    "PlatformOutboxEvent", "RecordLocation", "Region", "RegionThresholds", "ReviewItem", "Tenant", "User", "UserRole",
]
