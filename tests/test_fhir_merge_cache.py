"""$everything follows EMPI merges and unmerges across tenants; its Redis cache never outlives a change."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from hie.exchange import store
from hie.platform import care
from hie.platform.audit.models import AuditEvent
from hie.platform.cache import Cache
from hie.platform.db import session_scope
from hie.tenants.models import Institution
from tests.conftest import new_patient
from tests.fhir_helpers import DictRedis, clinical, create, patient, run_jobs

BREAK_GLASS = {"X-Break-Glass-Reason": "unconscious on arrival, prior records needed"}


@pytest.fixture
def cache(app):
    """The app's cache: Redis when the run has one, otherwise a dict-backed client for this test only."""
    original = app.extensions["hie.cache"]
    if not original.enabled:
        app.extensions["hie.cache"] = Cache(DictRedis(), 300)  # type: ignore[arg-type]
    yield app.extensions["hie.cache"]
    app.extensions["hie.cache"] = original


def _person(client, headers, patient_id):
    return client.get(f"/api/v1/patients/{patient_id}", headers=headers).get_json()["master_person_id"]


def _ids(client, headers, patient_id):
    response = client.get(f"/fhir/Patient/{patient_id}/$everything", headers=headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["total"] == len(body["entry"])
    return {entry["resource"]["id"] for entry in body["entry"]}


@pytest.fixture
def two_people(client, app, as_user, platform_db):
    """Two master persons: A with an Observation in yaodu, B (cared for by QUWO-CH) with a Condition in quwo."""
    yaodu, quwo = as_user("yaodu.doctor"), as_user("quwo.doctor")
    a = create(client, yaodu, patient())
    observation = create(client, yaodu, clinical("Observation", f"Patient/{a['id']}"))
    b = create(client, quwo, patient(name="王秀英", id_number=None, phone="13700000000"))
    condition = create(client, quwo, clinical("Condition", f"Patient/{b['id']}"))
    run_jobs(app)
    person_a, person_b = _person(client, yaodu, a["id"]), _person(client, quwo, b["id"])
    assert person_a != person_b
    quwo_ch = platform_db.scalar(select(Institution.id).where(Institution.code == "QUWO-CH"))
    with session_scope(app.extensions["hie.engines"].platform) as session:
        care.grant(session, quwo_ch, person_b, care.CareKind.referral)
    return {"a": a, "b": b, "observation": observation, "condition": condition,
            "person_a": person_a, "person_b": person_b}


def _merge(client, app, as_user, source, target):
    response = client.post(f"/api/v1/empi/persons/{source}/merge", json={"into": target}, headers=as_user("steward"))
    assert response.status_code == 200, response.get_json()
    run_jobs(app)


def _unmerge(client, app, as_user, person):
    response = client.post(f"/api/v1/empi/persons/{person}/unmerge", headers=as_user("steward"))
    assert response.status_code == 200, response.get_json()
    run_jobs(app)


def test_everything_follows_a_merge_across_tenants_and_its_undoing(client, app, as_user, two_people):
    quwo, yaodu = as_user("quwo.doctor"), as_user("yaodu.doctor")
    p = two_people
    alone = {p["b"]["id"], p["condition"]["id"]}
    assert _ids(client, quwo, p["b"]["id"]) == alone
    _merge(client, app, as_user, p["person_a"], p["person_b"])
    merged = alone | {p["a"]["id"], p["observation"]["id"]}
    assert _ids(client, quwo, p["b"]["id"]) == merged
    assert _ids(client, quwo, p["a"]["id"]) == merged
    found = client.get(f"/fhir/Observation?patient={p['b']['id']}", headers=quwo).get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == [p["observation"]["id"]]
    while_merged = create(client, yaodu, clinical("Procedure", f"Patient/{p['a']['id']}"))
    assert while_merged["id"] in _ids(client, quwo, p["b"]["id"])
    _unmerge(client, app, as_user, p["person_a"])
    assert _ids(client, quwo, p["b"]["id"]) == alone
    assert client.get(f"/fhir/Patient/{p['a']['id']}/$everything", headers=quwo).status_code == 404
    assert _ids(client, yaodu, p["a"]["id"]) == {p["a"]["id"], p["observation"]["id"], while_merged["id"]}


def test_cached_everything_changes_after_write_merge_and_unmerge(client, app, as_user, two_people, cache):
    quwo, yaodu = as_user("quwo.doctor"), as_user("yaodu.doctor")
    p = two_people
    first = _ids(client, quwo, p["b"]["id"])
    assert cache.get_bytes(store.everything_cache_key(p["person_b"])) is not None
    written = create(client, quwo, clinical("Encounter", f"Patient/{p['b']['id']}"))
    assert _ids(client, quwo, p["b"]["id"]) == first | {written["id"]}
    _merge(client, app, as_user, p["person_a"], p["person_b"])
    merged = _ids(client, quwo, p["b"]["id"])
    assert {p["a"]["id"], p["observation"]["id"]} <= merged
    assert _ids(client, yaodu, p["a"]["id"]) >= {p["a"]["id"], p["observation"]["id"]}
    _unmerge(client, app, as_user, p["person_a"])
    assert _ids(client, quwo, p["b"]["id"]) == first | {written["id"]}
    assert _ids(client, yaodu, p["a"]["id"]) == {p["a"]["id"], p["observation"]["id"]}


def test_a_summary_recached_before_the_write_commits_is_not_served(client, as_user, monkeypatch, cache):
    """A concurrent $everything that re-caches the old summary between a write's flush and commit."""
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    before = _ids(client, doctor, subject["id"])
    person = _person(client, doctor, subject["id"])
    stale = cache.get_bytes(store.everything_cache_key(person))
    original = store._record_location

    def racing(*args, **kwargs):
        original(*args, **kwargs)
        cache.set_bytes(store.everything_cache_key(person), stale)

    monkeypatch.setattr(store, "_record_location", racing)
    written = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    assert cache.get_bytes(store.everything_cache_key(person)) == stale, "the racing reader re-cached the old summary"
    assert _ids(client, doctor, subject["id"]) == before | {written["id"]}


def test_register_update_refreshes_cached_everything(client, app, as_user, cache):
    doctor = as_user("yaodu.doctor")
    registered = new_patient(client, doctor)
    create(client, doctor, clinical("Observation", f"Patient/{registered['id']}"))
    run_jobs(app)
    client.get(f"/fhir/Patient/{registered['id']}/$everything", headers=doctor)
    person = _person(client, doctor, registered["id"])
    assert cache.get_bytes(store.everything_cache_key(person)) is not None
    response = client.patch(f"/api/v1/patients/{registered['id']}", json={"phone": "13811112222"}, headers=doctor)
    assert response.status_code == 200, response.get_json()
    body = client.get(f"/fhir/Patient/{registered['id']}/$everything", headers=doctor).get_json()
    shown = next(e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Patient")
    assert shown["telecom"] == [{"system": "phone", "value": "13811112222"}]


def test_everything_breaks_the_glass_with_a_reason_and_audits_it(client, as_user, platform_db, two_people):
    p = two_people
    quwo = as_user("quwo.doctor")
    assert client.get(f"/fhir/Patient/{p['a']['id']}/$everything", headers=quwo).status_code == 404
    short = client.get(f"/fhir/Patient/{p['a']['id']}/$everything", headers={**quwo, "X-Break-Glass-Reason": "x"})
    assert short.status_code == 400 and short.get_json()["resourceType"] == "OperationOutcome"
    assert _ids(client, {**quwo, **BREAK_GLASS}, p["a"]["id"]) == {p["a"]["id"], p["observation"]["id"]}
    platform_db.rollback()
    events = platform_db.execute(select(AuditEvent.outcome, AuditEvent.break_glass, AuditEvent.detail).where(
        AuditEvent.username == "quwo.doctor", AuditEvent.resource_id == p["a"]["id"])).all()
    assert [(o, g) for o, g, _ in events] == [("denied", False), ("success", True)]
    assert BREAK_GLASS["X-Break-Glass-Reason"] in events[1][2]
    nurse = client.get(f"/fhir/Patient/{p['b']['id']}/$everything", headers={**as_user("yaodu.nurse"), **BREAK_GLASS})
    assert nurse.status_code == 404, "nurses hold no break-glass permission"


def test_a_cached_summary_that_does_not_open_is_a_miss_not_an_error(client, as_user, cache):
    """A blob from another release, or garbage: the answer is rebuilt from the shards and the cache repaired."""
    doctor = as_user("yaodu.doctor")
    subject = create(client, doctor, patient())
    observation = create(client, doctor, clinical("Observation", f"Patient/{subject['id']}"))
    person = _person(client, doctor, subject["id"])
    key = store.everything_cache_key(person)
    for unreadable in (b'"k2026$old-json-format"', b"garbage"):
        cache.set_bytes(key, unreadable)
        assert _ids(client, doctor, subject["id"]) == {subject["id"], observation["id"]}
        assert cache.get_bytes(key) not in (None, unreadable), "the summary was rebuilt and cached again"
