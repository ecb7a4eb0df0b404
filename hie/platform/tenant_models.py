"""Every tenant-shard model, imported so metadata and migrations see the whole shard schema."""

from hie.exchange.models import FhirResource, FhirResourceVersion, FhirToken
from hie.patients import sealing  # noqa: F401  (registers sealed columns for key rotation)
from hie.patients.models import Patient
from hie.platform.jobs.models import TenantOutboxEvent

__all__ = ["FhirResource", "FhirResourceVersion", "FhirToken", "Patient", "TenantOutboxEvent"]
