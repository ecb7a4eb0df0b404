"""Scoring, hard rules, model serialisation and clustering on hand-made hard cases."""

import json
import time

import pytest

from hie.empi.matching import (
    VETO_DIFFERENT_IDS,
    VETO_GIVEN_NAMES,
    ModelWeights,
    Outcome,
    Thresholds,
    blocking_keys,
    classify,
    cluster,
    default_model,
    score,
    soundex,
)
from hie.empi.normalize import normalize_record
from hie.platform.standards import check_digit

MODEL = default_model()
THRESHOLDS = Thresholds()


def make_id(body17: str) -> str:
    return body17 + check_digit(body17)


def rec(rec_id: str, **fields: str):
    return normalize_record({"rec_id": rec_id, **fields})


BASE = {
    "name": "陈国强", "sex": "男", "birth_date": "1980-04-07", "phone": "13912345678",
    "address": "广东省广州市天河区石牌街道华师社区10号",
}
ID_A = make_id("44010619800407123")


def with_id(rec_id: str, number: str):
    return rec(rec_id, **BASE, id_type="CN-RIC", id_number=number)


def outcome(a, b) -> Outcome:
    s = score(a, b, MODEL)
    return classify(s.weight, THRESHOLDS, s.veto)


def test_identical_registrations_auto_link():
    assert outcome(rec("a", **BASE, id_type="CN-RIC", id_number=ID_A), rec("b", **BASE)) is Outcome.AUTO_LINK


def test_pinyin_typed_name_with_short_address_links():
    typed = rec("b", **{**BASE, "name": "CHEN, Guoqiang", "address": "石牌街道華師社區10號",
                        "phone": "+86 139 1234 5678"})
    s = score(rec("a", **BASE), typed, MODEL)
    assert s.levels["family_name"] == "pinyin" and s.levels["address"] == "exact"
    assert classify(s.weight, THRESHOLDS, s.veto) is Outcome.AUTO_LINK


def test_mistyped_id_digit_is_close_not_disagree():
    bad = ID_A[:5] + str((int(ID_A[5]) + 1) % 10) + ID_A[6:]
    s = score(with_id("a", ID_A), with_id("b", bad), MODEL)
    assert s.levels["id_number"] == "close" and s.veto is None


def test_old_15_digit_id_matches_its_18_digit_form():
    old = ID_A[:6] + ID_A[8:17]
    s = score(with_id("a", ID_A), with_id("b", old), MODEL)
    assert s.levels["id_number"] == "exact"


def test_swapped_day_and_month_is_a_near_agreement():
    s = score(rec("a", **BASE), rec("b", **{**BASE, "birth_date": "1980/7/4"}), MODEL)
    assert s.levels["birth_date"] == "typo_or_swap"
    assert classify(s.weight, THRESHOLDS, s.veto) is Outcome.AUTO_LINK


def test_different_valid_ids_never_auto_link():
    other = make_id("44010619800407155")
    s = score(with_id("a", ID_A), with_id("b", other), MODEL)
    assert s.veto == VETO_DIFFERENT_IDS
    assert classify(s.weight, THRESHOLDS, s.veto) is not Outcome.AUTO_LINK


def test_twins_without_ids_are_not_linked():
    twin = {**BASE, "name": "陈国栋"}
    s = score(rec("a", **{**BASE, "name": "陈子涵"}), rec("b", **{**twin, "name": "陈子轩"}), MODEL)
    assert s.veto == VETO_GIVEN_NAMES
    assert classify(s.weight, THRESHOLDS, s.veto) is not Outcome.AUTO_LINK


def test_namesakes_in_same_county_are_new_persons():
    a = rec("a", name="张伟", sex="男", birth_date="1975-02-11", phone="13600000001",
            address="广东省广州市天河区石牌街道华师社区10号")
    b = rec("b", name="张伟", sex="男", birth_date="1988-09-23", phone="13700000002",
            address="广州市天河区龙洞街道凤凰村3号")
    assert outcome(a, b) is Outcome.NEW_PERSON


def test_classify_thresholds_are_configurable():
    assert classify(5.0, Thresholds(link=4, review=0)) is Outcome.AUTO_LINK
    assert classify(5.0, Thresholds(link=8, review=0)) is Outcome.REVIEW
    assert classify(-1.0, Thresholds(link=8, review=0)) is Outcome.NEW_PERSON
    with pytest.raises(ValueError):
        Thresholds(link=0, review=5)


def test_model_round_trips_through_json_and_rejects_other_versions():
    data = json.loads(json.dumps(MODEL.to_dict()))
    again = ModelWeights.from_dict(data)
    assert again.to_dict() == MODEL.to_dict()
    with pytest.raises(ValueError):
        ModelWeights.from_dict({**data, "version": 99})


def test_blocking_keys_are_strings_shared_by_a_typed_duplicate():
    a = blocking_keys(rec("a", **BASE))
    b = blocking_keys(rec("b", name="Chen Guoqiang", birth_date="1980-07-04"))
    assert all(isinstance(k, str) for k in a)
    assert set(a) & set(b)


def test_soundex_matches_reference_codes():
    assert [soundex(w) for w in ("robert", "rupert", "tymczak", "ashcraft")] == ["R163", "R163", "T522", "A261"]


def test_cluster_keeps_twins_and_different_ids_apart():
    twin_a = {**BASE, "name": "陈子涵", "birth_date": "2019-06-01"}
    twin_b = {**BASE, "name": "陈子轩", "birth_date": "2019-06-01"}
    records = [
        rec("1", **BASE, id_type="CN-RIC", id_number=ID_A),
        rec("2", **{**BASE, "name": "Chen Guoqiang"}),
        rec("3", **BASE, id_type="CN-RIC", id_number=ID_A[:6] + ID_A[8:17]),
        rec("4", **twin_a), rec("5", **twin_a), rec("6", **twin_b),
        rec("7", **BASE, id_type="CN-RIC", id_number=make_id("44010619800407155")),
    ]
    persons = cluster(records).person_of
    assert persons[0] == persons[1] == persons[2]
    assert persons[3] == persons[4] != persons[5]
    assert persons[6] != persons[0]


def test_single_record_scoring_is_fast():
    a = rec("a", **BASE, id_type="CN-RIC", id_number=ID_A)
    candidates = [rec(str(i), **{**BASE, "name": "Chen Guoqiang"}) for i in range(50)]
    started = time.perf_counter()
    incoming = rec("x", **BASE)
    for c in candidates:
        score(incoming, c, MODEL)
    score(incoming, a, MODEL)
    assert time.perf_counter() - started < 0.02
