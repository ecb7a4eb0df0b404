"""Teams and contracts: who serves in which team, signing, renewing, ending and transferring a resident's contract,
and the care relationship each active contract holds open for the team's institution."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from flask_smorest import abort
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.empi import services as empi
from hie.empi.models import PersonRecord
from hie.exchange.resources import local_zone
from hie.family_doctor.models import Contract, ContractStatus, Team, TeamArea, TeamMember, TeamRole
from hie.patients.models import Patient
from hie.platform import access, care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role
from hie.platform.db import new_id, platform_session, shard_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.tenants.models import Institution, InstitutionLevel, Region

RESOURCE = "Contract"
DATA = Path(__file__).parent / "data"
TEAM_LEVELS = (InstitutionLevel.township_health_centre, InstitutionLevel.community_health_centre)
DEFAULT_TERM_DAYS = 365
MAX_TERM_DAYS = 3 * 365
SIGNING_ROLES = frozenset({TeamRole.lead_doctor, TeamRole.doctor, TeamRole.village_doctor, TeamRole.nurse})


@cache
def catalogue() -> dict[str, Any]:
    """The service packages and priority groups (data/packages.json, with its source)."""
    return json.loads((DATA / "packages.json").read_text(encoding="utf-8"))


def conditions_of(packages: list[str]) -> list[str]:
    """The chronic conditions whose follow-ups the contract's packages schedule."""
    known = catalogue()["packages"]
    return sorted({c for p in packages for c in known[p]["conditions"]})


def invalid(field: str, message: str) -> NoReturn:
    """422 naming the field, as the schemas' own errors do."""
    abort(422, message=f"{field} {message}.", errors={"json": {field: [message]}})


def contract_ref(contract: Contract) -> str:
    """How the audit names the contract's patient: the signed local record."""
    return audit.patient_ref(contract.tenant_code, contract.patient_id)


def source_ref(contract: Contract) -> str:
    """How a care relationship names the contract that opened it."""
    return f"contract/{contract.id}"


def day_end(day: date) -> datetime:
    """The end of a local day, in UTC: a contract runs to the end of its last day."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=local_zone()).astimezone(UTC)


def local_today() -> date:
    """Today in the platform's time zone."""
    return utcnow().astimezone(local_zone()).date()


def membership(session: Session, user_id: int) -> tuple[Team, TeamMember] | None:
    """The active team a user serves in, with their place in it."""
    row = session.execute(select(Team, TeamMember).join(TeamMember, TeamMember.team_id == Team.id)
                          .where(TeamMember.user_id == user_id, Team.active.is_(True))).first()
    return (row[0], row[1]) if row else None


def _require_clinical(identity: Identity) -> None:
    """Family-doctor data is patient data: a role without patient:read is refused 403 before anything is looked up."""
    if access.Permission.patient_read not in access.permissions_of(identity):
        audit.record("authorize", "denied", detail=f"missing {access.Permission.patient_read.value}")
        abort(403, message=f"This action needs the {access.Permission.patient_read.value} permission.")


def require_member(identity: Identity, action: str = "read",
                   roles: frozenset[TeamRole] | None = None) -> tuple[Team, TeamMember]:
    """The caller's team, or 403 (audited) for anyone who serves in none or lacks the team role."""
    _require_clinical(identity)
    found = membership(platform_session(), identity.user_id)
    if found is None or (roles is not None and found[1].team_role not in roles):
        audit.record(action, "denied", resource_type="FamilyDoctorTeam",
                     detail="caller serves in no family-doctor team" if found is None
                     else f"team role {found[1].team_role.value} may not {action}")
        abort(403, message="You serve in no family-doctor team." if found is None
              else f"Your team role ({found[1].team_role.value}) may not do this.")
    return found


def team_identity(identity: Identity, team: Team) -> Identity:
    """The caller acting for the team's institution in the exchange: what a team member records is the team's record
    (a village doctor's readings land in the township centre's shard); the audit still names the caller."""
    institution = platform_session().get_one(Institution, team.institution_id)
    return dataclasses.replace(identity, institution_id=institution.id, institution_code=institution.code,
                               tenant_id=institution.tenant_id, tenant_code=institution.tenant.code,
                               roles=frozenset({Role.family_doctor}), patient_id=None)


def active_contract(session: Session, person_id: str) -> Contract | None:
    """The person's one active contract, if any."""
    return session.scalar(select(Contract).where(Contract.active_person_id == person_id))


