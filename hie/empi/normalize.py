"""Field normalisation for EMPI matching: names, resident IDs, phones, dates and addresses."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import opencc
from pypinyin import lazy_pinyin
from pypinyin.pinyin_dict import pinyin_dict

from hie.empi.fields import (
    ID_NOISE,
    RESIDENT_ID_TYPE,
    normalize_phone,
    normalize_sex,
    parse_date,
    parse_resident_id,
    sex_is_known_code,
)

# Surnames whose reading differs from the character's most common reading, plus compound surnames.
SURNAME_READINGS: dict[str, str] = {
    "单": "shan", "曾": "zeng", "解": "xie", "仇": "qiu", "朴": "piao", "区": "ou", "查": "zha",
    "乐": "yue", "黑": "he", "盖": "ge", "繁": "po", "覃": "qin", "翟": "zhai", "任": "ren",
    "尉迟": "yuchi", "万俟": "moqi", "单于": "chanyu", "长孙": "zhangsun", "令狐": "linghu",
    "皇甫": "huangfu", "澹台": "tantai", "宰父": "zaifu", "乐正": "yuezheng",
    "秘": "bi", "缪": "miao", "召": "shao", "员": "yun", "隗": "wei", "种": "chong", "那": "na",
    "燕": "yan", "过": "guo", "句": "gou", "华": "hua", "纪": "ji", "洗": "xian", "冼": "xian",
    "都": "du", "莘": "shen", "阚": "kan", "蕃": "pi", "郇": "huan", "相": "xiang", "宓": "fu",
    "能": "nai", "折": "she", "谌": "chen", "朝": "chao", "藏": "zang", "贲": "ben", "重": "chong",
    "薄": "bo", "柏": "bai", "缶": "fou", "尉": "wei", "蔺": "lin", "沈": "shen", "石": "shi",
}
COMPOUND_SURNAMES: frozenset[str] = frozenset({
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "万俟", "单于", "令狐", "长孙", "慕容",
    "司徒", "司空", "夏侯", "公孙", "宇文", "轩辕", "澹台", "呼延", "端木", "南宫", "西门", "独孤",
    "乐正", "宰父", "钟离", "闻人", "赫连", "申屠", "百里", "东郭", "公冶", "太史", "拓跋",
})
_COMMON_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武"
    "戴莫孔向汤单解仇朴区查乐黑盖繁翟欧司上诸东牛温芦柴葛常易乔伍庞颜倪聂章鲁殷岳舒霍申鲍童祝宁"
)
_LATIN_ONLY = re.compile(r"[^a-z]")
_SEPARATORS = re.compile(r"[\s\u00b7\u2022\u30fb.]+")
_LYU = re.compile(r"(?<![a-z])([ln])yu")
_HANZI = re.compile(r"[\u3400-\u9fff\U00020000-\U0002ffff]")
_ADDRESS_PARTS = (
    ("province", re.compile(r"^(北京市|上海市|天津市|重庆市|.{2,7}?(?:省|自治区|特别行政区))")),
    ("city", re.compile(r"^(.{2,8}?(?:市|自治州|地区|盟))")),
    ("county", re.compile(r"^(.{1,7}?(?:(?<![社小])区|县|旗|市))")),
    ("township", re.compile(r"^(.{1,8}?(?:街道|镇|乡))")),
    ("village", re.compile(r"^(.{1,10}?(?:社区|居委会|村委会|村|小区|花园|新村))")),
)
_CN_NUMERALS = "〇零一二两三四五六七八九十百"
_HOUSE_NUMBER = re.compile(rf"(\d+)\s*号|([{_CN_NUMERALS}]+)号|(\d+)\D*$")
_CN_DIGITS = {c: d for d, chars in enumerate(("〇零", "一", "二两", "三", "四", "五", "六", "七", "八", "九"))
              for c in chars}
_NAME_DOTS = re.compile(r"[\u00b7\u2022\u2027\u30fb\uff65.]")
_ADMIN_SUFFIX = re.compile(
    r"(?:省|市|自治区|特别行政区|自治州|地区|区|县|旗|街道|镇|乡|居委会|村委会|社区|村)$"
)


@dataclass(frozen=True, slots=True)
class Address:
    """Chinese address split into administrative levels so addresses of different lengths compare."""

    text: str
    province: str | None = None
    city: str | None = None
    county: str | None = None
    township: str | None = None
    village: str | None = None
    house_number: str | None = None
    is_chinese: bool = False
    postcode: str | None = None


@dataclass(slots=True)
class NormalizedRecord:
    """A registration reduced to the canonical values that comparison and blocking need."""

    rec_id: str
    source: str | None = None
    family_name: str | None = None
    given_name: str | None = None
    family_pinyin: str | None = None
    given_pinyin: str | None = None
    given_syllables: tuple[str, ...] = ()
    name_is_hanzi: bool = False
    sex: str | None = None
    birth_date: dt.date | None = None
    birth_swappable: bool = False
    id_type: str | None = None
    id_number: str | None = None
    id_valid: bool = False
    id_birth_date: dt.date | None = None
    id_sex: str | None = None
    phone: str | None = None
    address: Address | None = None
    issues: list[tuple[str, str]] = field(default_factory=list)

    @property
    def full_pinyin(self) -> str | None:
        """Family and given pinyin run together, the form typed-in names are compared by."""
        parts = [p for p in (self.family_pinyin, self.given_pinyin) if p]
        return "".join(parts) or None

    @property
    def birth_dates(self) -> tuple[dt.date, ...]:
        """Stated and ID-encoded birth dates, both usable as evidence."""
        dates = [d for d in (self.birth_date, self.id_birth_date) if d is not None]
        return tuple(dict.fromkeys(dates))


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    """Build the traditional-to-simplified converter once; it loads dictionaries."""
    return opencc.OpenCC("t2s")


def canonical_text(text: str | None) -> str:
    """Full-width to half-width, traditional to simplified, no spaces: the form clerks' variants share."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = _SEPARATORS.sub("", text)
    if not text.isascii() and _is_traditional(text):
        text = _t2s().convert(text)
    return text


