"""Seeded generator of realistic Chinese registrations with ground truth, for tests and benchmarks."""

from __future__ import annotations

import csv
import datetime as dt
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import opencc
from pypinyin import lazy_pinyin

from hie.empi.normalize import split_hanzi_name, surname_pinyin
from hie.platform.standards import check_digit

FIELDNAMES = ("rec_id", "source", "name", "sex", "birth_date", "id_type", "id_number", "phone", "address")
ERROR_KINDS = (
    "pinyin_name", "id_typo", "id_15_digit", "id_missing", "phone_format", "phone_missing", "lunar_birth",
    "swapped_birth", "short_address", "traditional", "full_width",
)
_SURNAMES = (
    ("王", 90), ("李", 88), ("张", 85), ("刘", 66), ("陈", 62), ("杨", 45), ("黄", 32), ("赵", 29),
    ("吴", 27), ("周", 26), ("徐", 21), ("孙", 20), ("马", 18), ("朱", 17), ("胡", 16), ("郭", 15),
    ("何", 14), ("林", 13), ("罗", 12), ("高", 12), ("郑", 11), ("梁", 10), ("谢", 9), ("宋", 8),
    ("曾", 6), ("单", 2), ("解", 2), ("仇", 1), ("区", 1), ("查", 1), ("乐", 1), ("覃", 2), ("翟", 1),
    ("欧阳", 1), ("尉迟", 1), ("万俟", 1), ("单于", 1), ("诸葛", 1), ("任", 5), ("盖", 1), ("朴", 1),
)
_GIVEN_CHARS = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文辉鑫宇浩然子涵轩梓萱欣怡诗雨"
    "晨博俊嘉思佳志鹏海燕春梅小龙凤琳婷雪峰亮波斌宏飞云晓东立新成荣德福庆祥瑞安宁家豪天佑一诺"
)
_COMMON_NAMES = ("张伟", "王伟", "王芳", "李伟", "李娜", "张敏", "李静", "王静", "刘伟", "王秀英")
_PROVINCES = (("广东省", ("广州市", "韶关市")), ("浙江省", ("杭州市", "温州市")), ("四川省", ("成都市", "绵阳市")),
              ("河南省", ("郑州市", "洛阳市")))
_PLACE_CHARS = "东西南北中新龙凤金石桥河湖山田青松柳桃溪江塘岭坪口沙"
_TOWN_SUFFIX = ("街道", "镇", "乡")
_VILLAGE_SUFFIX = ("村", "社区")
_SOURCES = tuple(f"H{i:02d}" for i in range(1, 13))


@dataclass(slots=True)
class Person:
    """Ground-truth identity a registration is derived from."""

    key: int
    name: str
    sex: str
    birth: dt.date
    id_number: str | None
    phone: str | None
    address: tuple[str, str, str, str, str, str]
    kind: str = "person"


@dataclass(slots=True)
class SyntheticSet:
    """Registrations in IN.csv shape plus the person each came from."""

    rows: list[dict[str, str]] = field(default_factory=list)
    truth: dict[str, int] = field(default_factory=dict)
    persons: list[Person] = field(default_factory=list)

    def write_csv(self, path: str | Path) -> None:
        """Write the registrations as IN.csv."""
        with Path(path).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDNAMES)
            writer.writeheader()
            writer.writerows(self.rows)


@lru_cache(maxsize=1)
def _s2t() -> opencc.OpenCC:
    """Simplified-to-traditional converter for clinics that register in traditional characters."""
    return opencc.OpenCC("s2t")


