"""Normalisation of Chinese registration fields."""

import datetime as dt

import pytest
from pypinyin import lazy_pinyin

from hie.empi.normalize import (
    canonical_text,
    is_pinyin,
    latin_key,
    normalize_name,
    normalize_phone,
    normalize_record,
    parse_address,
    parse_date,
    parse_resident_id,
)
from hie.platform.standards import check_digit


def make_id(body17: str) -> str:
    return body17 + check_digit(body17)


@pytest.mark.parametrize(
    ("raw", "family", "given", "fam_py", "giv_py"),
    [
        ("张三", "张", "三", "zhang", "san"),
        ("張 三", "张", "三", "zhang", "san"),
        ("Zhang San", "zhang", "san", "zhang", "san"),
        ("ZHANG, San", "zhang", "san", "zhang", "san"),
        ("zhangsan", "zhang", "san", "zhang", "san"),
        ("San Zhang", "zhang", "san", "zhang", "san"),
        ("ＺＨＡＮＧ　Ｓａｎ", "zhang", "san", "zhang", "san"),
        ("欧阳修", "欧阳", "修", "ouyang", "xiu"),
        ("Lǚ Bu", "lv", "bu", "lv", "bu"),
    ],
)
def test_names_reduce_to_canonical_form_and_pinyin(raw, family, given, fam_py, giv_py):
    fam, giv, f_py, g_py, _ = normalize_name(raw)
    assert (fam, giv, f_py, g_py) == (family, given, fam_py, giv_py)


@pytest.mark.parametrize(
    ("name", "reading"),
    [("单雄信", "shan"), ("曾国藩", "zeng"), ("解缙", "xie"), ("仇英", "qiu"), ("朴正", "piao"),
     ("区志强", "ou"), ("查良镛", "zha"), ("乐毅", "yue"), ("尉迟恭", "yuchi"), ("万俟卨", "moqi"),
     ("黑明", "he"), ("盖聂", "ge"), ("繁钦", "po"), ("覃明", "qin"), ("翟明", "zhai"), ("单于飞", "chanyu"),
     ("任我行", "ren")],
)
def test_surname_readings_differ_from_common_readings(name, reading):
    assert normalize_name(name)[2] == reading


def test_typed_pinyin_equals_hanzi_pinyin_for_special_surname():
    hanzi = normalize_record({"rec_id": "1", "name": "单田芳"})
    typed = normalize_record({"rec_id": "2", "name": "SHAN, Tianfang"})
    assert hanzi.full_pinyin == typed.full_pinyin == "shantianfang"


def test_valid_18_digit_id_yields_birth_date_and_sex():
    rid = parse_resident_id("11010519491231002X")
    assert rid.valid and rid.birth_date == dt.date(1949, 12, 31) and rid.sex == "F"


def test_mistyped_id_digit_fails_check():
    assert not parse_resident_id("11010519491231003X").valid


def test_15_digit_id_upgrades_with_19_and_check_digit():
    rid = parse_resident_id("110105491231002")
    assert rid.upgraded and rid.valid and rid.number == "11010519491231002X"


def test_lowercase_x_and_full_width_digits_accepted():
    assert parse_resident_id("１１０１０５１９４９１２３１００２x").number == "11010519491231002X"


def test_id_birth_date_fills_missing_birth_date_and_sex():
    rec = normalize_record({"rec_id": "1", "id_type": "CN-RIC", "id_number": make_id("44010619850704123")})
    assert rec.birth_date == dt.date(1985, 7, 4) and rec.sex == "M" and rec.id_valid


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+86 138-0013-8000", "13800138000"), ("0086 13800138000", "13800138000"), ("8613800138000", "13800138000"),
     ("010-6552 1234", "01065521234"), ("+86 10 6552 1234", "01065521234"), ("(020)87654321", "02087654321"),
     ("１３８００１３８０００", "13800138000"), ("12", None)],
)
def test_phone_normalisation(raw, expected):
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    "raw", ["1990-03-05", "19900305", "1990/3/5", "1990年3月5日", "１９９０－０３－０５"],
)
def test_clinic_date_formats(raw):
    parsed = parse_date(raw)
    assert parsed.value == dt.date(1990, 3, 5) and parsed.swappable


def test_impossible_month_read_as_swapped_and_bad_dates_rejected():
    assert parse_date("1990-13-05").value == dt.date(1990, 5, 13)
    assert parse_date("1990-02-30") is None and parse_date("soon") is None
    assert not parse_date("1990-05-20").swappable


