"""The bulk export job: reads, shard by shard and batch by batch, exactly the records the requester could read one by
one (health administrators: every record of their region, de-identified), writes them as sealed NDJSON per type and
audits each patient exported once. Each batch is one unit of work as the requester (hie.platform.scripted), so the
access policy and the audit are the request path's own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from hie.empi.models import PersonRecord
from hie.exchange import bulk, store
from hie.exchange.deidentify import deidentify
from hie.exchange.literal_json import dumps, loads
from hie.exchange.models import BulkExport, FhirResource
from hie.exchange.outcome import FhirError
from hie.patients.models import Patient
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.crypto import keyring
from hie.platform.db import platform_session, registry, session_scope, shard_session, utcnow
from hie.platform.scripted import identity_of, in_request
from hie.tenants.models import Tenant

log = logging.getLogger(__name__)

BATCH = 500  # resources read and written per unit of work
PATIENTS = "Patient"


class Cancelled(Exception):
    """The export was deleted while it ran."""


@dataclass
class _Run:
    """One export in progress: what it asked for, as whom, and what it has written so far."""

    app: Flask
    export_id: str
    identity: Identity
    level: str
    types: list[str] | None
    since: datetime | None
    deidentified: bool
    group_id: str | None
    group: bulk.Group | None = None
    writers: dict[str, bulk.SealedWriter] = field(default_factory=dict)
    audited: set[tuple[str, str]] = field(default_factory=set)
    written: int = 0

    def unit(self, work: Callable[[], Any]) -> Any:
        """One unit of work as the requester, in a fresh app context (so nothing is shared with a calling request)."""
        with self.app.app_context():
            return in_request(self.app, self.identity, work, path=f"/fhir/$export/{self.export_id}")

    def pseudonym(self, resource_type: str, resource_id: str) -> str:
        """Stable within this export, unlinkable across exports (keyed by the export id)."""
        return keyring().blind_index(f"fhir.bulk_export|{self.export_id}", f"{resource_type}/{resource_id}")

    def check_running(self) -> None:
        """Stop at the next batch once the requester deleted the export."""
        export = platform_session().get(BulkExport, self.export_id)
        if export is None or export.status != "running":
            raise Cancelled

    def tenants(self) -> list[str]:
        """The shards the requester could read anything in."""
        platform = platform_session()
        if self.group_id is not None:
            self.group = bulk.find_group(self.identity, self.group_id)
            return [self.group.tenant_code]
        if self.deidentified:
            regions = access.region_subtree(platform, self.identity.region_code)
            return sorted(platform.scalars(select(Tenant.code).where(Tenant.region_code.in_(regions),
                                                                     Tenant.active.is_(True))))
        granted, codes = access.permissions_of(self.identity), set()
        if access.Permission.patient_read in granted:
            codes.add(self.identity.tenant_code)
            codes.update(platform.scalars(select(PersonRecord.tenant_code).where(
                PersonRecord.person_id.in_(care.active_persons(self.identity.institution_id)),
                PersonRecord.patient_id.is_not(None))))
        if access.Permission.own_record_read in granted:
            codes.add(self.identity.tenant_code)
            own = access.resident_person(platform, self.identity)
            if own is not None:
                codes.update(platform.scalars(select(PersonRecord.tenant_code).where(PersonRecord.person_id == own)))
        return sorted(codes)

    def wants(self, resource_type: str) -> bool:
        """Whether _type (or its absence) asks for this type."""
        return self.types is None or resource_type in self.types

    def row_conditions(self, tenant: str) -> list[ColumnElement[bool]]:
        """Which stored non-Patient records of a shard go into the export."""
        where: list[ColumnElement[bool]] = [FhirResource.resource_type != PATIENTS]
        if self.types is not None:
            where.append(FhirResource.resource_type.in_([t for t in self.types if t != PATIENTS]))
        if not self.deidentified:
            where.append(store.visible_condition(self.identity, tenant))
        if self.level != "system":
            where.append(FhirResource.patient_id.is_not(None))
        if self.group is not None:
            where.append(FhirResource.patient_id.in_(select(Patient.id).where(
                Patient.institution_id == self.group.institution_id)))
        if self.since is not None:
            where.append(FhirResource.last_updated > self.since)
        return where

    def patient_conditions(self, tenant: str) -> list[ColumnElement[bool]]:
        """Which patients of a shard's register go into the export (every FHIR Patient is a register record)."""
        where: list[ColumnElement[bool]] = []
        if not self.deidentified:
            where.append(store.visible_condition(self.identity, tenant, Patient.institution_id, Patient.id))
        if self.group is not None:
            where.append(Patient.institution_id == self.group.institution_id)
        if self.since is not None:
            where.append(or_(Patient.updated_at > self.since, Patient.id.in_(select(FhirResource.id).where(
                FhirResource.resource_type == PATIENTS, FhirResource.last_updated > self.since))))
        return where

    def write(self, tenant: str, row: FhirResource, patient_id: str | None, institution_id: int,
              exported: dict[tuple[str, str], int]) -> None:
        """One resource as one NDJSON line (de-identified for health administrators)."""
        text = store.resource_json(row, tenant)
        if self.deidentified:
            text = dumps(deidentify(loads(text), self.pseudonym))
        if row.resource_type not in self.writers:
            self.writers[row.resource_type] = bulk.SealedWriter(self.export_id, row.resource_type, keyring())
        self.writers[row.resource_type].add(text.encode())
        self.written += 1
        if patient_id is not None:
            exported.setdefault((tenant, patient_id), institution_id)

    def audit_patients(self, exported: dict[tuple[str, str], int]) -> None:
        """One export event per patient, the first time any of their records is written."""
        for (tenant, patient_id), institution_id in exported.items():
            if (tenant, patient_id) in self.audited:
                continue
            self.audited.add((tenant, patient_id))
            audit.record("export", resource_type=PATIENTS, resource_id=patient_id,
                         patient=audit.patient_ref(tenant, patient_id), purpose=self.purpose(tenant, institution_id),
                         detail=f"bulk export {self.export_id} ({self.level}"
                                f"{', de-identified' if self.deidentified else ''})")

    def purpose(self, tenant: str, institution_id: int) -> str:
        """Why the requester saw the patient's records, as a search says it."""
        if self.deidentified:
            return "deidentified"
        if tenant == self.identity.tenant_code and institution_id == self.identity.institution_id and \
                access.Permission.patient_read in access.permissions_of(self.identity):
            return access.Basis.own_institution.value
        return access.Basis.self.value if self.identity.patient_id is not None else \
            access.Basis.care_relationship.value

    def progress(self, tenant: str, what: str) -> None:
        """What the status URL's X-Progress says while the export runs."""
        platform_session().get_one(BulkExport, self.export_id).progress = \
            f"{self.written} resources written; now {what} in {tenant}"[:200]

    def patient_batch(self, tenant: str, after: str) -> str | None:
        """Up to BATCH register patients after the given id; the last id when there may be more."""
        self.check_running()
        shard = shard_session(tenant)
        patients = shard.scalars(select(Patient).where(*self.patient_conditions(tenant), Patient.id > after)
                                 .order_by(Patient.id).limit(BATCH)).all()
        stored = {row.id: row for row in shard.scalars(select(FhirResource).where(
            FhirResource.resource_type == PATIENTS, FhirResource.id.in_([p.id for p in patients])))}
        exported: dict[tuple[str, str], int] = {}
        for patient in patients:
            row = stored.get(patient.id) or store.generated_patient(tenant, patient)
            self.write(tenant, row, patient.id, patient.institution_id, exported)
        self.audit_patients(exported)
        self.progress(tenant, PATIENTS)
        return patients[-1].id if len(patients) == BATCH else None

    def row_batch(self, tenant: str, after: tuple[str, str]) -> tuple[str, str] | None:
        """Up to BATCH stored records after (type, id); the last key when there may be more."""
        self.check_running()
        resume = or_(FhirResource.resource_type > after[0],
                     and_(FhirResource.resource_type == after[0], FhirResource.id > after[1]))
        rows = shard_session(tenant).scalars(select(FhirResource).where(*self.row_conditions(tenant), resume)
                                             .order_by(FhirResource.resource_type, FhirResource.id)
                                             .limit(BATCH)).all()
        exported: dict[tuple[str, str], int] = {}
        for row in rows:
            self.write(tenant, row, row.patient_id, row.institution_id, exported)
        self.audit_patients(exported)
        self.progress(tenant, rows[-1].resource_type if rows else "records")
        return (rows[-1].resource_type, rows[-1].id) if len(rows) == BATCH else None

    def run(self) -> list[dict[str, Any]]:
        """Every shard, Patients first, then the other records by type; the manifest entries."""
        for tenant in self.unit(self.tenants):
            if self.wants(PATIENTS):
                after: str | None = ""
                while after is not None:
                    after = self.unit(lambda a=after, t=tenant: self.patient_batch(t, a))
            key: tuple[str, str] | None = ("", "")
            while key is not None:
                key = self.unit(lambda k=key, t=tenant: self.row_batch(t, k))
        return sorted((writer.close() for writer in self.writers.values()), key=lambda item: item["type"])


