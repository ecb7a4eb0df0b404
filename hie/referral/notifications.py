"""Referral notifications: stored once per referral and kind by outbox handlers, listed, read, and webhook targets."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from flask_smorest import abort
from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from hie.platform.access import Permission, require_any
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role
from hie.platform.crypto import keyring
from hie.platform.db import new_id, platform_session, utcnow
from hie.platform.jobs.services import handles, queue
from hie.platform.keys import SealedColumn, register_sealed_column
from hie.referral.models import (
    InstitutionWebhook,
    Notification,
    NotificationKind,
    NotificationRead,
    Referral,
    ReferralStatus,
    WebhookDelivery,
)
from hie.tenants.models import Institution

log = logging.getLogger(__name__)

RESOURCE = "Notification"
WEBHOOK_RESOURCE = "InstitutionWebhook"
# the state a step reaches -> what the other side is told
STEP_KINDS = {ReferralStatus.requested: NotificationKind.new_referral,
              ReferralStatus.accepted: NotificationKind.accepted, ReferralStatus.declined: NotificationKind.declined,
              ReferralStatus.arrived: NotificationKind.arrived, ReferralStatus.completed: NotificationKind.completed,
              ReferralStatus.cancelled: NotificationKind.cancelled, ReferralStatus.no_show: NotificationKind.no_show}


def step_topic(status: ReferralStatus) -> str:
    """The outbox topic of a referral reaching this state."""
    return f"referral.{status.value}"


def webhook_aad(institution_id: int) -> str:
    """The associated data that binds a sealed webhook secret to its row."""
    return f"institution_webhooks/{institution_id}/secret"


register_sealed_column(SealedColumn(
    InstitutionWebhook.__table__,  # type: ignore[arg-type]
    "secret_enc", lambda _tenant, row: webhook_aad(row["institution_id"]), platform=True))


def store(session: Session, referral: Referral, kind: NotificationKind, institution_id: int | None,
          tenant_id: int, role: Role | None = None, now: datetime | None = None) -> Notification | None:
    """Store the one notification of this referral and kind, with its webhook delivery; None if it exists.

    The unique (referral, kind) makes a concurrent second insert fail, rolling back that caller's transaction.
    """
    taken = select(Notification.id).where(Notification.referral_id == referral.id, Notification.kind == kind)
    if session.scalar(taken) is not None:
        return None
    now = now or utcnow()
    notification = Notification(id=new_id(), tenant_id=tenant_id, institution_id=institution_id,
                                role=role.value if role else None, referral_id=referral.id, kind=kind, created_at=now)
    session.add(notification)
    session.flush()
    if institution_id is not None and session.scalar(select(InstitutionWebhook.active).where(
            InstitutionWebhook.institution_id == institution_id)):
        session.add(WebhookDelivery(notification_id=notification.id, institution_id=institution_id, attempts=0,
                                    next_attempt_at=now, created_at=now))
        session.flush()
    return notification


def _notify_step(session: Session, payload: dict) -> None:
    """Tell the other institution of the referral that this step happened (once: unique per referral and kind)."""
    referral = session.get(Referral, payload["referral_id"])
    if referral is None:
        return
    mover = payload["institution_id"]
    other = referral.receiver_institution_id if mover == referral.sender_institution_id \
        else referral.sender_institution_id
    institution = session.get_one(Institution, other)
    store(session, referral, STEP_KINDS[ReferralStatus(payload["status"])], other, institution.tenant_id)


def _push_webhooks(session: Session, payload: dict) -> None:
    """With RQ, send a new delivery at once from the worker; without it the worker's periodic tick sends it."""
    rq_queue = queue()
    waiting = select(WebhookDelivery.id).join(Notification, Notification.id == WebhookDelivery.notification_id) \
        .where(Notification.referral_id == payload["referral_id"], WebhookDelivery.delivered_at.is_(None))
    if rq_queue is not None and session.scalar(waiting.limit(1)) is not None:
        rq_queue.enqueue("hie.referral.tasks.deliver_job")


for _status in STEP_KINDS:
    handles(step_topic(_status))(_notify_step)
    handles(step_topic(_status))(_push_webhooks)


def require_staff() -> Identity:
    """Notifications are for an institution's staff (clinicians and administrators), never residents: else 403."""
    return require_any(Permission.patient_read, Permission.user_manage)