@lru_cache(maxsize=1)
def _traditional_markers() -> tuple[frozenset[str], re.Pattern[str]]:
    """Characters and phrases that t2s changes, so simplified text (most rows) can skip the slow converter."""
    folder = Path(opencc.__file__).parent / "dictionary"
    chars: set[str] = set()
    for line in (folder / "TSCharacters.txt").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("\t")
        if value.split(" ")[0] != key:
            chars.add(key)
    phrases = []
    for line in (folder / "TSPhrases.txt").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("\t")
        if value.split(" ")[0] != key and not chars.intersection(key):
            phrases.append(re.escape(key))
    return frozenset(chars), re.compile("|".join(phrases) or "(?!)")


def _is_traditional(text: str) -> bool:
    """Whether t2s would change the text at all."""
    chars, phrases = _traditional_markers()
    return not chars.isdisjoint(text) or phrases.search(text) is not None


def has_hanzi(text: str) -> bool:
    """Tell hanzi names from names typed in pinyin or Latin letters."""
    return bool(_HANZI.search(text))


@lru_cache(maxsize=65536)
def latin_key(text: str) -> str:
    """Lowercase letters only, tone marks and ü folded, so typed pinyin variants compare equal."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
    text = _LYU.sub(r"\1v", text.replace("u\u0308", "v").replace("u:", "v"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _LATIN_ONLY.sub("", text)


def split_dotted_name(name: str) -> tuple[None, str] | None:
    """A minority name with a middle dot (艾力·买买提) has no surname: all of it is the given name."""
    parts = [canonical_text(p) for p in _NAME_DOTS.split(unicodedata.normalize("NFKC", name))]
    parts = [p for p in parts if p]
    if len(parts) < 2 or not all(has_hanzi(p) for p in parts):
        return None
    if parts[0] in COMPOUND_SURNAMES or (len(parts[0]) == 1 and parts[0] in _COMMON_SURNAMES):
        return None  # a Han name with a stray separator: 李·明
    return None, "".join(parts)


def split_hanzi_name(name: str) -> tuple[str, str]:
    """Split a canonical hanzi full name into surname and given name, compound surnames first."""
    if len(name) >= 3 and name[:2] in COMPOUND_SURNAMES:
        return name[:2], name[2:]
    return name[:1], name[1:]


@lru_cache(maxsize=4096)
def surname_pinyin(surname: str) -> str:
    """Pinyin of a surname using its surname reading (单 shan, 曾 zeng, 尉迟 yuchi)."""
    if surname in SURNAME_READINGS:
        return SURNAME_READINGS[surname]
    return "".join(SURNAME_READINGS.get(c) or latin_key("".join(lazy_pinyin(c))) for c in surname)


@lru_cache(maxsize=65536)
def _readings(given: str) -> tuple[str, ...]:
    """Readings of a given name: the dictionary's when every character has one, else pypinyin's (slower)."""
    readings = [_single_reading(c) for c in given]
    if all(readings):
        return tuple(r for r in readings if r)
    return tuple(lazy_pinyin(given))


@lru_cache(maxsize=65536)
def _single_reading(char: str) -> str | None:
    """Toneless reading of a character whose readings differ only in tone, else None."""
    readings = {latin_key(r) for r in pinyin_dict.get(ord(char), "").split(",") if r}
    return readings.pop() if len(readings) == 1 else None


@lru_cache(maxsize=65536)
def given_pinyin(given: str) -> str:
    """Pinyin of a given name as one lowercase string."""
    return latin_key("".join(_readings(given)))


@lru_cache(maxsize=65536)
def _syllables(given: str) -> tuple[str, ...]:
    """Per-character pinyin of a hanzi given name, to tell IME slips from different names."""
    return tuple(latin_key(p) for p in _readings(given))


@lru_cache(maxsize=1)
def _surname_pinyins() -> tuple[str, ...]:
    """Known surname pinyins, longest first, for splitting run-together typed names like 'zhangsan'."""
    readings = {surname_pinyin(s) for s in _COMMON_SURNAMES} | {surname_pinyin(s) for s in COMPOUND_SURNAMES}
    return tuple(sorted(readings, key=len, reverse=True))


@lru_cache(maxsize=1)
def _pinyin_syllables() -> frozenset[str]:
    """Every toneless pinyin syllable with a vowel, from pypinyin's character readings."""
    readings = {latin_key(r) for r in {r for value in pinyin_dict.values() for r in value.split(",")}}
    return frozenset(r for r in readings if r and set(r) & set("aeiouv"))


