"""Work done on behalf of a user outside an HTTP request (the demo, imports): one unit of work, finished exactly as
the app's after_request finishes a request, so access checks, the audit and the outbox are the real ones."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, g
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.audit.services import flush_pending
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.db import finish_unit_of_work
from hie.platform.jobs.services import discard_uncommitted, dispatch_committed

T = TypeVar("T")


def identity_of(session: Session, username: str, purpose: str = "scripted") -> Identity:
    """The user as the access policy sees them after login."""
    user = session.scalars(select(User).where(User.username == username)).one()
    tenant = user.institution.tenant
    return Identity(user_id=user.id, username=user.username, roles=frozenset(user.roles),
                    institution_id=user.institution_id, institution_code=user.institution.code,
                    tenant_id=tenant.id, tenant_code=tenant.code, region_code=tenant.region_code,
                    session_id=f"{purpose}-{user.id}", patient_id=user.patient_id)


def in_request(app: Flask, identity: Identity, work: Callable[[], T], path: str = "/api/v1") -> T:
    """Run work as one request of this user: committed with its audit events and outbox, or rolled back whole."""
    engines, ring = app.extensions["hie.engines"], app.extensions["hie.keyring"]
    with app.test_request_context(path, method="POST"):
        g.identity, g.request_id = identity, uuid.uuid4().hex
        try:
            result: Any = work()
            finish_unit_of_work(commit=True)
        except BaseException:
            finish_unit_of_work(commit=False)
            flush_pending(engines.platform, ring, failed=True)
            discard_uncommitted()
            raise
        flush_pending(engines.platform, ring, failed=False)
        dispatch_committed()
    return result
