"""Scoring, hard rules, model serialisation and clustering on hand-made hard cases."""

import json
import time

import numpy as np
import pytest

from hie.empi.matching import (
    VETO_DIFFERENT_IDS,
    VETO_GIVEN_NAMES,
    VETO_UNCORROBORATED,
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


def latin(rec_id: str, family: str, given: str, **fields: str):
    return rec(rec_id, family_name=family, given_name=given, **fields)


def test_different_western_given_name_is_left_to_the_weights():
    a = latin("a", "pantazopoulos", "chloe", birth_date="19860807", address="147 allott place aldgate 2325 nsw")
    b = latin("b", "pantazopoulos", "eboni", birth_date="19860807", address="147 allott place aldgate 2325 sa")
    s = score(a, b, MODEL)
    assert s.levels["given_name"] == "disagree" and s.veto is None


def test_typed_pinyin_twins_still_vetoed():
    a = rec("a", **{**BASE, "name": "Chen Zihan"})
    b = rec("b", **{**BASE, "name": "CHEN, Zixuan"})
    assert score(a, b, MODEL).veto == VETO_GIVEN_NAMES


def test_typed_given_name_must_spell_the_hanzi_syllables():
    hanzi = rec("a", **{**BASE, "name": "徐宁琳"})
    assert score(hanzi, rec("b", **{**BASE, "name": "xuningliang"}), MODEL).veto == VETO_GIVEN_NAMES
    slip = score(hanzi, rec("c", **{**BASE, "name": "Xu Ninglim"}), MODEL)
    assert slip.levels["given_name"] == "jw92" and slip.veto is None


def test_hanzi_given_names_of_different_length_disagree():
    s = score(rec("a", **{**BASE, "name": "朱艳一"}), rec("b", **{**BASE, "name": "朱洋"}), MODEL)
    assert s.levels["given_name"] == "disagree" and s.veto == VETO_GIVEN_NAMES


def test_swapped_names_with_typos_and_a_name_moved_to_the_other_field():
    swapped = score(latin("a", "white", "alexa-rose"), latin("b", "alexa-rose", "whitbe"), MODEL)
    assert (swapped.levels["family_name"], swapped.levels["given_name"]) == ("jw92", "jw92")
    moved = score(latin("a", "pascoe", "william"), latin("b", "samantha", "pascoe"), MODEL)
    assert moved.levels["family_name"] == "pinyin" and moved.levels["given_name"] == "disagree"


def test_latin_address_with_same_number_and_postcode_is_close():
    a = latin("a", "x", "y", address="23 woollum street allu nga surreyh ills 2870 qld")
    b = latin("b", "x", "y", address="23 allunga woollum street surrey hills 2870 qld")
    assert score(a, b, MODEL).levels["address"] == "close"


def test_blocking_keys_catch_transposed_ids_and_shared_street_address():
    a = latin("a", "capurso", "harrison", id_type="AU-SOC", id_number="4086030", address="7 erldunda cct 6233 vic")
    b = latin("b", "ruby", "capurso", id_type="AU-SOC", id_number="4086300", address="7 erldunda circuit 6233 vic")
    shared = set(blocking_keys(a)) & set(blocking_keys(b))
    assert {"ix:AU-SOC:0003468", "pc:6233:7"} <= shared


def test_rare_names_weigh_more_than_common_ones_in_batch_matching():
    from hie.empi.matching.cluster import name_frequency_adjustment
    from hie.empi.matching.vectorized import RecordTable, compare_batch

    names = ["smith john"] * 60 + ["bridgland nicholas"] * 2 + [f"other{i} person{i}" for i in range(500)]
    records = [latin(str(i), *n.split()) for i, n in enumerate(names)]
    pairs = np.array([[0, 1], [60, 61]])
    levels = compare_batch(RecordTable.build(records), pairs[:, 0], pairs[:, 1])
    common, rare = name_frequency_adjustment(RecordTable.build(records), pairs, levels, MODEL)
    assert rare > common + 5


def test_u_excludes_matches_hidden_in_random_pairs():
    from hie.empi.matching.model import _without_matches

    u = _without_matches([0.0, 0.9, 0.05, 0.05], np.array([0.0, 0.1, 0.1, 0.8]), 0.05)
    assert abs(sum(u) - 1) < 1e-9 and u[3] < 0.05


@pytest.mark.parametrize(("hanzi", "typed"), [("陈子涵", "Chen Zixuan"), ("王梓涵", "Wang Zixuan"),
                                              ("张雨涵", "Zhang Yuxuan"), ("周子轩", "Zhou Zihan")])
def test_typed_pinyin_of_a_twins_name_is_not_an_ime_slip(hanzi, typed):
    twin = {**BASE, "birth_date": "2015-06-01"}
    s = score(rec("a", **{**twin, "name": hanzi}), rec("b", **{**twin, "name": typed}), MODEL)
    assert s.levels["given_name"] == "disagree" and s.veto == VETO_GIVEN_NAMES
    assert classify(s.weight, THRESHOLDS, s.veto) is not Outcome.AUTO_LINK


@pytest.mark.parametrize(("hanzi", "typed"), [("陈子涵", "Chen Zihan"), ("黄梓萱", "HUANG, Zixuan"),
                                              ("李明", "Li Min"), ("徐宁琳", "xuninglin")])
def test_typed_pinyin_of_the_same_name_still_links(hanzi, typed):
    assert outcome(rec("a", **{**BASE, "name": hanzi}), rec("b", **{**BASE, "name": typed})) is Outcome.AUTO_LINK


def test_namesakes_with_only_name_sex_and_birth_date_do_not_auto_link():
    bare = {"name": "张伟", "sex": "M", "birth_date": "1980-01-01"}
    s = score(rec("a", **bare), rec("b", **bare, phone="13912345678"), MODEL)
    assert s.weight >= THRESHOLDS.link and s.veto == VETO_UNCORROBORATED
    assert classify(s.weight, THRESHOLDS, s.veto) is Outcome.REVIEW
    house = score(rec("a", **bare, address="尧都区屯里镇东关村5号"), rec("b", **bare, address="屯里镇东关村5号"), MODEL)
    assert house.veto is None
    village = score(rec("a", **bare, address="尧都区屯里镇东关村5号"), rec("b", **bare, address="屯里镇东关村"), MODEL)
    assert village.veto == VETO_UNCORROBORATED


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_thresholds_must_be_finite(bad):
    with pytest.raises(ValueError, match="finite"):
        Thresholds(link=bad, review=0.0)
    with pytest.raises(ValueError, match="finite"):
        Thresholds(link=6.0, review=bad)


@pytest.mark.parametrize(("first", "second"), [("王琳志", "王琳诗"), ("吴建怡", "吴佳怡"), ("郭婷", "郭萍")])
def test_hanzi_twins_whose_names_differ_by_one_similar_sounding_character_are_vetoed(first, second):
    twin = {**BASE, "birth_date": "2016-05-10"}
    s = score(rec("a", **{**twin, "name": first}), rec("b", **{**twin, "name": second}), MODEL)
    assert s.levels["given_name"] == "disagree" and s.veto == VETO_GIVEN_NAMES