def visible_query(identity: Identity) -> Select[tuple[Notification]]:
    """The notifications addressed to the caller: their institution's, their role's in their tenant, their own."""
    roles = [role.value for role in identity.roles]
    return select(Notification).where(
        Notification.tenant_id == identity.tenant_id,
        or_(Notification.institution_id.is_(None), Notification.institution_id == identity.institution_id),
        or_(Notification.role.is_(None), Notification.role.in_(roles)),
        or_(Notification.user_id.is_(None), Notification.user_id == identity.user_id))


def _read_by(identity: Identity) -> Any:
    return exists().where(NotificationRead.notification_id == Notification.id,
                          NotificationRead.user_id == identity.user_id)


def search(identity: Identity, unread: bool, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the caller's notifications, newest first, with when the caller read each."""
    session = platform_session()
    query = visible_query(identity)
    if unread:
        query = query.where(~_read_by(identity))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(Notification.created_at.desc(), Notification.id.desc())
                                .offset(offset).limit(limit)))
    reads = dict(session.execute(select(NotificationRead.notification_id, NotificationRead.read_at).where(
        NotificationRead.user_id == identity.user_id,
        NotificationRead.notification_id.in_([n.id for n in rows]))).all()) if rows else {}
    audit.record("search", resource_type=RESOURCE, detail=f"unread={unread} results={len(rows)}")
    return [view(n, reads.get(n.id)) for n in rows], total


def view(notification: Notification, read_at: datetime | None) -> dict[str, Any]:
    """What a notification shows: ids and the kind, nothing about the patient."""
    return {"id": notification.id, "kind": notification.kind.value, "referral_id": notification.referral_id,
            "role": notification.role, "created_at": notification.created_at, "read_at": read_at}


def mark_read(identity: Identity, notification_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Mark one of the caller's notifications read (idempotent); 404, audited, for anyone else's."""
    session = platform_session()
    notification = session.scalar(visible_query(identity).where(Notification.id == notification_id)) \
        if len(notification_id) <= 36 else None
    if notification is None:
        known = len(notification_id) <= 36 and session.get(Notification, notification_id) is not None
        audit.record("update", "denied" if known else "not_found", resource_type=RESOURCE,
                     resource_id=notification_id[:80])
        abort(404, message="No such notification.")
    row = session.get(NotificationRead, (notification.id, identity.user_id))
    if row is None:
        row = NotificationRead(notification_id=notification.id, user_id=identity.user_id, read_at=now or utcnow())
        session.add(row)
        session.flush()
    audit.record("update", resource_type=RESOURCE, resource_id=notification.id, detail="read")
    return view(notification, row.read_at)


def check_url(url: str) -> None:
    """A webhook URL must be absolute http(s) with a host; else 422 naming the field."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        abort(422, message="url must be an http or https URL with a host.",
              errors={"json": {"url": ["must be an http or https URL with a host"]}})


def set_webhook(identity: Identity, body: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The caller's institution's webhook, with a new secret returned this once (institution_admin only)."""
    if Role.institution_admin not in identity.roles:
        audit.record("authorize", outcome="denied", detail="missing role institution_admin")
        abort(403, message="Only an institution_admin of the institution may set its referral webhook.")
    check_url(body["url"])
    session = platform_session()
    secret = secrets.token_urlsafe(32)
    webhook = session.get(InstitutionWebhook, identity.institution_id, with_for_update=True)
    if webhook is None:
        webhook = InstitutionWebhook(institution_id=identity.institution_id)
        session.add(webhook)
    webhook.url, webhook.active, webhook.updated_at = body["url"], body.get("active", True), now or utcnow()
    webhook.secret_enc = keyring().encrypt(secret, webhook_aad(identity.institution_id))
    session.flush()
    audit.record("update", resource_type=WEBHOOK_RESOURCE, resource_id=str(identity.institution_id),
                 detail=f"url={webhook.url[:200]} active={webhook.active}")
    return {"url": webhook.url, "active": webhook.active, "secret": secret, "updated_at": webhook.updated_at}


def due_deliveries(session: Session, now: datetime, limit: int = 100) -> list[int]:
    """Deliveries not yet delivered whose next attempt is due, oldest first."""
    return list(session.scalars(select(WebhookDelivery.id).where(
        and_(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_attempt_at <= now))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)))
