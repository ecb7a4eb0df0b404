"""`hie worker`: runs queued jobs on Redis, and sweeps the outbox either way."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select, update

from hie.patients.stats import InstitutionPatientCount
from hie.platform.cli import main
from hie.platform.jobs.models import TenantOutboxEvent
from tests.conftest import REDIS_URL, hie_environ, new_patient, shard_engine


def _count(platform_db):
    platform_db.rollback()
    return platform_db.scalar(select(InstitutionPatientCount.patients))


def test_worker_burst_delivers_what_is_queued(client, app, as_user, platform_db, home):
    new_patient(client, as_user("yaodu.doctor"))
    if REDIS_URL:
        assert _count(platform_db) is None
        assert app.extensions["hie.queue"].count >= 1
    result = CliRunner().invoke(main, ["worker", "--burst"], env=hie_environ(home))
    assert result.exit_code == 0, result.output
    assert "outbox sweep" in result.output
    assert _count(platform_db) == 1
    with shard_engine(app, "yaodu").connect() as conn:
        assert conn.execute(select(TenantOutboxEvent.delivered_at)).scalar() is not None


def test_worker_sweep_picks_up_an_event_lost_before_dispatch(client, app, as_user, platform_db, home):
    new_patient(client, as_user("yaodu.doctor"))
    if REDIS_URL:
        app.extensions["hie.queue"].empty()
    else:
        platform_db.query(InstitutionPatientCount).delete()
        from hie.platform.jobs.models import HandledEvent

        platform_db.query(HandledEvent).delete()
        platform_db.commit()
    from datetime import timedelta

    from hie.platform.db import utcnow

    with shard_engine(app, "yaodu").begin() as conn:
        conn.execute(update(TenantOutboxEvent).values(delivered_at=None,
                                                      created_at=utcnow() - timedelta(minutes=5)))
    result = CliRunner().invoke(main, ["worker", "--burst"], env=hie_environ(home))
    assert result.exit_code == 0, result.output
    assert "re-dispatched 1 event(s)" in result.output
    assert _count(platform_db) == 1