def test_addresses_of_different_lengths_split_into_same_parts():
    full = parse_address("浙江省杭州市西湖区转塘镇双流村3组12号")
    short = parse_address("轉塘鎮雙流村12號")
    assert (full.province, full.city, full.county) == ("浙江", "杭州", "西湖")
    assert (full.township, full.village, full.house_number) == ("转塘", "双流", "12")
    assert (short.township, short.village, short.house_number) == ("转塘", "双流", "12")


def test_residential_community_is_not_read_as_district():
    addr = parse_address("石牌街道华师社区10号")
    assert addr.county is None and addr.township == "石牌" and addr.village == "华师"


def test_unparseable_fields_recorded_as_issues():
    rec = normalize_record({"rec_id": "9", "birth_date": "31/31/1990", "id_type": "CN-RIC", "id_number": "123"})
    assert {f for f, _ in rec.issues} == {"birth_date", "id_number"}
    assert rec.birth_date is None and not rec.id_valid


def test_pinyin_detection_tells_typed_chinese_names_from_western_ones():
    assert is_pinyin("zihan") and is_pinyin("xiaolv") and is_pinyin("guoqiang")
    assert not is_pinyin("chloe") and not is_pinyin("joshua") and not is_pinyin("")


def test_simplified_text_skips_converter_but_traditional_is_converted():
    assert canonical_text("广东省广州市天河区") == "广东省广州市天河区"
    assert canonical_text("廣東省廣州市天河區") == "广东省广州市天河区"


def test_latin_address_keeps_house_number_and_postcode():
    addr = parse_address("147 Allott Place, Wyoming Park Aldgate 2325 NSW")
    assert (addr.house_number, addr.postcode) == ("147", "2325")
    assert addr.text == "147 allott place wyoming park aldgate 2325 nsw"


@pytest.mark.parametrize("given", ["英轩", "长生", "重阳", "乐乐", "绿萝", "敏玉"])
def test_fast_given_pinyin_matches_pypinyin(given):
    assert normalize_name("王" + given)[3] == latin_key("".join(lazy_pinyin(given)))


@pytest.mark.parametrize("raw", ["1958-3-12 00:00:00", "1958/3/12", "1958-03-12T08:30", "1958年3月12日"])
def test_dates_with_time_or_slashes_parse(raw):
    assert parse_date(raw).value == dt.date(1958, 3, 12)


@pytest.mark.parametrize(("raw", "house"), [
    ("尧都区屯里镇东关村五号", "5"), ("尧都区屯里镇东关村十二号", "12"), ("东关村二十三号", "23"),
    ("东关村一百零五号", "105"), ("东关村5号", "5"),
])
def test_chinese_numeral_house_numbers_parse(raw, house):
    assert parse_address(raw).house_number == house


def test_chinese_numeral_house_number_agrees_with_digits():
    from hie.empi.matching.comparison import FIELD_LEVELS, compare_addresses

    a = normalize_record({"rec_id": "a", "address": "尧都区屯里镇东关村五号"})
    b = normalize_record({"rec_id": "b", "address": "临汾市尧都区屯里镇东关村5号"})
    assert FIELD_LEVELS["address"][compare_addresses(a, b)] == "exact"


@pytest.mark.parametrize("raw", ["艾力·买买提", "艾力•买买提", "艾力・买买提", "艾力.买买提"])
def test_minority_names_with_a_middle_dot_keep_the_whole_name_as_given_name(raw):
    assert normalize_name(raw) == (None, "艾力买买提", None, "ailimaimaiti", True)


def test_a_han_name_with_a_stray_dot_is_split_as_usual():
    assert normalize_name("李·明")[:2] == ("李", "明")


def test_dotted_and_undotted_minority_name_agree_but_brothers_do_not():
    from hie.empi.matching import VETO_GIVEN_NAMES, default_model, score

    base = {"sex": "M", "birth_date": "1990-01-01", "phone": "13800001111"}
    same = score(normalize_record({**base, "rec_id": "a", "name": "艾力·买买提"}),
                 normalize_record({**base, "rec_id": "b", "name": "艾力买买提"}), default_model())
    assert same.levels["given_name"] == "pinyin" and same.veto is None
    twin = score(normalize_record({**base, "rec_id": "a", "name": "艾力·买买提"}),
                 normalize_record({**base, "rec_id": "c", "name": "艾克拜尔·买买提"}), default_model())
    assert twin.veto == VETO_GIVEN_NAMES


def test_unknown_sex_and_future_birth_date_are_issues():
    rec = normalize_record({"rec_id": "x", "sex": "Q", "birth_date": "2090-01-01"})
    assert rec.sex is None and rec.birth_date is None
    assert [field for field, _ in rec.issues] == ["sex", "birth_date"]
    assert normalize_record({"rec_id": "y", "sex": "U"}).issues == []