def visible_contract(identity: Identity, contract_id: str, action: str = "read") -> Contract:
    """A contract of the caller's team, or of their institution for its staff; otherwise 404, audited."""
    _require_clinical(identity)
    session = platform_session()
    contract = session.get(Contract, contract_id) if len(contract_id) <= 36 else None
    found = membership(session, identity.user_id)
    ours = contract is not None and (
        (found is not None and found[0].id == contract.team_id) or identity.institution_id == contract.institution_id)
    if not ours:
        audit.record(action, "denied" if contract is not None else "not_found", resource_type=RESOURCE,
                     resource_id=contract_id[:80], patient=contract_ref(contract) if contract else None)
        abort(404, message="No such contract.")
    return contract  # type: ignore[return-value]


def _record_of(identity: Identity, team: Team, patient_id: str, field: str) -> tuple[Patient, str]:
    """A patient record in the team's tenant, held by the team's institution or the caller's, and its master person."""
    institution = platform_session().get_one(Institution, team.institution_id)
    tenant_code = institution.tenant.code
    patient = shard_session(tenant_code).get(Patient, patient_id) if len(patient_id) <= 36 else None
    person = None
    if patient is not None and patient.institution_id in (team.institution_id, identity.institution_id):
        person = empi.person_of_patient(platform_session(), tenant_code, patient.id)
    if person is None:
        audit.record("create", "not_found" if patient is None else "denied", resource_type="Patient",
                     resource_id=patient_id[:80], patient=audit.patient_ref(tenant_code, patient_id)[:80],
                     detail=f"contract {field}")
        invalid(field, "is not an EMPI-linked patient record of your team's institution")
    return patient, person  # type: ignore[return-value]