def _claim(session: Session, export_id: str) -> BulkExport | None:
    """Move an accepted export to running; None when another worker has it or it was deleted."""
    moved = session.execute(update(BulkExport).where(BulkExport.id == export_id, BulkExport.status == "accepted")
                            .values(status="running", progress="started"))
    return session.get(BulkExport, export_id) if moved.rowcount == 1 else None  # type: ignore[attr-defined]


def _end(export_id: str, status: str, **values: Any) -> bool:
    """Record how a running export ended; False when it was deleted meanwhile (then nothing changes)."""
    with session_scope(registry().platform) as session:
        moved = session.execute(update(BulkExport).where(BulkExport.id == export_id, BulkExport.status == "running")
                                .values(status=status, finished_at=utcnow(), **values))
        return moved.rowcount == 1  # type: ignore[attr-defined]


def _start(export_id: str) -> tuple[dict[str, Any], Identity | None] | None:
    """Claim the export and find its requester as the policy sees them now (None: the account is gone)."""
    with session_scope(registry().platform) as session:
        export = _claim(session, export_id)
        if export is None:
            return None
        asked = {"level": export.level, "types": export.types, "since": export.since,
                 "deidentified": export.deidentified, "group_id": export.group_id}
        user = session.get(User, export.user_id)
        identity = identity_of(session, user.username, "bulk-export") if user is not None and user.active else None
    if identity is not None and bulk.deidentified_for(identity):
        asked["deidentified"] = True  # granted health_admin since the kick-off: never identified from now on
    return asked, identity


