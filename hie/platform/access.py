"""The access policy every module calls: role permissions, tenant and institution scope, care relationships."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flask_smorest import abort
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform import care
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity, current_identity
from hie.platform.auth.models import Role
from hie.platform.modules import hook
from hie.tenants.models import Institution, Region

BREAK_GLASS_MIN_REASON = 10


class Permission(enum.StrEnum):
    """What a role may do; data scope is decided separately, per record."""

    patient_read = "patient:read"
    patient_write = "patient:write"
    patient_break_glass = "patient:break_glass"
    own_record_read = "own_record:read"
    audit_read = "audit:read"
    stats_read = "stats:read"
    tenant_manage = "tenant:manage"
    institution_manage = "institution:manage"
    user_manage = "user:manage"
    empi_steward = "empi:steward"


_CLINICAL = {Permission.patient_read, Permission.patient_write, Permission.patient_break_glass}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.platform_admin: frozenset(
        {Permission.tenant_manage, Permission.institution_manage, Permission.user_manage}
    ),
    Role.tenant_admin: frozenset({Permission.institution_manage, Permission.user_manage}),
    Role.institution_admin: frozenset({Permission.user_manage}),
    Role.clinician: frozenset(_CLINICAL),
    Role.family_doctor: frozenset(_CLINICAL),
    Role.specialist: frozenset(_CLINICAL),
    Role.nurse: frozenset({Permission.patient_read, Permission.patient_write}),
    Role.auditor: frozenset({Permission.audit_read}),
    Role.health_admin: frozenset({Permission.stats_read}),
    Role.resident: frozenset({Permission.own_record_read}),
    Role.data_steward: frozenset({Permission.empi_steward}),
}


_CARE_ROLES = frozenset({Role.clinician, Role.family_doctor, Role.specialist, Role.nurse, Role.resident})

ROLE_GRANTS: dict[Role, frozenset[Role]] = {
    Role.platform_admin: frozenset(Role),
    Role.tenant_admin: _CARE_ROLES | {Role.institution_admin},
    Role.institution_admin: _CARE_ROLES,
}
"""Which roles an account administrator may grant (and so hold power over); nobody else grants any."""

AUDITED_ROLES = frozenset({
    Role.clinician, Role.family_doctor, Role.specialist, Role.nurse, Role.resident, Role.data_steward,
})
"""Roles that read or change patient data or the EMPI: an auditor holding one would audit themself."""


def duties_conflict(roles: set[Role] | frozenset[Role]) -> str | None:
    """Separation of duties: why these roles may not be held together by one account, or None."""
    clash = sorted(role.value for role in roles & AUDITED_ROLES)
    if Role.auditor in roles and clash:
        return (f"roles: auditor cannot be held together with {', '.join(clash)} (separation of duties: "
                "an auditor must not audit their own access to patient data or the EMPI)")
    return None


def _admin_scope(identity: Identity, admin_role: Role, institution: Institution) -> bool:
    if admin_role is Role.platform_admin:
        return True
    if admin_role is Role.tenant_admin:
        return institution.tenant_id == identity.tenant_id
    return institution.id == identity.institution_id


def administers(identity: Identity, institution: Institution) -> bool:
    """Whether the caller administers accounts at this institution (tenant or institution scope)."""
    return any(_admin_scope(identity, role, institution) for role in identity.roles if role in ROLE_GRANTS)


def may_grant(identity: Identity, institution: Institution, roles: set[Role] | frozenset[Role]) -> bool:
    """Whether one of the caller's admin roles covers this institution and every one of these roles."""
    return any(
        _admin_scope(identity, role, institution) and roles <= ROLE_GRANTS[role]
        for role in identity.roles if role in ROLE_GRANTS
    )


def permissions_of(identity: Identity) -> frozenset[Permission]:
    """Union of the caller's roles' permissions."""
    granted: set[Permission] = set()
    for role in identity.roles:
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)


def require(permission: Permission) -> Identity:
    """The caller, if they hold the permission; otherwise 403 (the route exists for everyone)."""
    identity = current_identity()
    if permission not in permissions_of(identity):
        audit.record("authorize", outcome="denied", detail=f"missing {permission.value}")
        abort(403, message=f"This action needs the {permission.value} permission.")
    return identity


def require_any(*permissions: Permission) -> Identity:
    """The caller, if they hold at least one of the permissions (the record policy decides the rest)."""
    identity = current_identity()
    if not permissions_of(identity) & set(permissions):
        return require(permissions[0])
    return identity


class Basis(enum.StrEnum):
    """Why a patient record was shown, written to the audit as the purpose."""

    own_institution = "own_institution"
    care_relationship = "care_relationship"
    break_glass = "break_glass"
    self = "self"


@dataclass(frozen=True)
class PatientRecordRef:
    """Where a patient record lives (shard, id, holding institution) and whose it is (master person)."""

    tenant_code: str
    patient_id: str
    institution_id: int
    master_person_id: str | None


def resident_person(platform: Session, identity: Identity) -> str | None:
    """The master person a resident account stands for, as the installed master patient index knows it (else None)."""
    person_of_patient = hook("person_of_patient")
    if identity.patient_id is None or person_of_patient is None:
        return None
    return person_of_patient(platform, identity.tenant_code, identity.patient_id)


def patient_basis(
    platform: Session, identity: Identity, record: PatientRecordRef, write: bool,
    break_glass_reason: str | None = None,
) -> Basis | None:
    """The basis on which the caller may see (or write) this record, or None: then it answers 404."""
    granted = permissions_of(identity)
    if Permission.own_record_read in granted and not write:
        own = identity.patient_id == record.patient_id and identity.tenant_code == record.tenant_code
        if own or (record.master_person_id is not None
                   and resident_person(platform, identity) == record.master_person_id):
            return Basis.self
    needed = Permission.patient_write if write else Permission.patient_read
    if needed not in granted:
        return None
    if record.institution_id == identity.institution_id and record.tenant_code == identity.tenant_code:
        return Basis.own_institution
    if write:
        return None
    if care.has_active(platform, identity.institution_id, record.master_person_id):
        return Basis.care_relationship
    if break_glass_reason and Permission.patient_break_glass in granted:
        return Basis.break_glass
    return None


def valid_break_glass_reason(reason: str | None) -> str | None:
    """A break-glass reason must say something; a few characters are refused with 400."""
    if reason is None:
        return None
    reason = reason.strip()
    if len(reason) < BREAK_GLASS_MIN_REASON:
        abort(400, message=f"A break-glass reason must be at least {BREAK_GLASS_MIN_REASON} characters.")
    return reason


def region_subtree(session: Session, root_code: str | None) -> set[str]:
    """Region codes at and below a root: auditors and health administrators see their own area."""
    if root_code is None:
        return set()
    codes, frontier = {root_code}, [root_code]
    while frontier:
        children = session.scalars(select(Region.code).where(Region.parent_code.in_(frontier))).all()
        frontier = [code for code in children if code not in codes]
        codes.update(frontier)
    return codes
