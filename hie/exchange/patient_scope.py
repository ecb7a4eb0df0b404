"""Where a Patient's records are: its shard, master person and the person's other shards, following merges; the
access decision and the refusal's audit event on the way (used by search, $everything and $prior-results)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from hie.empi import services as empi
from hie.empi.models import MasterPerson, PersonRecord
from hie.exchange import registry
from hie.exchange.models import RecordLocation
from hie.exchange.outcome import FhirError
from hie.exchange.store import asked_patient
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.db import platform_session


@dataclass(frozen=True)
class PatientScope:
    """A visible Patient: its shard, master person, the person's shards and local ids, basis and cache stamp."""

    # The stamp moves with every committed write for the person (registry rows' last_updated) and every merge or
    # unmerge (persons merged into it, the survivor's updated_at): a summary cached under another stamp is stale.

    tenant_code: str
    person_id: str | None
    shards: list[tuple[str, list[str]]]
    basis: access.Basis
    stamp: str = ""


_ABSORBED = aliased(MasterPerson)


def _patient_person(platform: Session, patient_id: str) -> tuple[str | None, int | None, MasterPerson | None, bool]:
    """Shard, holding institution and surviving master person of a Patient id, and whether anyone was merged into
    that person (every stored Patient is in the register and every register record in the EMPI, so one platform
    query answers all of it unless the record's person was itself merged away)."""
    absorbed = exists().where(_ABSORBED.merged_into == MasterPerson.id)
    found = platform.execute(select(PersonRecord.tenant_code, PersonRecord.institution_id, MasterPerson,
                                    absorbed.label("absorbed"))
                             .join(MasterPerson, MasterPerson.id == PersonRecord.person_id)
                             .where(PersonRecord.patient_id == patient_id).limit(1)).first()
    if found is None:
        return None, None, None, False
    tenant_code, institution_id, person, has_absorbed = found
    if person.merged_into is not None:
        return tenant_code, institution_id, platform.get(MasterPerson, empi.survivor(platform, person.id)), True
    return tenant_code, institution_id, person, bool(has_absorbed)


def _person_shards(platform: Session, person: MasterPerson,
                   absorbed: bool) -> tuple[list[tuple[str, list[str]]], str]:
    """The shards the registry names for the person or anyone merged into it, its local ids there, and the stamp."""
    cluster = registry.merged_cluster(platform, person.id) if absorbed else [person.id]
    shards: dict[str, list[str]] = {}
    stamp = {f"{person.id}@{person.updated_at.isoformat()}", *cluster}
    for shard, local_id, located, updated in platform.execute(
            select(PersonRecord.tenant_code, PersonRecord.patient_id, RecordLocation.master_person_id,
                   RecordLocation.last_updated)
            .join(RecordLocation, RecordLocation.tenant_code == PersonRecord.tenant_code)
            .where(PersonRecord.person_id == person.id, PersonRecord.patient_id.is_not(None),
                   RecordLocation.master_person_id.in_(cluster))
            .order_by(PersonRecord.tenant_code, PersonRecord.patient_id)):
        if local_id not in shards.setdefault(shard, []):
            shards[shard].append(local_id)
        stamp.add(f"{located}/{shard}@{updated.isoformat()}")
    return list(shards.items()), "|".join(sorted(stamp))


def locate_patient(identity: Identity, patient_id: str, reason: str | None = None, action: str = "read",
                   resource_type: str = "Patient") -> PatientScope:
    """The Patient's shard, master person and the person's shards, following merges (404 if not visible, audited
    as action on resource_type naming the patient)."""
    platform = platform_session()
    tenant_code, institution_id, person, absorbed = _patient_person(platform, patient_id)
    person_id = person.id if person is not None else None
    basis = access.patient_basis(
        platform, identity, access.PatientRecordRef(tenant_code, patient_id, institution_id, person_id),
        False, reason) if institution_id is not None and tenant_code is not None else None
    if basis is None or tenant_code is None:
        audit.record(action, "not_found" if institution_id is None else "denied", resource_type=resource_type,
                     resource_id=patient_id[:80], patient=asked_patient(identity, tenant_code, patient_id),
                     break_glass=bool(reason), detail=reason if reason else None)
        raise FhirError(404, "not-found", f"Patient/{patient_id} is not known or not visible to you.")
    if person is None:
        return PatientScope(tenant_code, None, [], basis)
    shards, stamp = _person_shards(platform, person, absorbed)
    return PatientScope(tenant_code, person_id, shards, basis, stamp)


def shards_for_patient(identity: Identity, patient_id: str, action: str = "read",
                       resource_type: str = "Patient") -> list[tuple[str, list[str]]]:
    """Every shard with records of this patient's master person, and the person's local ids there."""
    return locate_patient(identity, patient_id, action=action, resource_type=resource_type).shards