@lru_cache(maxsize=65536)
def pinyin_splits(text: str, limit: int = 8) -> tuple[tuple[str, ...], ...]:
    """Ways (up to limit) to read a lowercase Latin key as pinyin syllables: xian is xian or xi'an."""
    if not text:
        return ((),)
    splits: list[tuple[str, ...]] = []
    for size in range(min(6, len(text)), 0, -1):
        if text[:size] in _pinyin_syllables():
            splits.extend((text[:size], *rest) for rest in pinyin_splits(text[size:], limit))
        if len(splits) >= limit:
            break
    return tuple(splits[:limit])


def is_pinyin(text: str) -> bool:
    """Whether a lowercase Latin key splits into pinyin syllables, i.e. could be a typed Chinese name."""
    return bool(text) and bool(pinyin_splits(text))


def split_pinyin_name(name: str) -> tuple[str | None, str | None]:
    """Split a name typed in pinyin ('Zhang San', 'ZHANG, San', 'zhangsan', 'San Zhang') into keys."""
    text = unicodedata.normalize("NFKC", name).strip()
    if "," in text:
        family, _, given = text.partition(",")
        return latin_key(family) or None, latin_key(given) or None
    tokens = [latin_key(t) for t in text.split()]
    tokens = [t for t in tokens if t]
    known = set(_surname_pinyins())
    if len(tokens) >= 2:
        if tokens[0] not in known and tokens[-1] in known:
            return tokens[-1], "".join(tokens[:-1])
        return tokens[0], "".join(tokens[1:])
    if not tokens:
        return None, None
    whole = tokens[0]
    for reading in _surname_pinyins():
        if whole.startswith(reading) and len(whole) > len(reading) + 1:
            return reading, whole[len(reading):]
    return None, whole


def _name_part(text: str | None) -> tuple[str | None, str | None, bool]:
    """Canonical form, pinyin key and hanzi flag for a separately supplied family or given name."""
    canon = canonical_text(text)
    if not canon:
        return None, None, False
    if has_hanzi(canon):
        return canon, None, True
    key = latin_key(canon)
    return (key or None), (key or None), False


@lru_cache(maxsize=65536)
def normalize_name(
    name: str | None, family: str | None = None, given: str | None = None
) -> tuple[str | None, str | None, str | None, str | None, bool]:
    """Return (family, given, family_pinyin, given_pinyin, is_hanzi) from whichever name columns exist."""
    fam, fam_py, fam_hz = _name_part(family)
    giv, giv_py, giv_hz = _name_part(given)
    if fam is None and giv is None and name:
        canon = canonical_text(name)
        if canon and has_hanzi(canon):
            fam, giv = split_dotted_name(name) or split_hanzi_name(canon)
            fam_hz = giv_hz = True
        elif name.strip():
            fam_py, giv_py = split_pinyin_name(name)
            fam, giv = fam_py, giv_py
    if fam_hz and fam:
        fam_py = surname_pinyin(fam)
    if giv_hz and giv:
        giv_py = given_pinyin(giv)
    return fam, giv or None, fam_py or None, giv_py or None, fam_hz or giv_hz


@lru_cache(maxsize=65536)
def parse_address(raw: str | None) -> Address | None:
    """Split a Chinese address into province, city, county, township, village and house number."""
    text = canonical_text(raw)
    if not text:
        return None
    if not has_hanzi(text):
        return _latin_address(raw or "")
    rest = text
    parts: dict[str, str] = {}
    for level, pattern in _ADDRESS_PARTS:
        match = pattern.match(rest)
        if match:
            parts[level] = match.group(1)
            rest = rest[match.end():]
    house = _HOUSE_NUMBER.search(rest)
    house_number = None
    if house:
        house_number = house.group(1) or house.group(3) or str(chinese_number(house.group(2)))
    return Address(
        text=text,
        province=_admin_stem(parts.get("province")),
        city=_admin_stem(parts.get("city")),
        county=_admin_stem(parts.get("county")),
        township=_admin_stem(parts.get("township")),
        village=_admin_stem(parts.get("village")),
        house_number=house_number,
        is_chinese=True,
    )


