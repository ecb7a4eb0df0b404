"""Two first writes for one person in one shard at once: the second to insert the registry row finds it there and
moves its stamp, instead of failing the request with a duplicate key (found by bench/consult_bench.py)."""

from __future__ import annotations

import uuid

from flask import g
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.exchange import registry
from hie.exchange.models import RecordLocation
from hie.platform.db import finish_unit_of_work, platform_session
from tests.conftest import new_patient


def test_a_registry_row_inserted_meanwhile_is_found_not_duplicated(app, client, as_user, platform_db, monkeypatch):
    patient = new_patient(client, as_user("yaodu.doctor"))
    person = patient["master_person_id"]
    with Session(app.extensions["hie.engines"].platform) as other, other.begin():  # the concurrent writer's row
        other.merge(RecordLocation(master_person_id=person, tenant_code="yaodu",
                                   last_updated=registry.utcnow()))
    with app.test_request_context("/fhir/Observation", method="POST"):
        g.request_id = uuid.uuid4().hex
        session = platform_session()
        real_get, looked = Session.get, []

        def first_look_misses(self, entity, *args, **kwargs):  # noqa: ANN001, ANN202
            if entity is RecordLocation and not looked:  # this request looked before the other one committed
                looked.append(True)
                return None
            return real_get(self, entity, *args, **kwargs)

        monkeypatch.setattr(Session, "get", first_look_misses)
        registry.locate("yaodu", person)
        monkeypatch.undo()
        stamped = g.hie_registry_time
        finish_unit_of_work(commit=True)
    platform_db.rollback()
    rows = platform_db.execute(select(RecordLocation.last_updated).where(
        RecordLocation.master_person_id == person, RecordLocation.tenant_code == "yaodu")).scalars().all()
    assert rows == [stamped] and session is not None
