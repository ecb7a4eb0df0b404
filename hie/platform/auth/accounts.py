"""Creating and changing personnel and resident accounts."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hie.platform.access import duties_conflict
from hie.platform.auth.models import Role, User, UserRole
from hie.platform.auth.passwords import hash_password, password_problem
from hie.platform.db import too_long
from hie.platform.modules import hook
from hie.tenants.models import Institution

_USERNAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]{2,63}$")


class AccountError(ValueError):
    """Bad input for an account; the message names the field."""


class AccountConflict(ValueError):
    """The change is well-formed but would leave the platform without what it needs (409)."""


def parse_roles(raw: Iterable[str]) -> list[Role]:
    """Role names to Roles (each once, in order), refusing unknown ones and none: the one place roles are checked."""
    roles = []
    for name in raw:
        try:
            roles.append(Role(name))
        except ValueError:
            raise AccountError(f"role {name!r} is not one of: {', '.join(r.value for r in Role)}") from None
    if not roles:
        raise AccountError("at least one role is needed")
    return list(dict.fromkeys(roles))


def _check_duties(roles: list[Role]) -> None:
    conflict = duties_conflict(set(roles))
    if conflict:
        raise AccountError(conflict)


def _check_resident_record(shard: Session | None, institution: Institution, patient_id: str) -> None:
    """A resident names a patient record that exists in their institution's shard and is held there."""
    if shard is None:
        raise ValueError("a resident account needs a Session on its institution's shard to check patient_id")
    holder_of = hook("patient_holder")
    if holder_of is None:
        raise AccountError("patient_id cannot be checked: no installed module keeps a patient register")
    try:
        holder = holder_of(shard, patient_id)
    except SQLAlchemyError:
        raise AccountError(f"patient_id cannot be checked: the database of tenant {institution.tenant.code!r} "
                           "does not answer") from None
    if holder != institution.id:
        raise AccountError(f"patient_id {patient_id!r} is not a patient record of institution {institution.code}")


def add_user(
    session: Session, username: str, roles: list[Role], institution_code: str, password: str,
    display_name: str | None = None, department: str | None = None, title: str | None = None,
    licence_number: str | None = None, patient_id: str | None = None, shard: Session | None = None,
) -> User:
    """A new account (roles checked by parse_roles here too); a resident names a patient record held in `shard`."""
    roles = parse_roles(roles)
    _check_duties(roles)
    if not _USERNAME_RE.fullmatch(username):
        raise AccountError(f"username {username!r} must be 3-64 lowercase letters, digits, '.', '-' or '_'")
    problem = password_problem(password)
    if problem:
        raise AccountError(f"password {problem}")
    problem = too_long(User.__table__, display_name=display_name, department=department,  # type: ignore[arg-type]
                       title=title, licence_number=licence_number, patient_id=patient_id)
    if problem:
        raise AccountError(problem)
    institution = session.scalar(select(Institution).where(Institution.code == institution_code))
    if institution is None:
        raise AccountError(f"institution {institution_code!r} does not exist")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"username {username!r} is taken")
    if Role.resident in roles and (patient_id is None or len(roles) > 1):
        raise AccountError("a resident account holds only the resident role and names its patient record")
    if Role.resident not in roles and patient_id is not None:
        raise AccountError("only resident accounts are linked to a patient record")
    if Role.resident in roles:
        if display_name is not None:
            raise AccountError("display_name: resident accounts carry none (the name stays sealed in the "
                               "patient record)")
        _check_resident_record(shard, institution, patient_id)  # type: ignore[arg-type]
    user = User(
        username=username, password_hash=hash_password(password), display_name=display_name or username,
        institution_id=institution.id, department=department, title=title, licence_number=licence_number,
        patient_id=patient_id, role_rows=[UserRole(role=role) for role in roles],
    )
    session.add(user)
    session.flush()
    return user


def _other_active_platform_admins(session: Session, user_id: int) -> int:
    """Other active platform admins, rows locked till commit: two demoting each other at once cannot both pass."""
    admins = session.scalars(
        select(User.id).join(UserRole, UserRole.user_id == User.id)
        .where(UserRole.role == Role.platform_admin, User.active.is_(True))
        .order_by(User.id).with_for_update()
    ).all()
    return len([admin for admin in admins if admin != user_id])


def update_user(session: Session, user: User, active: bool | None, roles: list[Role] | None) -> None:
    """Disable, re-enable or re-role an account (roles checked by parse_roles); residents stay residents."""
    if roles is not None:
        roles = parse_roles(roles)
        if (Role.resident in roles) != (Role.resident in user.roles) or (Role.resident in roles and len(roles) > 1):
            raise AccountError("roles: a resident account holds only the resident role, and vice versa")
        _check_duties(roles)
    removes_admin = user.active and Role.platform_admin in user.roles and (
        active is False or (roles is not None and Role.platform_admin not in roles))
    if removes_admin and not _other_active_platform_admins(session, user.id):
        raise AccountConflict(f"{user.username} is the last active platform administrator; make another account "
                              "platform_admin first, so the platform is never left without one")
    if roles is not None:
        user.role_rows = [UserRole(role=role) for role in roles]
    if active is not None:
        user.active = active
    session.flush()