def run_export(app: Flask, export_id: str) -> str:
    """Run one accepted export to its end; the status it ended in. A failure is recorded, never raised."""
    with app.app_context():
        started = _start(export_id)
    if started is None:
        return "skipped"
    asked, identity = started
    run: _Run | None = None
    try:
        if identity is None:
            raise FhirError(403, "forbidden", "The account that asked for this export is no longer active.")
        run = _Run(app, export_id, identity, **asked)
        outputs = run.run()
        with app.app_context():
            if _end(export_id, "completed", output=outputs, progress=f"{run.written} resources written"):
                return "completed"
            bulk.remove_files(export_id)
            return "deleted"
    except Cancelled:
        _discard(app, run, export_id)
        return "deleted"
    except FhirError as exc:  # refused as the requester would be now: their account or the group is gone
        log.warning("bulk export %s refused: %s", export_id, exc.diagnostics)
        _discard(app, run, export_id)
        why = exc.diagnostics
    except Exception:
        log.exception("bulk export %s failed", export_id)
        _discard(app, run, export_id)
        why = "The export failed on the server; ask again later."
    with app.app_context():
        _end(export_id, "failed", error=why[:2000], progress=None)
    return "failed"


def _discard(app: Flask, run: _Run | None, export_id: str) -> None:
    """Close and delete whatever was written."""
    for writer in (run.writers.values() if run else []):
        try:
            writer.file.close()
        except OSError:
            log.warning("could not close a file of export %s", export_id)
    with app.app_context():
        bulk.remove_files(export_id)
