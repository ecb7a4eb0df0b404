"""The audit chain: every event chained; edits and deletions found by `hie audit verify`."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import Integer, delete, func, select, update

from hie.platform.audit.models import AuditChainHead, AuditEvent
from hie.platform.cli import main
from tests.conftest import hie_environ, login, new_patient


@pytest.fixture
def verify(home):
    def run():
        return CliRunner().invoke(main, ["audit", "verify"], env=hie_environ(home))
    return run


@pytest.fixture
def some_events(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("yaodu.doctor"))
    client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("quwo.doctor"))
    return patient


def test_intact_chain_verifies(some_events, verify, platform_db):
    total = platform_db.scalar(select(func.count()).select_from(AuditEvent))
    result = verify()
    assert result.exit_code == 0, result.output
    assert f"{total} events verified" in result.output
    seqs = platform_db.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert seqs == list(range(1, total + 1))


def test_edited_event_is_detected(some_events, verify, platform_db):
    platform_db.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(outcome="success"))
    platform_db.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(username="someone.else"))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert "event 2: event edited" in result.output


_EDITABLE = [c.key for c in AuditEvent.__table__.columns if c.key not in ("seq", "hash")]


def _edited(value: object, column) -> object:  # noqa: ANN001
    """Another value of the column's type: what someone with write access to the database might put there."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if isinstance(column.type, Integer):
        return (value or 0) + 1
    return ("x" + (value or ""))[: getattr(column.type, "length", None) or None]


@pytest.mark.parametrize("field", _EDITABLE)
def test_an_edit_of_any_stored_field_is_detected(some_events, verify, platform_db, field):
    """Every column but the hash itself is chained: an edited break-glass flag or source address is found too."""
    column = AuditEvent.__table__.c[field]
    before = platform_db.get(AuditEvent, 2)
    changed = _edited(getattr(before, field), column)
    assert changed != getattr(before, field)
    platform_db.execute(update(AuditEvent).where(AuditEvent.seq == 2).values({field: changed}))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert "TAMPERED at event 2: event edited (its hash does not match)" in result.output


def test_edited_event_with_recomputed_plain_hash_is_still_detected(some_events, verify, platform_db):
    import hashlib

    platform_db.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(
        purpose="research", hash=hashlib.sha256(b"forged").hexdigest()))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert "event 2" in result.output and "event 3" in result.output


def test_deleted_event_is_detected(some_events, verify, platform_db):
    platform_db.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert "event(s) 2 deleted" in result.output


def test_deleted_tail_is_detected(some_events, verify, platform_db):
    last = platform_db.scalar(select(func.max(AuditEvent.seq)))
    platform_db.execute(delete(AuditEvent).where(AuditEvent.seq >= last - 1))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert f"event(s) {last - 1}-{last} deleted" in result.output


def _truncate_and_move_head(platform_db) -> int:
    """Cut the last two events and point the chain head at the new last one, as a careful intruder would."""
    keep = platform_db.scalar(select(func.max(AuditEvent.seq))) - 2
    keep_hash = platform_db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == keep))
    platform_db.execute(delete(AuditEvent).where(AuditEvent.seq > keep))
    platform_db.execute(update(AuditChainHead).values(last_seq=keep, last_hash=keep_hash))
    platform_db.commit()
    return keep


def test_truncated_tail_with_a_moved_chain_head_is_detected(some_events, verify, platform_db):
    keep = _truncate_and_move_head(platform_db)
    result = verify()
    assert result.exit_code == 1
    assert f"TAMPERED at event {keep}: chain head forged or moved" in result.output


def test_truncation_stays_detected_after_new_events_are_appended(client, some_events, verify, platform_db):
    keep = _truncate_and_move_head(platform_db)
    login(client, "yaodu.nurse")
    login(client, "yaodu.nurse")
    result = verify()
    assert result.exit_code == 1
    assert f"TAMPERED at event {keep}: chain head forged or moved (found by a later append)" in result.output


def test_chain_head_that_miscounts_the_events_is_detected(some_events, verify, platform_db):
    last = platform_db.scalar(select(func.max(AuditEvent.seq)))
    platform_db.execute(update(AuditChainHead).values(last_seq=last + 5))
    platform_db.commit()
    result = verify()
    assert result.exit_code == 1
    assert f"event(s) {last + 1}-{last + 5} deleted" in result.output
    assert f"{last} events stored but the chain head counts {last + 5}" in result.output