def _check_terms(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The packages and groups, each once and each in the catalogue, and a term within bounds; else 422 naming it."""
    known = catalogue()
    packages = list(dict.fromkeys(body["packages"]))
    if not packages:
        invalid("packages", "must name at least one service package")
    term = body.get("term_days")
    if term is not None and not 1 <= term <= MAX_TERM_DAYS:
        invalid("term_days", f"must be from 1 to {MAX_TERM_DAYS} days")
    groups = list(dict.fromkeys(body.get("priority_groups") or []))
    for index, code in enumerate(packages):
        if code not in known["packages"]:
            invalid(f"packages[{index}]", f"{code!r} is not a service package ({', '.join(known['packages'])})")
    for index, code in enumerate(groups):
        if code not in known["priority_groups"]:
            invalid(f"priority_groups[{index}]",
                    f"{code!r} is not a priority group ({', '.join(known['priority_groups'])})")
    return packages, groups


def _check_region(session: Session, team: Team, code: str | None, field: str = "region_code") -> None:
    """Where the resident lives: a region of the region table, at or below one of the areas the team serves."""
    if code is None:
        return
    if session.get(Region, code) is None:
        invalid(field, f"{code!r} is not in the region table")
    areas = list(session.scalars(select(TeamArea.region_code).where(TeamArea.team_id == team.id)))
    if not areas:
        return
    lineage, at = set(), session.get(Region, code)
    while at is not None and at.code not in lineage:
        lineage.add(at.code)
        at = session.get(Region, at.parent_code) if at.parent_code else None
    if not lineage & set(areas):
        invalid(field, f"{code} is not in an area team {team.code} serves ({', '.join(sorted(areas))})")


def _check_start(starts_on: date, term: int, today: date) -> None:
    """A contract may be signed ahead by up to 90 days, or backdated as long as its term has not run out."""
    if starts_on > today + timedelta(days=90):
        invalid("starts_on", "may be at most 90 days ahead")
    if starts_on + timedelta(days=term - 1) < today:
        invalid("starts_on", "is so long ago that the term would already be over")


def _open(identity: Identity, team: Team, patient: Patient, person: str, body: dict[str, Any],
          tenant_code: str, starts_on: date, previous: Contract | None = None) -> Contract:
    """A new active contract, its care relationship and its follow-up schedule."""
    from hie.family_doctor import followups

    session = platform_session()
    packages, groups = _check_terms(body)
    term = body.get("term_days") or DEFAULT_TERM_DAYS
    contract = Contract(
        id=new_id(), team_id=team.id, institution_id=team.institution_id, tenant_code=tenant_code,
        patient_id=patient.id, master_person_id=person, active_person_id=person, packages=packages,
        priority_groups=groups, region_code=body.get("region_code"), status=ContractStatus.active,
        starts_on=starts_on, ends_on=starts_on + timedelta(days=term - 1), signed_by=identity.user_id,
        signed_at=utcnow(), previous_id=previous.id if previous else None)
    try:
        with session.begin_nested():  # flushes what is pending first, so the contract is added inside it
            session.add(contract)
            session.flush()
    except IntegrityError:
        other = active_contract(session, person)
        audit.record("create", "failure", resource_type=RESOURCE, patient=audit.patient_ref(tenant_code, patient.id),
                     detail="person already holds an active contract")
        abort(409, message="This resident already holds an active contract"
              + (f" (until {other.ends_on.isoformat()}); renew, end or transfer it instead." if other else "."))
    # the team's centre, and the village clinic holding the signed record when it is not the centre: the village
    # doctor who signed the resident reads their shared record too, for as long as the contract runs
    for institution_id in dict.fromkeys((team.institution_id, patient.institution_id)):
        care.grant(session, institution_id, person, care.CareKind.contract, source_ref=source_ref(contract),
                   ends_at=day_end(contract.ends_on))
    followups.schedule_contract(session, contract, max(starts_on, local_today()))
    emit(session, PLATFORM, "family_doctor.contract_signed",
         {"contract_id": contract.id, "team_id": team.id, "person": person})
    audit.record("create", resource_type=RESOURCE, resource_id=contract.id, patient=contract_ref(contract),
                 purpose="treatment", detail=f"contract signed: {','.join(packages)}")
    return contract


def sign(identity: Identity, body: dict[str, Any]) -> Contract:
    """A resident signs with the caller's team: one active contract per person."""
    team, _member = require_member(identity, "create", SIGNING_ROLES)
    patient, person = _record_of(identity, team, body["patient_id"], "patient_id")
    tenant_code = platform_session().get_one(Institution, team.institution_id).tenant.code
    starts_on = body.get("starts_on") or local_today()
    _check_terms(body)
    _check_start(starts_on, body.get("term_days") or DEFAULT_TERM_DAYS, local_today())
    _check_region(platform_session(), team, body.get("region_code"))
    return _open(identity, team, patient, person, body, tenant_code, starts_on)


def _close(identity: Identity, contract: Contract, status: ContractStatus, reason: str | None,
           when: datetime | None = None) -> None:
    """End a contract now: its relationship ends, its open follow-ups are dropped, the change audited."""
    from hie.family_doctor import followups

    session = platform_session()
    when = when or utcnow()
    contract.status, contract.active_person_id = status, None
    contract.ended_at, contract.ended_by, contract.end_reason = when, identity.user_id, reason
    for relationship in session.scalars(select(care.CareRelationship).where(
            care.CareRelationship.source_ref == source_ref(contract))).all():
        if relationship.ends_at is None or relationship.ends_at > when:
            care.end(session, relationship, when)
    followups.cancel_contract(session, contract)
    emit(session, PLATFORM, "family_doctor.contract_ended",
         {"contract_id": contract.id, "status": status.value, "person": contract.master_person_id})
    audit.record("update", resource_type=RESOURCE, resource_id=contract.id, patient=contract_ref(contract),
                 purpose="treatment", detail=f"contract {status.value}" + (f": {reason}" if reason else ""))
    session.flush()


def _movable(identity: Identity, contract_id: str, action: str) -> Contract:
    """An active contract of the caller's own team, locked; else 404 or 409 naming its state."""
    contract = visible_contract(identity, contract_id, "update")
    team, _member = require_member(identity, "update", SIGNING_ROLES)
    if contract.team_id != team.id:
        audit.record("update", "denied", resource_type=RESOURCE, resource_id=contract.id,
                     patient=contract_ref(contract), detail=f"{action}: not the caller's team")
        abort(403, message=f"Only the contract's own team may {action} it.")
    session = platform_session()
    session.refresh(contract, with_for_update=True)
    if contract.status is not ContractStatus.active:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=contract.id,
                     patient=contract_ref(contract), detail=f"{action} refused: contract is {contract.status.value}")
        abort(409, message=f"The contract is {contract.status.value}; only an active contract can be {action}ed.")
    return contract


def terminate(identity: Identity, contract_id: str, body: dict[str, Any]) -> Contract:
    """End a contract before its term, with a reason."""
    contract = _movable(identity, contract_id, "terminate")
    _close(identity, contract, ContractStatus.terminated, body["reason"].strip())
    return contract


def renew(identity: Identity, contract_id: str, body: dict[str, Any]) -> Contract:
    """A new term with the same team, starting the day after the old one ends (or today, if it has ended)."""
    old = _movable(identity, contract_id, "renew")
    team = platform_session().get_one(Team, old.team_id)
    terms = {"packages": body.get("packages") or old.packages,
             "priority_groups": old.priority_groups if body.get("priority_groups") is None
             else body["priority_groups"], "term_days": body.get("term_days"), "region_code": old.region_code}
    _check_terms(terms)
    _close(identity, old, ContractStatus.renewed, "renewed")
    patient = shard_session(old.tenant_code).get_one(Patient, old.patient_id)
    starts_on = max(old.ends_on + timedelta(days=1), local_today()) if old.ends_on >= local_today() \
        else local_today()
    return _open(identity, team, patient, old.master_person_id, terms, old.tenant_code, starts_on, previous=old)