def chinese_number(text: str) -> int:
    """Value of a number written in Chinese numerals: 五 5, 十二 12, 二十三 23, 一百零五 105, 一二 12."""
    if all(c in _CN_DIGITS for c in text):
        return int("".join(str(_CN_DIGITS[c]) for c in text))
    total = current = 0
    for char in text:
        if char in _CN_DIGITS:
            current = _CN_DIGITS[char]
        else:
            total += (current or 1) * (100 if char == "百" else 10)
            current = 0
    return total + current


def _latin_address(raw: str) -> Address:
    """Latin address as lowercase tokens, with the leading house number and the postcode pulled out."""
    tokens = [latin_key(t) or t.lower() for t in re.split(r"[\s,;]+", raw) if t]
    house = tokens[0] if tokens and tokens[0].isdigit() else None
    codes = [t for t in tokens[1:] if t.isdigit() and 4 <= len(t) <= 6]
    return Address(text=" ".join(tokens), house_number=house, postcode=codes[-1] if codes else None)


def _admin_stem(part: str | None) -> str | None:
    """Drop the administrative suffix so '天河区' and '天河' agree."""
    if not part:
        return None
    stem = _ADMIN_SUFFIX.sub("", part)
    return stem or part


def _clean(value: object) -> str | None:
    """Strip a raw field; treat empty strings and NaN as missing."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def normalize_record(raw: Mapping[str, object]) -> NormalizedRecord:
    """Normalise one registration (IN.csv columns) into a NormalizedRecord; field problems go to issues."""
    get = {k: _clean(v) for k, v in raw.items()}
    rec = NormalizedRecord(rec_id=get.get("rec_id") or "", source=get.get("source"))
    names = normalize_name(get.get("name"), get.get("family_name"), get.get("given_name"))
    fam, giv, fam_py, giv_py, is_hz = names
    rec.family_name, rec.given_name = fam, giv
    rec.family_pinyin, rec.given_pinyin, rec.name_is_hanzi = fam_py, giv_py, is_hz
    if giv and has_hanzi(giv):
        rec.given_syllables = _syllables(giv)
    raw_sex = get.get("sex")
    rec.sex = normalize_sex(raw_sex)
    if raw_sex and not sex_is_known_code(raw_sex):
        rec.issues.append(("sex", f"unknown sex {raw_sex!r} (expected M, F, U, 男 or 女); taken as unknown"))
    raw_birth = get.get("birth_date")
    parsed = parse_date(raw_birth)
    if parsed and parsed.value > dt.date.today():
        rec.issues.append(("birth_date", f"birth date {raw_birth!r} is in the future; ignored"))
    elif parsed:
        rec.birth_date, rec.birth_swappable = parsed.value, parsed.swappable
    elif raw_birth:
        rec.issues.append(("birth_date", f"unparseable date {raw_birth!r}"))
    _apply_id(rec, get.get("id_type"), get.get("id_number"))
    rec.phone = normalize_phone(get.get("phone"))
    if get.get("phone") and rec.phone is None:
        rec.issues.append(("phone", "not a phone number"))
    rec.address = parse_address(get.get("address"))
    return rec


def _apply_id(rec: NormalizedRecord, id_type: str | None, id_number: str | None) -> None:
    """Fill ID fields; a resident ID's birth date and sex become evidence, filling gaps in the record."""
    if not id_number:
        return
    looks_resident = id_type is None and re.fullmatch(r"\s*\d{15}(\d{2}[\dXx])?\s*", id_number)
    if (id_type or "").upper() == RESIDENT_ID_TYPE or looks_resident:
        rid = parse_resident_id(id_number)
        if rid is None:
            return
        rec.id_type, rec.id_number, rec.id_valid = RESIDENT_ID_TYPE, rid.number, rid.valid
        rec.id_birth_date, rec.id_sex = rid.birth_date, rid.sex
        if not rid.valid:
            rec.issues.append(("id_number", "resident ID fails GB 11643 check"))
        elif rec.birth_date is None:
            rec.birth_date = rid.birth_date
        if rid.valid and rec.sex is None:
            rec.sex = rid.sex
        return
    rec.id_type = (id_type or "OTHER").upper()
    rec.id_number = ID_NOISE.sub("", unicodedata.normalize("NFKC", id_number)).upper() or None
