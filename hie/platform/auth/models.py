"""Personnel accounts, their roles and their login sessions (platform database)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hie.platform.db import PlatformBase, UTCDateTime, utcnow
from hie.tenants.models import Institution


class Role(enum.StrEnum):
    """The roles of the platform; what each may do is in hie.platform.access."""

    platform_admin = "platform_admin"
    tenant_admin = "tenant_admin"
    institution_admin = "institution_admin"
    clinician = "clinician"
    family_doctor = "family_doctor"
    specialist = "specialist"
    nurse = "nurse"
    auditor = "auditor"
    health_admin = "health_admin"
    resident = "resident"
    data_steward = "data_steward"


class User(PlatformBase):
    """A person who logs in: personnel of an institution, or a resident linked to one patient record."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(100))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    department: Mapped[str | None] = mapped_column(String(100))
    title: Mapped[str | None] = mapped_column(String(100))
    licence_number: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(36))
    active: Mapped[bool] = mapped_column(default=True)
    # Unused since login throttling (auth/throttle.py); kept one release so that processes of the previous
    # release, which still write them during a rolling upgrade, keep working. The next release drops them.
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    institution: Mapped[Institution] = relationship(lazy="joined")
    role_rows: Mapped[list[UserRole]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", back_populates="user"
    )

    @property
    def roles(self) -> set[Role]:
        """The user's roles as a set."""
        return {row.role for row in self.role_rows}


class UserRole(PlatformBase):
    """One role held by one user."""

    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=32), primary_key=True)

    user: Mapped[User] = relationship(back_populates="role_rows")


class AuthSession(PlatformBase):
    """One link of a login: access tokens name it; each refresh makes the next link of the same family."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_hash: Mapped[str] = mapped_column(String(64), index=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_ip: Mapped[str | None] = mapped_column(String(45))


class LoginThrottle(PlatformBase):
    """Failed logins of one (username, source address) pair and its wait; the name only as a blind index."""

    __tablename__ = "login_throttle"

    username_index: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_ip: Mapped[str] = mapped_column(String(45), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginAlert(PlatformBase):
    """Sustained failed logins against one account, shown to the administrators of its institution."""

    __tablename__ = "login_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failures: Mapped[int] = mapped_column(Integer)
    source_addresses: Mapped[int] = mapped_column(Integer)

    user: Mapped[User] = relationship(lazy="joined")
