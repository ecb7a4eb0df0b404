"""The kernel's tenant-shard models; migrations add each installed module's with import_all("tenant_models")."""

from hie.platform.audit.models import ShardAuditPending
from hie.platform.jobs.models import TenantOutboxEvent

__all__ = ["ShardAuditPending", "TenantOutboxEvent"]
