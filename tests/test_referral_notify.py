"""Referral notifications, overdue reminders and escalations, and signed webhooks to a real local receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from hie.platform.audit.models import AuditEvent
from hie.platform.cli import main
from hie.platform.db import session_scope, utcnow
from hie.platform.keys import load_registry, reencrypt
from hie.referral import notifications, tasks
from hie.referral.models import InstitutionWebhook, Notification, NotificationRead, Referral, WebhookDelivery
from tests.conftest import hie_environ, new_patient
from tests.fhir_helpers import run_jobs

APPOINTMENT = "2030-01-15T09:00:00+08:00"
PATIENT_NAME = "王秀英"


@pytest.fixture
def sent(client, as_user):
    """Make a referral up from the township centre (yaodu.fd) to the county hospital (yaodu.doctor)."""
    fd, doctor = as_user("yaodu.fd"), as_user("yaodu.doctor")
    township = new_patient(client, fd, mrn="T1-001")
    hospital = new_patient(client, doctor, mrn="CH-001")

    def send() -> dict:
        response = client.post("/api/v1/referrals", headers=fd, json={
            "patient_id": township["id"], "direction": "up", "urgency": "urgent", "receiving_institution": "YAODU-CH",
            "reason": "胸痛待查", "diagnoses": [{"code": "I20.0", "text": "不稳定型心绞痛"}], "records": []})
        assert response.status_code == 201, response.get_json()
        run_jobs(client.application)
        return response.get_json()

    return {"fd": fd, "doctor": doctor, "hospital": hospital, "send": send}


def _move(client, headers, referral_id: str, action: str, body: dict | None = None) -> None:
    response = client.post(f"/api/v1/referrals/{referral_id}/{action}", json=body or {}, headers=headers)
    assert response.status_code == 200, response.get_json()
    run_jobs(client.application)


def _listed(client, headers, query: str = "") -> list[tuple[str, str]]:
    response = client.get(f"/api/v1/notifications{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [(n["kind"], n["referral_id"]) for n in response.get_json()]


def _due(platform_db, referral_id: str) -> tuple:
    platform_db.rollback()
    referral = platform_db.get(Referral, referral_id)
    return referral.created_at, referral.due_at


def _stored(platform_db, kind: str | None = None) -> list[tuple[str, str, int | None, str | None]]:
    platform_db.rollback()
    query = select(Notification.kind, Notification.referral_id, Notification.institution_id, Notification.role)
    if kind is not None:
        query = query.where(Notification.kind == kind)
    return [(k.value, r, i, role) for k, r, i, role in platform_db.execute(query.order_by(Notification.created_at))]


def test_a_new_referral_notifies_the_receivers_users_who_mark_it_read(client, sent, as_user, platform_db):
    referral = sent["send"]()
    doctor, nurse = sent["doctor"], as_user("yaodu.nurse")
    response = client.get("/api/v1/notifications", headers=doctor)
    assert [(n["kind"], n["referral_id"], n["read_at"]) for n in response.get_json()] == \
        [("new_referral", referral["id"], None)]
    assert '"total": 1' in response.headers["X-Pagination"]
    assert PATIENT_NAME not in response.get_data(as_text=True)  # ids only, never the patient
    assert _listed(client, sent["fd"]) == []  # the sender is not told of its own step
    notification_id = response.get_json()[0]["id"]

    read = client.post(f"/api/v1/notifications/{notification_id}/read", headers=doctor)
    assert read.status_code == 200 and read.get_json()["read_at"] is not None
    assert client.post(f"/api/v1/notifications/{notification_id}/read", headers=doctor).status_code == 200
    assert _listed(client, doctor, "?unread=true") == []
    assert _listed(client, nurse, "?unread=true") == [("new_referral", referral["id"])]  # read state is per user
    platform_db.rollback()
    assert len(platform_db.scalars(select(NotificationRead)).all()) == 1

    other = client.post(f"/api/v1/notifications/{notification_id}/read", headers=as_user("quwo.doctor"))
    assert other.status_code == 404
    assert client.post(f"/api/v1/notifications/{notification_id}/read",
                       headers=sent["fd"]).status_code == 404  # the sender's institution is not addressed
    platform_db.rollback()
    refused = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == other.headers["X-Request-Id"]))
    assert [(e.username, e.outcome, e.resource_type) for e in refused] == [("quwo.doctor", "denied", "Notification")]
    assert client.get("/api/v1/notifications", headers=as_user("yaodu.auditor")).status_code == 403  # not staff


def test_each_step_notifies_the_other_side_once(client, sent, platform_db):
    fd, doctor = sent["fd"], sent["doctor"]
    first = sent["send"]()["id"]
    _move(client, doctor, first, "accept", {"appointment_at": APPOINTMENT})
    _move(client, doctor, first, "arrive", {"patient_id": sent["hospital"]["id"]})
    _move(client, doctor, first, "complete", {"discharge_summary": "好转出院"})
    declined, cancelled, missed = sent["send"]()["id"], sent["send"]()["id"], sent["send"]()["id"]
    _move(client, doctor, declined, "decline", {"reason": "床位已满"})
    _move(client, fd, cancelled, "cancel", {"reason": "患者改去他院"})
    _move(client, doctor, missed, "accept", {"appointment_at": APPOINTMENT})
    _move(client, doctor, missed, "no-show")

    assert sorted(_listed(client, fd)) == sorted([
        ("accepted", first), ("arrived", first), ("completed", first), ("declined", declined),
        ("accepted", missed), ("no_show", missed)])
    assert sorted(_listed(client, doctor)) == sorted(
        [("new_referral", r) for r in (first, declined, cancelled, missed)] + [("cancelled", cancelled)])

    referral = platform_db.get(Referral, first)
    with session_scope(client.application.extensions["hie.engines"].platform) as session:
        before = len(_stored(platform_db))
        notifications._notify_step(session, {"referral_id": first, "status": "accepted",
                                             "institution_id": referral.receiver_institution_id})
    assert len(_stored(platform_db)) == before  # a redelivered event stores nothing more


def test_a_reminder_is_stored_once_even_when_the_job_runs_twice(app, client, sent, platform_db):
    referral = sent["send"]()
    answered = sent["send"]()
    _move(client, sent["doctor"], answered["id"], "accept", {"appointment_at": APPOINTMENT})
    created, due = _due(platform_db, referral["id"])
    with app.app_context():
        assert tasks.remind(due - timedelta(minutes=1)) == (0, 0)  # not yet overdue
        assert tasks.remind(due + timedelta(minutes=1)) == (1, 0)
        assert tasks.remind(due + timedelta(minutes=2)) == (0, 0)
    assert [(k, r) for k, r, _, _ in _stored(platform_db, "overdue_reminder")] == [("overdue_reminder", referral["id"])]
    assert ("overdue_reminder", referral["id"]) in _listed(client, sent["doctor"])
    assert ("overdue_reminder", referral["id"]) not in _listed(client, sent["fd"])


def test_past_twice_the_deadline_the_receiving_tenants_admins_are_told_once(app, client, sent, as_user, platform_db):
    referral = sent["send"]()
    created, due = _due(platform_db, referral["id"])
    twice = created + 2 * (due - created)
    with app.app_context():
        assert tasks.remind(twice - timedelta(minutes=1)) == (1, 0)
        assert tasks.remind(twice + timedelta(minutes=1)) == (0, 1)
        assert tasks.remind(twice + timedelta(hours=1)) == (0, 0)
    assert [(k, i, role) for k, _, i, role in _stored(platform_db, "overdue_escalation")] == \
        [("overdue_escalation", None, "tenant_admin")]
    assert ("overdue_escalation", referral["id"]) in _listed(client, as_user("yaodu.admin"))
    assert ("overdue_escalation", referral["id"]) not in _listed(client, sent["doctor"])  # not a tenant admin
    assert _listed(client, as_user("quwo.admin")) == []  # another tenant's admin


def test_a_job_that_dies_after_storing_leaves_nothing_and_the_next_run_sends_once(app, sent, platform_db,
                                                                                monkeypatch):
    referral = sent["send"]()
    _, due = _due(platform_db, referral["id"])
    real_store = notifications.store

    def store_then_die(*args: object, **kwargs: object) -> object:
        real_store(*args, **kwargs)
        raise RuntimeError("worker killed before its transaction committed")

    monkeypatch.setattr(notifications, "store", store_then_die)
    with app.app_context(), pytest.raises(RuntimeError):
        tasks.remind(due + timedelta(minutes=1))
    assert _stored(platform_db, "overdue_reminder") == []  # rolled back with the transaction
    monkeypatch.setattr(notifications, "store", real_store)
    with app.app_context():
        assert tasks.remind(due + timedelta(minutes=2)) == (1, 0)
        assert tasks.remind(due + timedelta(minutes=3)) == (0, 0)
    assert len(_stored(platform_db, "overdue_reminder")) == 1


@pytest.fixture
def receiver() -> Iterator[dict]:
    """A real HTTP server on 127.0.0.1 that records each POST and answers the next queued status (then 200)."""
    received: list[dict] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"headers": self.headers, "body": body})  # looked up case-insensitively
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/hie-events", "received": received,
           "statuses": statuses}
    server.shutdown()
    server.server_close()


def _set_webhook(client, as_user, url: str) -> str:
    response = client.put("/api/v1/referral-webhook", json={"url": url}, headers=as_user("yaodu.itadmin"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["secret"]


def _delivery(platform_db) -> WebhookDelivery:
    platform_db.rollback()
    return platform_db.scalars(select(WebhookDelivery)).one()


def test_the_webhook_body_is_signed_and_verifies_at_a_real_receiver(app, client, sent, as_user, platform_db,
                                                                    receiver):
    assert client.put("/api/v1/referral-webhook", json={"url": receiver["url"]},
                      headers=sent["doctor"]).status_code == 403  # only the institution_admin
    refused = client.put("/api/v1/referral-webhook", json={"url": "ftp://127.0.0.1/x"},
                         headers=as_user("yaodu.itadmin"))
    assert refused.status_code == 422 and [e["field"] for e in refused.get_json()["errors"]] == ["url"]
    secret = _set_webhook(client, as_user, receiver["url"])
    platform_db.rollback()
    webhook = platform_db.scalars(select(InstitutionWebhook)).one()
    assert secret not in webhook.secret_enc
    assert app.extensions["hie.keyring"].decrypt(webhook.secret_enc, f"institution_webhooks/{webhook.institution_id}"
                                                 "/secret") == secret

    referral = sent["send"]()
    with app.app_context():
        tasks.deliver_due()
        assert tasks.deliver_due() == (0, 0)  # delivered once, never again
    assert len(receiver["received"]) == 1
    request = receiver["received"][0]
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-HIE-Signature"], expected)
    event = json.loads(request["body"])
    assert (event["kind"], event["referral_id"], event["institution"]) == ("new_referral", referral["id"], "YAODU-CH")
    assert request["headers"]["X-HIE-Event-Id"] == event["event_id"] == _listed_id(client, sent["doctor"])
    assert PATIENT_NAME.encode() not in request["body"]
    delivery = _delivery(platform_db)
    assert (delivery.attempts, delivery.last_error, delivery.next_attempt_at) == (1, None, None)
    assert delivery.delivered_at is not None


def test_key_rotation_reseals_the_webhook_secret(app, client, as_user, platform_db):
    secret = _set_webhook(client, as_user, "https://his.example/hie-events")
    ring = app.extensions["hie.keyring"]
    new_kid = ring.add_data_key()
    with app.app_context():
        load_registry()
        assert reencrypt(app.extensions["hie.engines"].platform, ring, None) >= 1
    platform_db.rollback()
    webhook = platform_db.scalars(select(InstitutionWebhook)).one()
    assert ring.key_id_of(webhook.secret_enc) == new_kid
    assert ring.decrypt(webhook.secret_enc, notifications.webhook_aad(webhook.institution_id)) == secret


def _listed_id(client, headers) -> str:
    return client.get("/api/v1/notifications", headers=headers).get_json()[0]["id"]


def test_a_failing_receiver_is_retried_with_exponential_backoff(app, client, sent, as_user, platform_db, receiver):
    referral = sent["send"]()
    secret = _set_webhook(client, as_user, receiver["url"])
    receiver["statuses"].extend([500, 500])
    _, due = _due(platform_db, referral["id"])
    now = due + timedelta(minutes=1)
    with app.app_context():
        assert tasks.remind(now) == (1, 0)
        assert tasks.deliver_due(now) == (0, 1)
        first = _delivery(platform_db)
        assert (first.attempts, first.last_error, first.next_attempt_at) == (1, "HTTP 500", now + timedelta(seconds=30))
        assert tasks.deliver_due(now + timedelta(seconds=29)) == (0, 0)  # not before its backoff
        assert tasks.deliver_due(now + timedelta(seconds=31)) == (0, 1)
        second = _delivery(platform_db)
        assert (second.attempts, second.next_attempt_at) == (2, now + timedelta(seconds=31 + 60))  # doubled
        assert tasks.deliver_due(now + timedelta(seconds=92)) == (1, 0)
    done = _delivery(platform_db)
    assert (done.attempts, done.last_error, done.next_attempt_at) == (3, None, None) and done.delivered_at
    assert len(receiver["received"]) == 3
    bodies = {r["body"] for r in receiver["received"]}
    assert len(bodies) == 1  # the same event each time, so the receiver can deduplicate by X-HIE-Event-Id
    body = bodies.pop()
    assert receiver["received"][-1]["headers"]["X-HIE-Signature"] == tasks.signature(secret, body)
    assert json.loads(body)["kind"] == "overdue_reminder"


def test_a_receiver_that_is_down_leaves_the_delivery_pending_with_the_error(app, client, sent, as_user, platform_db):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    referral = sent["send"]()
    _set_webhook(client, as_user, f"http://127.0.0.1:{port}/down")
    response = client.post(f"/api/v1/referrals/{referral['id']}/cancel", json={}, headers=sent["fd"])
    assert response.status_code == 200  # the request never waits for the receiver
    run_jobs(app)
    later = utcnow() + timedelta(hours=1)
    with app.app_context():
        delivered, failed = tasks.deliver_due(later)
    assert (delivered, failed) == (0, 1)
    delivery = _delivery(platform_db)
    assert delivery.delivered_at is None and delivery.attempts >= 1
    assert "refused" in delivery.last_error.lower()
    assert delivery.next_attempt_at > later


def test_hie_referrals_remind_and_deliver_from_cron(home, client, sent, platform_db):
    referral = sent["send"]()
    long_ago = utcnow() - timedelta(days=3)
    platform_db.execute(update(Referral).where(Referral.id == referral["id"])
                        .values(created_at=long_ago, due_at=long_ago + timedelta(hours=4)))
    platform_db.commit()

    def hie(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=hie_environ(home))
        assert result.exit_code == 0, result.output
        return result.output

    assert "1 reminder(s), 1 escalation(s) stored" in hie("referrals", "remind")
    assert "0 reminder(s), 0 escalation(s) stored" in hie("referrals", "remind")
    assert "0 delivered, 0 failed" in hie("referrals", "deliver")
    assert sorted(k for k, _, _, _ in _stored(platform_db) if k.startswith("overdue")) == \
        ["overdue_escalation", "overdue_reminder"]