def test_auditor_filters_by_patient_user_and_time(client, as_user, some_events):
    exact = client.get(f"/api/v1/audit?patient=yaodu/{some_events['id']}", headers=as_user("auditor"))
    assert {e["username"] for e in exact.get_json()} == {"yaodu.doctor"}
    response = client.get(f"/api/v1/audit?patient={some_events['id']}", headers=as_user("auditor"))
    assert response.status_code == 200
    events = response.get_json()
    assert {e["action"] for e in events} == {"create", "read"}
    assert {e["username"] for e in events} == {"yaodu.doctor", "quwo.doctor"}
    denied = client.get("/api/v1/audit?user=quwo.doctor&action=read", headers=as_user("auditor")).get_json()
    assert [e["outcome"] for e in denied] == ["not_found"]
    future = client.get("/api/v1/audit?since=2999-01-01T00:00:00Z", headers=as_user("auditor")).get_json()
    assert future == []


def test_county_auditor_sees_only_their_region(client, as_user, some_events):
    events = client.get("/api/v1/audit?action=read", headers=as_user("yaodu.auditor")).get_json()
    assert {e["tenant_code"] for e in events} == {"yaodu"}
    city = client.get("/api/v1/audit?action=read", headers=as_user("auditor")).get_json()
    assert {e["tenant_code"] for e in city} == {"yaodu", "quwo"}


def test_audit_api_refuses_non_auditors_and_bad_filters(client, as_user):
    assert client.get("/api/v1/audit", headers=as_user("yaodu.doctor")).status_code == 403
    bad = client.get("/api/v1/audit?since=yesterday", headers=as_user("auditor"))
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "since"
    window = client.get("/api/v1/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
                        headers=as_user("auditor"))
    assert window.status_code == 422
    assert client.get("/api/v1/audit?outcome=maybe", headers=as_user("auditor")).status_code == 422


def _append_as_previous_release(app) -> int:
    """Append one event as a process of the release before head signing does: head seq/hash moved, not signed."""
    from hie.platform.audit import services

    engine, keyring = app.extensions["hie.engines"].platform, app.extensions["hie.keyring"]
    with app.test_request_context(), engine.begin() as conn:
        seq, last_hash = conn.execute(select(AuditChainHead.last_seq, AuditChainHead.last_hash)).one()
        row = services._to_row(services.PendingEvent("read", "success"))
        row.seq, row.prev_hash = seq + 1, last_hash
        row.hash = keyring.audit_mac(services._canonical(row))
        conn.execute(AuditEvent.__table__.insert(), [{c.key: getattr(row, c.key) for c in AuditEvent.__table__.c}])
        conn.execute(update(AuditChainHead).values(last_seq=row.seq, last_hash=row.hash))
    return row.seq


def test_rolling_upgrade_appends_by_previous_release_keep_the_chain_intact(app, client, some_events, verify,
                                                                          platform_db):
    _append_as_previous_release(app)
    last = _append_as_previous_release(app)
    result = verify()
    assert result.exit_code == 0, result.output
    login(client, "yaodu.nurse")
    result = verify()
    assert result.exit_code == 0, result.output
    assert f"{last + 1} events verified" in result.output
    head = platform_db.get(AuditChainHead, 1)
    assert head.signed_seq == head.last_seq == last + 1


def test_truncation_below_the_signed_head_after_a_previous_release_append_is_detected(app, client, some_events,
                                                                                     verify, platform_db):
    _append_as_previous_release(app)
    keep = _truncate_and_move_head(platform_db)
    login(client, "yaodu.nurse")
    result = verify()
    assert result.exit_code == 1
    assert f"TAMPERED at event {keep}: chain head forged or moved (found by a later append)" in result.output


def test_edited_unsigned_event_is_not_signed_over(app, client, some_events, verify, platform_db):
    last = _append_as_previous_release(app)
    platform_db.execute(update(AuditEvent).where(AuditEvent.seq == last).values(outcome="denied"))
    platform_db.commit()
    login(client, "yaodu.nurse")
    result = verify()
    assert result.exit_code == 1
    assert f"TAMPERED at event {last}: chain head forged or moved (found by a later append)" in result.output
    assert f"event {last}: event edited" in result.output
