"""Mutual recognition of results: before ordering a test, see whether it was done recently anywhere."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, select
from werkzeug.datastructures import MultiDict

from hie.exchange import patient_scope, store
from hie.exchange.models import FhirResource, FhirToken
from hie.exchange.outcome import FhirError
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.config import PRIOR_RESULTS_MAX_DAYS
from hie.platform.db import platform_session, shard_session, utcnow
from hie.platform.limits import ascii_int
from hie.tenants.models import Institution

RESULT_TYPES = ("Observation", "DiagnosticReport", "ImagingStudy")
VOID_STATUSES = ("entered-in-error", "cancelled")  # never done, or recorded by mistake: nothing to recognise


def _arguments(args: MultiDict) -> tuple[str | None, str, int]:
    raw = args.get("code")
    if not raw:
        raise FhirError(400, "required", "Give code=system|code of the test you are about to order.", ["code"])
    system, bar, code = raw.partition("|")
    if not bar:
        system, code = "", raw
    raw_days = args.get("days")
    days = current_app.config["HIE"].prior_results_days if raw_days is None else \
        ascii_int(raw_days, 1, PRIOR_RESULTS_MAX_DAYS)
    if days is None:
        raise FhirError(400, "invalid", f"days must be a whole number from 1 to {PRIOR_RESULTS_MAX_DAYS}, "
                        "in digits 0-9.", ["days"])
    return system or None, code, days


def prior_results(identity: Identity, patient_id: str, args: MultiDict) -> dict[str, Any]:
    """Parameters listing each recent result: where and when always; the reference only if the caller may read it."""
    system, code, days = _arguments(args)
    since = utcnow() - timedelta(days=days)
    results: list[dict[str, Any]] = []
    names = dict(platform_session().execute(select(Institution.id, Institution.name)).all())
    scope = patient_scope.locate_patient(identity, patient_id, resource_type="PriorResults")
    for tenant_code, patient_ids in scope.shards:
        query = (select(FhirResource).join(FhirToken, (FhirToken.resource_type == FhirResource.resource_type)
                                           & (FhirToken.resource_id == FhirResource.id))
                 .where(FhirResource.resource_type.in_(RESULT_TYPES), FhirResource.patient_id.in_(patient_ids),
                        FhirToken.param.in_(("code", "modality")), FhirToken.code == code, FhirResource.date >= since,
                        or_(FhirResource.status.is_(None), FhirResource.status.not_in(VOID_STATUSES)))
                 .order_by(FhirResource.date.desc()))
        if system:
            query = query.where(FhirToken.system == system)
        for row in shard_session(tenant_code).scalars(query).unique():
            visible = store.basis_for(identity, tenant_code, row) is not None
            part = [
                {"name": "institution", "valueString": names.get(row.institution_id, "?")},
                {"name": "date", "valueDateTime": row.date.isoformat() if row.date else None},
                {"name": "resourceType", "valueCode": row.resource_type},
                {"name": "visible", "valueBoolean": visible},
            ]
            if visible:
                part.append({"name": "result", "valueReference": {"reference": f"{row.resource_type}/{row.id}"}})
            results.append({"name": "prior", "part": part})
    audit.record("read", resource_type="PriorResults", resource_id=patient_id, purpose="treatment",
                 patient=audit.patient_ref(scope.tenant_code, patient_id),
                 detail=f"code={code} days={days} found={len(results)}")
    return {"resourceType": "Parameters",
            "parameter": [{"name": "found", "valueBoolean": bool(results)}, *results]}
