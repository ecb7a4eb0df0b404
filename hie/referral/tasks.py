"""Referral jobs: overdue reminders and escalations, and webhook deliveries with retries and exponential backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy.exc import IntegrityError

from hie.platform.auth.models import Role
from hie.platform.crypto import keyring
from hie.platform.db import registry, session_scope, utcnow
from hie.platform.jobs.services import queue
from hie.platform.jobs.tasks import worker_app
from hie.referral import notifications, services
from hie.referral.models import InstitutionWebhook, Notification, NotificationKind, Referral, WebhookDelivery
from hie.tenants.models import Institution

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
FIRST_RETRY = timedelta(seconds=30)
LONGEST_WAIT = timedelta(hours=6)
MAX_ATTEMPTS = 12
LEASE = timedelta(minutes=2)  # a claimed delivery is not tried by another worker for this long


def past_twice_the_deadline(referral: Referral, now: datetime) -> bool:
    """Unanswered for more than twice the time the receiver had to answer."""
    return now > referral.created_at + 2 * (referral.due_at - referral.created_at)


def remind(now: datetime | None = None) -> tuple[int, int]:
    """Remind each overdue referral's receiver, past twice the deadline its tenant admins; a rerun adds nothing."""
    now = now or utcnow()
    with session_scope(registry().platform) as session:
        late = [referral.id for referral in services.overdue(session, now)]
    reminders = escalations = 0
    for referral_id in late:
        try:
            sent = _remind_one(referral_id, now)
        except IntegrityError:
            log.info("referral %s was reminded by another worker at the same time", referral_id)
            continue
        reminders, escalations = reminders + sent[0], escalations + sent[1]
    if reminders and (rq_queue := queue()) is not None:
        rq_queue.enqueue("hie.referral.tasks.deliver_job")
    log.info("referral reminders: %s reminder(s), %s escalation(s)", reminders, escalations)
    return reminders, escalations


def _remind_one(referral_id: str, now: datetime) -> tuple[int, int]:
    """One referral's reminder and escalation, in one transaction: both stored, or neither."""
    reminded = escalated = 0
    with session_scope(registry().platform) as session:
        referral = session.get(Referral, referral_id, with_for_update=True)
        if referral is None or not services.is_overdue(referral, now):
            return 0, 0
        receiver = session.get_one(Institution, referral.receiver_institution_id)
        if notifications.store(session, referral, NotificationKind.overdue_reminder, receiver.id, receiver.tenant_id,
                               now=now) is not None:
            reminded = 1
        if past_twice_the_deadline(referral, now) and notifications.store(
                session, referral, NotificationKind.overdue_escalation, None, receiver.tenant_id, Role.tenant_admin,
                now=now) is not None:
            escalated = 1
    return reminded, escalated


def backoff(attempts: int) -> timedelta:
    """How long to wait after the n-th failed attempt: 30 s, 1 min, 2 min, ... at most 6 hours."""
    return min(FIRST_RETRY * 2 ** (attempts - 1), LONGEST_WAIT)


def signature(secret: str, body: bytes) -> str:
    """The X-HIE-Signature header: HMAC-SHA256 of the raw body under the institution's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _claim(delivery_id: int, now: datetime) -> tuple[str, str, bytes, str] | None:
    """Lease a due delivery (url, secret, body, event id), so a second worker does not send it meanwhile."""
    with session_scope(registry().platform) as session:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.delivered_at is not None or delivery.next_attempt_at is None \
                or delivery.next_attempt_at > now:
            return None
        webhook = session.get(InstitutionWebhook, delivery.institution_id)
        if webhook is None or not webhook.active:
            delivery.next_attempt_at, delivery.last_error = None, "the institution's webhook is removed or inactive"
            return None
        notification = session.get_one(Notification, delivery.notification_id)
        referral = session.get_one(Referral, notification.referral_id)
        institution = session.get_one(Institution, delivery.institution_id)
        body = json.dumps({
            "event_id": notification.id, "kind": notification.kind.value, "referral_id": referral.id,
            "referral_status": referral.status.value, "institution": institution.code,
            "created_at": notification.created_at.isoformat()}, ensure_ascii=False, sort_keys=True).encode()
        delivery.next_attempt_at = now + LEASE
        secret = keyring().decrypt(webhook.secret_enc, notifications.webhook_aad(webhook.institution_id))
        return webhook.url, secret, body, notification.id


def _post(url: str, secret: str, body: bytes, event_id: str) -> str | None:
    """POST one signed event; None when the receiver answered 2xx, else why not."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "hie-webhook/1", "X-HIE-Event-Id": event_id,
        "X-HIE-Signature": signature(secret, body)})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (http(s) checked)
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _record(delivery_id: int, now: datetime, error: str | None) -> bool:
    """Write down the attempt: delivered, or the error and when to try again (never after MAX_ATTEMPTS)."""
    with session_scope(registry().platform) as session:
        delivery = session.get_one(WebhookDelivery, delivery_id, with_for_update=True)
        delivery.attempts += 1
        if error is None:
            delivery.delivered_at, delivery.next_attempt_at, delivery.last_error = utcnow(), None, None
            return True
        delivery.last_error = error[:2000]
        delivery.next_attempt_at = now + backoff(delivery.attempts) if delivery.attempts < MAX_ATTEMPTS else None
    log.warning("webhook delivery %s failed (attempt %s): %s", delivery_id, delivery.attempts, error)
    return False


def deliver_due(now: datetime | None = None) -> tuple[int, int]:
    """Send every delivery whose attempt is due; returns (delivered, failed). A receiver that is down waits."""
    now = now or utcnow()
    with session_scope(registry().platform) as session:
        due = notifications.due_deliveries(session, now)
    delivered = failed = 0
    for delivery_id in due:
        claimed = _claim(delivery_id, now)
        if claimed is None:
            continue
        if _record(delivery_id, now, _post(*claimed)):
            delivered += 1
        else:
            failed += 1
    return delivered, failed


def periodic(app: Flask) -> None:
    """The worker's tick: reminders, then due webhook deliveries."""
    with app.app_context():
        remind()
        deliver_due()


def remind_job() -> tuple[int, int]:
    """RQ entry point of remind."""
    with worker_app().app_context():
        return remind()


def deliver_job() -> tuple[int, int]:
    """RQ entry point of deliver_due."""
    with worker_app().app_context():
        return deliver_due()