def transfer(identity: Identity, contract_id: str, body: dict[str, Any]) -> Contract:
    """Move the resident to another team (they moved, or chose another): the old contract ends, a new one starts
    with the same packages on the person's record in the new team's tenant."""
    old = _movable(identity, contract_id, "transfer")
    session = platform_session()
    target = session.scalar(select(Team).where(Team.code == body["team"], Team.active.is_(True)))
    if target is None or target.id == old.team_id:
        invalid("team", "is not another active family-doctor team")
    institution = session.get_one(Institution, target.institution_id)
    local_id = session.scalar(select(PersonRecord.patient_id).where(
        PersonRecord.person_id == old.master_person_id, PersonRecord.tenant_code == institution.tenant.code,
        PersonRecord.institution_id == institution.id, PersonRecord.patient_id.is_not(None)).limit(1))
    if local_id is None:
        invalid("team", "has no record of this person in its register; the new team registers them first")
    _check_region(session, target, body.get("region_code"))
    _close(identity, old, ContractStatus.transferred, f"transferred to {target.code}"
           + (f": {body['reason'].strip()}" if body.get("reason") else ""))
    patient = shard_session(institution.tenant.code).get_one(Patient, local_id)
    terms = {"packages": old.packages, "priority_groups": old.priority_groups, "region_code": body.get("region_code")}
    return _open(identity, target, patient, old.master_person_id, terms, institution.tenant.code, local_today(),
                 previous=old)


def read(identity: Identity, contract_id: str) -> Contract:
    """A contract of the caller's team or institution, its reading audited with its patient."""
    contract = visible_contract(identity, contract_id)
    audit.record("read", resource_type=RESOURCE, resource_id=contract.id, patient=contract_ref(contract),
                 purpose="treatment")
    return contract


def search(identity: Identity, filters: dict[str, Any], offset: int, limit: int,
           today: date | None = None) -> tuple[list[Contract], int]:
    """One page of the caller's team's contracts, newest first (soonest to end first when asking what expires);
    every contract shown is audited with its patient."""
    team, _member = require_member(identity, "search")
    today = today or local_today()
    query = select(Contract).where(Contract.team_id == team.id)
    if filters.get("status") is not None:
        query = query.where(Contract.status == filters["status"])
    if filters.get("package"):
        query = query.where(type_coerce(Contract.packages, String).contains(f'"{filters["package"]}"',
                                                                            autoescape=True))
    if filters.get("priority_group"):
        query = query.where(type_coerce(Contract.priority_groups, String).contains(
            f'"{filters["priority_group"]}"', autoescape=True))
    expiring = filters.get("expiring_within_days")
    if expiring is not None:
        query = query.where(Contract.status == ContractStatus.active,
                            Contract.ends_on <= today + timedelta(days=expiring))
    session = platform_session()
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    order = (Contract.ends_on, Contract.id) if expiring is not None else (Contract.signed_at.desc(),
                                                                          Contract.id.desc())
    rows = list(session.scalars(query.order_by(*order).offset(offset).limit(limit)))
    asked = ",".join(f"{key}={getattr(value, 'value', value)}" for key, value in sorted(filters.items()))
    audit.record("search", resource_type=RESOURCE, purpose="treatment",
                 detail=f"team {team.code} {asked} results={len(rows)}"[:500])
    for contract in rows:
        audit.record("read", resource_type=RESOURCE, resource_id=contract.id, patient=contract_ref(contract),
                     purpose="treatment")
    return rows, total


def expire_due(session: Session, today: date | None = None) -> int:
    """Contracts past their last day become expired (their relationships ended at day_end already)."""
    from hie.family_doctor import followups

    today = today or local_today()
    rows = session.scalars(select(Contract).where(Contract.status == ContractStatus.active,
                                                  Contract.ends_on < today).with_for_update()).all()
    for contract in rows:
        contract.status, contract.active_person_id = ContractStatus.expired, None
        contract.ended_at, contract.end_reason = day_end(contract.ends_on), "term ended"
        followups.cancel_contract(session, contract)
        emit(session, PLATFORM, "family_doctor.contract_ended",
             {"contract_id": contract.id, "status": "expired", "person": contract.master_person_id})
    session.flush()
    return len(rows)