class _Generator:
    """Builds households, hard negatives and noisy registrations from one seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.serial = 0
        self.persons: list[Person] = []
        self.counties = self._gazetteer()
        self.surnames = [s for s, _ in _SURNAMES]
        self.surname_weights = [w for _, w in _SURNAMES]

    def _place(self, suffix: str) -> str:
        """A made-up place name with an administrative suffix."""
        return "".join(self.rng.sample(_PLACE_CHARS, 2)) + suffix

    def _gazetteer(self) -> list[tuple[str, str, str, str, list[str]]]:
        """Counties with their region code and townships, drawn once per seed."""
        counties = []
        for p_index, (province, cities) in enumerate(_PROVINCES):
            for c_index, city in enumerate(cities):
                for k in range(4):
                    code = f"{41 + p_index:02d}{c_index + 1:02d}{k + 1:02d}"
                    towns = [self._place(self.rng.choice(_TOWN_SUFFIX)) for _ in range(5)]
                    counties.append((code, province, city, self._place("区" if k < 2 else "县"), towns))
        return counties

    def _address(self, county: tuple[str, str, str, str, list[str]] | None = None) -> tuple[str, ...]:
        """Province, city, county, township, village and house number; county code kept for IDs."""
        code, province, city, county_name, towns = county or self.rng.choice(self.counties)
        village = self._place(self.rng.choice(_VILLAGE_SUFFIX))
        return (code, province, city, county_name, self.rng.choice(towns), f"{village}{self.rng.randint(1, 300)}号")

    def _given(self) -> str:
        """One- or two-character given name."""
        size = 1 if self.rng.random() < 0.25 else 2
        return "".join(self.rng.choice(_GIVEN_CHARS) for _ in range(size))

    def _birth(self, low: int, high: int) -> dt.date:
        """Birth date for someone aged low..high in 2024."""
        start = dt.date(2024 - high, 1, 1).toordinal()
        end = dt.date(2024 - low, 12, 31).toordinal()
        return dt.date.fromordinal(self.rng.randint(start, end))

    def _id(self, code: str, birth: dt.date, sex: str, age: int) -> str | None:
        """A valid resident ID, or None for the children and elderly who often lack one."""
        if (age < 16 and self.rng.random() < 0.6) or (age > 75 and self.rng.random() < 0.4):
            return None
        seq = self.rng.randint(0, 99) * 10 + self.rng.choice((1, 3, 5, 7, 9) if sex == "M" else (0, 2, 4, 6, 8))
        body = f"{code}{birth:%Y%m%d}{seq:03d}"
        return body + check_digit(body)

    def _phone(self) -> str:
        """A mobile number."""
        return "1" + self.rng.choice("3456789") + "".join(self.rng.choice("0123456789") for _ in range(9))

    def _person(self, name: str, sex: str, birth: dt.date, phone: str | None, address: tuple[str, ...],
                kind: str = "person") -> Person:
        """Register a ground-truth person."""
        age = 2024 - birth.year
        person = Person(len(self.persons), name, sex, birth, self._id(address[0], birth, sex, age), phone,
                        address, kind)  # type: ignore[arg-type]
        self.persons.append(person)
        return person

    def household(self) -> None:
        """A family sharing surname, address and often one phone; sometimes with twins."""
        rng = self.rng
        surname = rng.choices(self.surnames, self.surname_weights)[0]
        address = self._address()
        phone = self._phone()
        parent = self._person(surname + self._given(), "M", self._birth(28, 60), phone, address)
        self._person(rng.choices(self.surnames, self.surname_weights)[0] + self._given(), "F",
                     self._birth(26, 58), phone if rng.random() < 0.5 else self._phone(), address)
        if rng.random() < 0.3:
            self._person(surname + self._given(), rng.choice("MF"), self._birth(70, 92),
                         phone if rng.random() < 0.7 else None, address)
        for _ in range(rng.choice((0, 1, 1, 2))):
            child_birth = self._birth(0, min(20, 2024 - parent.birth.year - 20))
            self._person(surname + self._given(), rng.choice("MF"), child_birth, phone, address)
        if rng.random() < 0.08:
            self.twins(surname, address, phone, self._birth(0, 15))

    def _sibling_given(self, first: str) -> str:
        """A twin's given name: often sharing a character with the other's (子涵/子轩), never a homophone."""
        while True:
            if len(first) == 2 and self.rng.random() < 0.6:
                keep = self.rng.randrange(2)
                other = self.rng.choice(_GIVEN_CHARS)
                second = first[0] + other if keep == 0 else other + first[1]
            else:
                second = self._given()
            if lazy_pinyin(second) != lazy_pinyin(first):
                return second

    def twins(self, surname: str, address: tuple[str, ...], phone: str, birth: dt.date) -> None:
        """Two children sharing everything but given name and ID: must never be linked."""
        first = self._given()
        for given in (first, self._sibling_given(first)):
            self._person(surname + given, self.rng.choice("MF"), birth, phone, address, kind="twin")

    def namesake(self) -> None:
        """Two people with a common name in one county, often of the same sex and birth date: never linked."""
        name = self.rng.choice(_COMMON_NAMES)
        county = self.rng.choice(self.counties)
        same_day = self.rng.random() < 0.5
        sex, birth = self.rng.choice("MF"), self._birth(20, 70)
        for _ in range(2):
            if not same_day:
                sex, birth = self.rng.choice("MF"), self._birth(20, 70)
            self._person(name, sex, birth, self._phone(), self._address(county), kind="namesake")

    def registrations(self, person: Person, copies: int, out: SyntheticSet) -> None:
        """Emit a clean registration and noisy copies from other sources."""
        for copy in range(copies):
            errors = set() if copy == 0 else {k for k in ERROR_KINDS if self.rng.random() < _ERROR_RATE[k]}
            rec_id = f"R{len(out.rows) + 1:07d}"
            out.rows.append(self._render(person, rec_id, errors))
            out.truth[rec_id] = person.key

    def _render(self, p: Person, rec_id: str, errors: set[str]) -> dict[str, str]:
        """Write one registration of a person the way some clinic would, with the chosen errors."""
        rng = self.rng
        name = p.name
        if "pinyin_name" in errors:
            family, given = split_hanzi_name(name)
            fam_py, giv_py = surname_pinyin(family), "".join(lazy_pinyin(given)).replace("ü", "v")
            name = rng.choice((f"{fam_py.title()} {giv_py.title()}", f"{fam_py.upper()}, {giv_py.title()}",
                               f"{fam_py}{giv_py}", f"{giv_py.title()} {fam_py.title()}"))
        birth = p.birth
        if "lunar_birth" in errors:
            birth = birth - dt.timedelta(days=rng.randint(20, 50))
        if "swapped_birth" in errors and birth.day <= 12:
            birth = dt.date(birth.year, birth.day, birth.month)
        birth_text = birth.strftime(rng.choice(("%Y-%m-%d", "%Y%m%d", "%Y/%-m/%-d", "%Y年%-m月%-d日")))
        id_number = p.id_number or ""
        if "id_missing" in errors:
            id_number = ""
        elif id_number and "id_typo" in errors:
            pos = rng.randrange(17)
            id_number = id_number[:pos] + str((int(id_number[pos]) + rng.randint(1, 9)) % 10) + id_number[pos + 1:]
        elif id_number and "id_15_digit" in errors and p.birth.year < 2000:
            id_number = id_number[:6] + id_number[8:17]
        phone = p.phone or ""
        if "phone_missing" in errors:
            phone = ""
        elif phone and "phone_format" in errors:
            phone = rng.choice((f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}", f"{phone[:3]}-{phone[3:7]}-{phone[7:]}",
                                f"0086{phone}"))
        _, province, city, county, town, village = p.address
        parts = [province, city, county, town, village]
        if "short_address" in errors:
            parts = parts[rng.choice((2, 3)):]
        address = "".join(parts)
        if "traditional" in errors:
            name, address = _s2t().convert(name), _s2t().convert(address)
        if "full_width" in errors:
            phone, id_number = _full_width(phone), _full_width(id_number)
            name = _full_width(name) if name.isascii() else name
        sex = p.sex if rng.random() < 0.9 else rng.choice(("男" if p.sex == "M" else "女", ""))
        return {
            "rec_id": rec_id, "source": rng.choice(_SOURCES), "name": name, "sex": sex, "birth_date": birth_text,
            "id_type": "CN-RIC" if id_number else "", "id_number": id_number, "phone": phone, "address": address,
        }


_ERROR_RATE = {
    "pinyin_name": 0.15, "id_typo": 0.08, "id_15_digit": 0.08, "id_missing": 0.15, "phone_format": 0.3,
    "phone_missing": 0.1, "lunar_birth": 0.06, "swapped_birth": 0.06, "short_address": 0.35,
    "traditional": 0.08, "full_width": 0.08,
}


def _full_width(text: str) -> str:
    """Full-width form of ASCII characters, as some input methods produce."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def generate(n_records: int = 20_000, seed: int = 2024, dup_rate: float = 0.5) -> SyntheticSet:
    """Registrations of households, twins and namesakes; about dup_rate extra copies per person."""
    gen = _Generator(seed)
    while len(gen.persons) * (1 + dup_rate) < n_records:
        gen.household()
        if gen.rng.random() < 0.05:
            gen.namesake()
    out = SyntheticSet(persons=gen.persons)
    for person in gen.persons:
        extra = 0
        while gen.rng.random() < dup_rate / (1 + dup_rate) and extra < 4:
            extra += 1
        gen.registrations(person, 1 + extra, out)
        if len(out.rows) >= n_records:
            break
    return out
