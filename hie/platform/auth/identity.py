"""Who is calling: resolved once per request from the access token, cached per login session."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flask import abort as flask_abort
from flask import g

from hie.platform.auth.models import Role


@dataclass(frozen=True)
class Identity:
    """The caller as the access policy sees them; the tenant comes from the institution, never the client."""

    user_id: int
    username: str
    roles: frozenset[Role]
    institution_id: int
    institution_code: str
    tenant_id: int
    tenant_code: str
    region_code: str | None
    session_id: str
    patient_id: str | None = None

    def to_cache(self) -> dict[str, object]:
        """Plain JSON for the identity cache."""
        data = asdict(self)
        data["roles"] = sorted(role.value for role in self.roles)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, object]) -> Identity:
        """Inverse of to_cache."""
        values = dict(data)
        values["roles"] = frozenset(Role(role) for role in values["roles"])  # type: ignore[union-attr]
        return cls(**values)  # type: ignore[arg-type]

    @property
    def role_label(self) -> str:
        """Roles as one audit string."""
        return ",".join(sorted(role.value for role in self.roles))


def current_identity() -> Identity:
    """The authenticated caller; views behind login_required always have one."""
    identity = g.get("identity")
    if identity is None:
        flask_abort(401)
    return identity
