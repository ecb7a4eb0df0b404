"""EMPI integrity: one valid ID per person, person-level not-a-match, re-matching on update, cache after commit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from hie.empi.index import local_cache_key
from hie.empi.models import MasterPerson, PersonEvent, PersonRecord, ReviewItem, ReviewStatus
from hie.empi.tasks import rebuild
from hie.platform.jobs.models import PlatformOutboxEvent
from hie.platform.jobs.services import PLATFORM, deliver
from hie.tenants.models import Institution
from tests.conftest import REDIS_URL, new_patient, valid_id

ID_A = valid_id("14100219580312002")
ID_B = valid_id("14100219580312011")


def _people(client, as_user, platform_db) -> tuple[dict, dict]:
    """A record with ID A and one without an ID: both the same person."""
    with_id = new_patient(client, as_user("yaodu.doctor"), "V-1", id_number=ID_A)
    without = new_patient(client, as_user("yaodu.doctor"), "V-2", id_number=None)
    assert with_id["master_person_id"] == without["master_person_id"]
    return with_id, without


def test_a_second_valid_id_goes_to_review_even_when_its_best_match_has_no_id(client, as_user, platform_db):
    first, _ = _people(client, as_user, platform_db)
    other = new_patient(client, as_user("quwo.doctor"), "V-3", id_number=ID_B)
    assert other["master_person_id"] != first["master_person_id"]
    review = client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json()
    assert [(r["record"]["local_id"], r["veto"]) for r in review] == [("V-3", "different valid resident IDs")]


def test_merging_persons_with_different_valid_ids_is_refused_and_changes_nothing(client, as_user, platform_db):
    first, _ = _people(client, as_user, platform_db)
    other = new_patient(client, as_user("quwo.doctor"), "V-3", id_number=ID_B)
    steward = as_user("steward")
    before = platform_db.execute(select(PersonRecord.local_id, PersonRecord.person_id)).all()
    response = client.post(f"/api/v1/empi/persons/{other['master_person_id']}/merge",
                           json={"into": first["master_person_id"]}, headers=steward)
    assert response.status_code == 409
    assert "different valid resident ID numbers" in response.get_json()["detail"]
    platform_db.rollback()
    assert platform_db.execute(select(PersonRecord.local_id, PersonRecord.person_id)).all() == before
    assert platform_db.get(MasterPerson, other["master_person_id"]).merged_into is None
    item = client.get("/api/v1/empi/reviews", headers=steward).get_json()[0]
    linked = client.post(f"/api/v1/empi/reviews/{item['id']}", json={"decision": "link"}, headers=steward)
    assert linked.status_code == 409 and "different valid resident ID numbers" in linked.get_json()["detail"]


def test_rebuild_never_joins_two_valid_ids(client, as_user, platform_db, app):
    _people(client, as_user, platform_db)
    new_patient(client, as_user("quwo.doctor"), "V-3", id_number=ID_B)
    with app.app_context():
        counts = rebuild(False, progress=lambda done, total: None)
    assert counts["linked"] == 0
    platform_db.rollback()
    assert platform_db.scalar(select(func.count(func.distinct(PersonRecord.person_id)))) == 2


def _refused_pair(client, as_user) -> tuple[dict, dict]:
    x = new_patient(client, as_user("yaodu.doctor"), "P-1", name="刘芳", birth_date="1990-02-03", id_number=None,
                    phone="13500000001", sex="F", address="尧都区屯里镇东关村5号")
    y = new_patient(client, as_user("quwo.doctor"), "P-2", name="刘芳", birth_date="1990-03-02", id_number=None,
                    phone=None, sex="F", address=None)
    steward = as_user("steward")
    items = client.get("/api/v1/empi/reviews", headers=steward).get_json()
    assert len(items) == 1
    decided = client.post(f"/api/v1/empi/reviews/{items[0]['id']}", json={"decision": "not_a_match"},
                          headers=steward)
    assert decided.status_code == 200
    return x, y


def test_not_a_match_holds_between_the_persons_not_just_the_two_records(client, as_user, app):
    x, _ = _refused_pair(client, as_user)
    z = new_patient(client, as_user("yaodu.fd"), "Z-1", name="刘芳", birth_date="1990-02-03", id_number=None,
                    phone="13500000001", sex="F", address="尧都区屯里镇东关村5号")
    assert z["master_person_id"] == x["master_person_id"]
    with app.app_context():
        counts = rebuild(False, progress=lambda done, total: None)
    assert counts["linked"] == 0 and counts["queued"] == 0
    assert client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json() == []


def test_reviews_of_records_since_merged_are_superseded(client, as_user, platform_db):
    x = new_patient(client, as_user("yaodu.doctor"), "P-1", name="刘芳", birth_date="1990-02-03", id_number=None,
                    phone=None, sex="F", address="尧都区屯里镇东关村5号")
    y = new_patient(client, as_user("quwo.doctor"), "P-2", name="刘芳", birth_date="1990-03-02", id_number=None,
                    phone=None, sex="F", address=None)
    steward = as_user("steward")
    assert len(client.get("/api/v1/empi/reviews", headers=steward).get_json()) == 1
    merged = client.post(f"/api/v1/empi/persons/{y['master_person_id']}/merge",
                         json={"into": x["master_person_id"]}, headers=steward)
    assert merged.status_code == 200
    assert client.get("/api/v1/empi/reviews", headers=steward).get_json() == []
    platform_db.rollback()
    assert platform_db.scalars(select(ReviewItem.status)).all() == [ReviewStatus.superseded]


def test_update_that_makes_a_lone_record_match_links_it(client, as_user, platform_db):
    p = new_patient(client, as_user("yaodu.doctor"), "U-1")
    q = new_patient(client, as_user("yaodu.doctor"), "U-2", name="赵六", sex="M", birth_date="1970-01-01",
                    id_number=None, phone="13600000001", address="曲沃县史村镇")
    assert p["master_person_id"] != q["master_person_id"]
    changed = client.patch(f"/api/v1/patients/{q['id']}", json={
        "name": "王秀英", "sex": "F", "birth_date": "1958-03-12", "phone": "13935712345",
        "address": "山西省临汾市尧都区屯里镇东关村12号"}, headers=as_user("yaodu.doctor"))
    assert changed.status_code == 200 and changed.get_json()["master_person_id"] == p["master_person_id"]
    xref = client.get("/api/v1/empi/xref?local_id=U-2", headers=as_user("yaodu.doctor")).get_json()
    assert xref["master_person_id"] == p["master_person_id"]
    platform_db.rollback()
    assert platform_db.scalar(select(PersonEvent.action).where(PersonEvent.action == "update_link")) == "update_link"


def test_update_of_a_record_that_shares_its_person_goes_to_review(client, as_user):
    p = new_patient(client, as_user("yaodu.doctor"), "U-1")
    q = new_patient(client, as_user("yaodu.doctor"), "U-2", name="赵六", sex="M", birth_date="1970-01-01",
                    id_number=None, phone="13600000001", address="曲沃县史村镇")
    new_patient(client, as_user("quwo.doctor"), "U-3", name="赵六", sex="M", birth_date="1970-01-01",
                id_number=None, phone="13600000001", address="曲沃县史村镇")
    changed = client.patch(f"/api/v1/patients/{q['id']}", json={
        "name": "王秀英", "sex": "F", "birth_date": "1958-03-12", "phone": "13935712345",
        "address": "山西省临汾市尧都区屯里镇东关村12号"}, headers=as_user("yaodu.doctor"))
    assert changed.status_code == 200 and changed.get_json()["master_person_id"] == q["master_person_id"]
    review = client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json()
    assert [(r["record"]["local_id"], r["candidate"]["local_id"]) for r in review] == [("U-2", "U-1")]
    assert p["master_person_id"] != q["master_person_id"]


def _cached(app, platform_db, institution_code: str, local_id: str) -> str | None:
    institution_id = platform_db.scalar(select(Institution.id).where(Institution.code == institution_code))
    return app.extensions["hie.cache"].get(local_cache_key(institution_id, local_id))


@pytest.mark.skipif(not REDIS_URL, reason="the cache is a no-op without Redis")
def test_cache_holds_the_new_person_after_link_merge_and_unmerge(client, as_user, app, platform_db):
    a = new_patient(client, as_user("yaodu.doctor"), "A-1", name="赵六", birth_date="1970-01-01", sex="M",
                    id_number=valid_id("14100219700101001"), phone="13600000001", address=None)
    b = new_patient(client, as_user("quwo.doctor"), "B-1", name="钱七", birth_date="1975-05-05", sex="F",
                    id_number=None, phone="13600000002", address=None)
    linked = new_patient(client, as_user("quwo.doctor"), "A-2", name="赵六", birth_date="1970-01-01", sex="M",
                         id_number=valid_id("14100219700101001"), phone="13600000001", address=None)
    assert linked["master_person_id"] == a["master_person_id"] == _cached(app, platform_db, "QUWO-CH", "A-2")
    steward, quwo = as_user("steward"), as_user("quwo.doctor")
    assert _cached(app, platform_db, "QUWO-CH", "B-1") == b["master_person_id"]
    assert client.post(f"/api/v1/empi/persons/{b['master_person_id']}/merge", json={"into": a["master_person_id"]},
                       headers=steward).status_code == 200
    assert client.get("/api/v1/empi/xref?local_id=B-1", headers=quwo).get_json()["master_person_id"] \
        == a["master_person_id"] == _cached(app, platform_db, "QUWO-CH", "B-1")
    assert client.post(f"/api/v1/empi/persons/{b['master_person_id']}/unmerge", headers=steward).status_code == 200
    assert client.get("/api/v1/empi/xref?local_id=B-1", headers=quwo).get_json()["master_person_id"] \
        == b["master_person_id"] == _cached(app, platform_db, "QUWO-CH", "B-1")


@pytest.mark.skipif(not REDIS_URL, reason="the cache is a no-op without Redis")
def test_a_stale_answer_cached_before_commit_is_dropped_by_the_after_commit_handler(client, as_user, app,
                                                                                     platform_db):
    a = new_patient(client, as_user("yaodu.doctor"), "A-1", name="赵六", birth_date="1970-01-01", sex="M",
                    id_number=None, phone="13600000001", address=None)
    b = new_patient(client, as_user("quwo.doctor"), "B-1", name="钱七", birth_date="1975-05-05", sex="F",
                    id_number=None, phone="13600000002", address=None)
    assert client.post(f"/api/v1/empi/persons/{b['master_person_id']}/merge", json={"into": a["master_person_id"]},
                       headers=as_user("steward")).status_code == 200
    with app.app_context():
        institution_id = platform_db.scalar(select(PersonRecord.institution_id)
                                            .where(PersonRecord.local_id == "B-1"))
        cache = app.extensions["hie.cache"]
        cache.set(local_cache_key(institution_id, "B-1"), b["master_person_id"])
        platform_db.rollback()
        event_id = platform_db.scalar(select(PlatformOutboxEvent.id).where(PlatformOutboxEvent.topic == "empi.merged"))
        assert deliver(PLATFORM, event_id)
        assert cache.get(local_cache_key(institution_id, "B-1")) is None
    xref = client.get("/api/v1/empi/xref?local_id=B-1", headers=as_user("quwo.doctor")).get_json()
    assert xref["master_person_id"] == a["master_person_id"]


def test_rebuild_does_not_count_a_review_already_queued(client, as_user, app):
    new_patient(client, as_user("yaodu.doctor"), "P-1", name="刘芳", birth_date="1990-02-03", id_number=None,
                phone="13500000001", sex="F", address="尧都区屯里镇东关村5号")
    new_patient(client, as_user("quwo.doctor"), "P-2", name="刘芳", birth_date="1990-03-02", id_number=None,
                phone=None, sex="F", address=None)
    assert len(client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json()) == 1
    with app.app_context():
        counts = rebuild(False, progress=lambda done, total: None)
    assert counts["linked"] == 0 and counts["queued"] == 0
    assert len(client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json()) == 1


def test_a_key_held_by_more_than_max_block_records_is_left_out_of_candidate_search(client, as_user, platform_db, app,
                                                                                     monkeypatch):
    from hie.empi import services
    from hie.empi.index import normalized_of

    _people(client, as_user, platform_db)
    ring = app.extensions["hie.keyring"]
    record = platform_db.scalar(select(PersonRecord).where(PersonRecord.local_id == "V-1"))
    normalized = normalized_of(ring, record)
    hashes = services.key_hashes(ring, normalized)
    model = services.current_model(platform_db)
    both = {r.id for r in platform_db.scalars(select(PersonRecord))}
    assert {c.record_id for c in services.find_candidates(platform_db, ring, normalized, hashes, model)} == both
    monkeypatch.setattr(services, "MAX_BLOCK", 1)  # only the ID key is held by a single record
    candidates = services.find_candidates(platform_db, ring, normalized, hashes, model)
    assert [c.record_id for c in candidates] == [record.id]
    assert candidates[0].person_id == record.person_id
