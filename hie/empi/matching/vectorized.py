"""Column-wise pair comparison: the levels of comparison.compare for many pairs at once, for batch dedupe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA, JaroWinkler

from hie.empi.matching.comparison import FIELDS, NEAR_BIRTH_DAYS, typed_given_level
from hie.empi.normalize import NormalizedRecord

CHUNK_PAIRS = 50_000
_ADDRESS_PARTS = ("province", "city", "county", "township", "village", "house_number")


class _Codes:
    """Interns strings as small integers so equality tests become array comparisons; 0 means missing."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, values: Sequence[str | None]) -> np.ndarray:
        """Codes of the values, sharing one numbering across every column interned here."""
        ids = self.ids
        return np.fromiter((ids.setdefault(v, len(ids) + 1) if v else 0 for v in values), np.int64, len(values))


def _dates(records: Sequence[NormalizedRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Up to two birth dates per record as ordinals (0 = none) and as their eight YYYYMMDD digits."""
    ordinals = np.zeros((len(records), 2), dtype=np.int64)
    ymd = np.zeros((len(records), 2), dtype=np.int64)
    for i, rec in enumerate(records):
        for k, day in enumerate(rec.birth_dates[:2]):
            ordinals[i, k] = day.toordinal()
            ymd[i, k] = day.year * 10000 + day.month * 100 + day.day
    powers = 10 ** np.arange(7, -1, -1, dtype=np.int64)
    digits = (ymd[:, :, None] // powers) % 10
    return ordinals, digits.astype(np.int8)


@dataclass(slots=True)
class RecordTable:
    """The fields comparison needs, one array per attribute, built once per batch."""

    records: Sequence[NormalizedRecord]
    fam: np.ndarray
    giv: np.ndarray
    fam_py: np.ndarray
    giv_py: np.ndarray
    full: np.ndarray
    hanzi: np.ndarray
    syllables: np.ndarray
    dates: np.ndarray
    digits: np.ndarray
    sex: np.ndarray
    id_type: np.ndarray
    id_code: np.ndarray
    id_valid: np.ndarray
    phone: np.ndarray
    phone8: np.ndarray
    addr: np.ndarray
    addr_cn: np.ndarray
    addr_parts: np.ndarray
    postcode: np.ndarray
    text: dict[str, np.ndarray]

    @classmethod
    def build(cls, records: Sequence[NormalizedRecord]) -> RecordTable:
        """Intern every compared value of the records."""
        names, other = _Codes(), _Codes()
        addresses = [r.address for r in records]
        dates, digits = _dates(records)
        sex_bits = {"M": 1, "F": 2}
        phones = [r.phone for r in records]
        return cls(
            records=records,
            fam=names([r.family_name for r in records]),
            giv=names([r.given_name for r in records]),
            fam_py=names([r.family_pinyin for r in records]),
            giv_py=names([r.given_pinyin for r in records]),
            full=names([r.full_pinyin for r in records]),
            hanzi=np.fromiter((r.name_is_hanzi for r in records), bool, len(records)),
            syllables=np.fromiter((len(r.given_syllables) for r in records), np.int64, len(records)),
            dates=dates,
            digits=digits,
            sex=np.fromiter((sex_bits.get(r.sex or "", 0) | sex_bits.get(r.id_sex or "", 0) for r in records),
                            np.int64, len(records)),
            id_type=other([r.id_type if r.id_number else None for r in records]),
            id_code=other([r.id_number for r in records]),
            id_valid=np.fromiter((r.id_valid for r in records), bool, len(records)),
            phone=other(phones),
            phone8=other([p[-8:] if p and len(p) >= 8 else None for p in phones]),
            addr=other([f"@{a.text}" if a else None for a in addresses]),
            addr_cn=np.fromiter((bool(a and a.is_chinese) for a in addresses), bool, len(records)),
            addr_parts=np.stack([other([getattr(a, p) if a else None for a in addresses]) for p in _ADDRESS_PARTS],
                                axis=1) if records else np.zeros((0, len(_ADDRESS_PARTS)), np.int64),
            postcode=other([a.postcode if a else None for a in addresses]),
            text={
                "family": _objects([r.family_pinyin for r in records]),
                "given": _objects([r.given_pinyin for r in records]),
                "id": _objects([r.id_number for r in records]),
                "phone": _objects(phones),
                "sorted_address": _objects([" ".join(sorted(a.text.split())) if a else None for a in addresses]),
                "bare_address": _objects([a.text.replace(" ", "") if a else None for a in addresses]),
            },
        )


def _objects(values: list[str | None]) -> np.ndarray:
    """Strings as an object array (missing as empty) so pair subsets are gathered by fancy indexing."""
    out = np.empty(len(values), dtype=object)
    out[:] = [v or "" for v in values]
    return out


def _similarity(t: RecordTable, left: np.ndarray, right: np.ndarray, col_a: str, col_b: str,
                scorer: Callable, cutoff: float) -> np.ndarray:
    """Scorer over aligned pairs of string columns in C; scores beyond the lowest band edge are not refined."""
    if len(left) == 0:
        return np.zeros(0)
    return process.cpdist(t.text[col_a][left].tolist(), t.text[col_b][right].tolist(), scorer=scorer,
                          score_cutoff=cutoff, dtype=np.float64, workers=-1)


def _name_levels(t: RecordTable, a: np.ndarray, b: np.ndarray, canon: np.ndarray, py: np.ndarray,
                 col: str) -> np.ndarray:
    """Exact canonical, same pinyin, or Jaro-Winkler bands, as comparison._name_level."""
    level = np.zeros(len(a), dtype=np.int64)
    present = (py[a] > 0) & (py[b] > 0)
    level[present] = 1
    fuzzy = present & (py[a] != py[b])
    sim = _similarity(t, a[fuzzy], b[fuzzy], col, col, JaroWinkler.normalized_similarity, 0.79)
    level[fuzzy] = np.where(sim >= 0.92, 3, np.where(sim >= 0.80, 2, 1))
    level[present & (py[a] == py[b])] = 4
    level[present & (canon[a] > 0) & (canon[a] == canon[b])] = 5
    return level


def _compare_names(t: RecordTable, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Family and given levels with the swap and run-together rules of comparison.compare_names."""
    fam = _name_levels(t, a, b, t.fam, t.fam_py, "family")
    giv = _name_levels(t, a, b, t.giv, t.giv_py, "given")
    giv[(t.syllables[a] > 0) & (t.syllables[b] > 0) & (giv < 4)] = 1
    recs = t.records
    typed = ~((t.syllables[a] > 0) & (t.syllables[b] > 0)) & ((giv == 2) | (giv == 3))
    for k in np.flatnonzero(typed).tolist():
        giv[k] = typed_given_level(recs[a[k]], recs[b[k]], int(giv[k]))
    both_exact = (fam == 5) & (giv == 5)
    full = ~both_exact & (t.full[a] > 0) & (t.full[a] == t.full[b]) & ((fam < 4) | (giv < 4))
    rest = ~both_exact & ~full & (t.fam_py[a] > 0) & (t.giv_py[a] > 0) & (t.fam_py[b] > 0) & (t.giv_py[b] > 0)
    rest &= (fam < 3) | (giv < 3)
    swap = rest & (t.fam_py[a] == t.giv_py[b]) & (t.giv_py[a] == t.fam_py[b])
    cross = rest & ~swap
    ca, cb = a[cross], b[cross]
    s1 = _similarity(t, ca, cb, "family", "given", JaroWinkler.normalized_similarity, 0.79)
    s2 = _similarity(t, ca, cb, "given", "family", JaroWinkler.normalized_similarity, 0.79)
    low, high = np.minimum(s1, s2), np.maximum(s1, s2)
    close = np.zeros(len(a), dtype=bool)
    close[cross] = (low >= 0.92) | ((low >= 0.8) & (high == 1.0))
    moved = np.zeros(len(a), dtype=bool)
    moved[cross] = (high >= 0.92) & ~(t.hanzi[ca] | t.hanzi[cb])
    moved &= ~close & (fam < 3)
    moved_exact = np.zeros(len(a), dtype=bool)
    moved_exact[cross] = high == 1.0
    fam, giv = fam.copy(), giv.copy()
    fam[full | swap], giv[full | swap] = 4, 4
    fam[close], giv[close] = 3, 3
    fam[moved] = np.where(moved_exact[moved], 4, 3)
    return fam, giv


def _date_pair_level(t: RecordTable, a: np.ndarray, b: np.ndarray, i: int, j: int) -> np.ndarray:
    """Level of date i of record a against date j of record b, 0 where either is absent."""
    x, y = t.dates[a, i], t.dates[b, j]
    dx, dy = t.digits[a, i].astype(np.int64), t.digits[b, j].astype(np.int64)
    differ = dx != dy
    hamming = differ.sum(axis=1)
    adjacent = (differ[:, :-1] & differ[:, 1:] & (dx[:, :-1] == dy[:, 1:]) & (dx[:, 1:] == dy[:, :-1])).any(axis=1)
    month_x, day_x = dx[:, 4] * 10 + dx[:, 5], dx[:, 6] * 10 + dx[:, 7]
    month_y, day_y = dy[:, 4] * 10 + dy[:, 5], dy[:, 6] * 10 + dy[:, 7]
    swapped = (differ[:, :4].sum(axis=1) == 0) & (month_x == day_y) & (day_x == month_y)
    level = np.where(np.abs(x - y) <= NEAR_BIRTH_DAYS, 2, 1)
    level = np.where(swapped | (hamming <= 1) | ((hamming == 2) & adjacent), 3, level)
    level = np.where(x == y, 4, level)
    return np.where((x > 0) & (y > 0), level, 0)


def _compare_dates(t: RecordTable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best level over stated and ID-encoded birth dates."""
    return np.max([_date_pair_level(t, a, b, i, j) for i in (0, 1) for j in (0, 1)], axis=0)


def _compare_ids_and_phones(t: RecordTable, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identifier and phone levels as comparison.compare_ids and compare_phones."""
    ids = np.where((t.id_type[a] > 0) & (t.id_type[a] == t.id_type[b]), 1, 0)
    fuzzy = (ids == 1) & (t.id_code[a] != t.id_code[b]) & ~(t.id_valid[a] & t.id_valid[b])
    near = _similarity(t, a[fuzzy], b[fuzzy], "id", "id", OSA.distance, 1)
    ids[np.flatnonzero(fuzzy)[near <= 1]] = 2
    ids[(ids == 1) & (t.id_code[a] == t.id_code[b])] = 3
    phones = np.where((t.phone[a] > 0) & (t.phone[b] > 0), 1, 0)
    fuzzy = (phones == 1) & (t.phone[a] != t.phone[b])
    near = _similarity(t, a[fuzzy], b[fuzzy], "phone", "phone", OSA.distance, 1)
    phones[np.flatnonzero(fuzzy)[near <= 1]] = 2
    phones[(phones == 1) & (t.phone8[a] > 0) & (t.phone8[a] == t.phone8[b])] = 2
    phones[(phones > 0) & (t.phone[a] == t.phone[b])] = 3
    return ids, phones


def _chinese_addresses(t: RecordTable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structured Chinese address levels as comparison._chinese_address_level."""
    pa, pb = t.addr_parts[a], t.addr_parts[b]
    both = (pa > 0) & (pb > 0)
    same = both & (pa == pb)
    admin_conflict = (both[:, :3] & ~same[:, :3]).any(axis=1)
    common = both[:, 3:].sum(axis=1)
    conflicts = common - same[:, 3:].sum(axis=1)
    township_same, village_same, county_same = same[:, 3], same[:, 4], same[:, 2]
    level = np.ones(len(a), dtype=np.int64)
    unknown = (common == 0) & ~both[:, 2]
    recs = t.records
    for k in np.flatnonzero(unknown).tolist():
        x, y = recs[a[k]].address.text, recs[b[k]].address.text  # type: ignore[union-attr]
        level[k] = 2 if x in y or y in x else 1
    level[township_same | county_same] = 2
    level[village_same | (township_same & (conflicts <= 1))] = 3
    level[(common > 0) & (conflicts == 0) & (both[:, 4] | both[:, 5])] = 4
    level[admin_conflict] = 1
    return level


def _compare_addresses(t: RecordTable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Address levels as comparison.compare_addresses."""
    level = np.zeros(len(a), dtype=np.int64)
    present = (t.addr[a] > 0) & (t.addr[b] > 0)
    differ = present & (t.addr[a] != t.addr[b])
    chinese = differ & t.addr_cn[a] & t.addr_cn[b]
    level[chinese] = _chinese_addresses(t, a[chinese], b[chinese])
    latin = differ & ~chinese
    la, lb = a[latin], b[latin]
    sim = np.maximum(_similarity(t, la, lb, "sorted_address", "sorted_address", fuzz.ratio, 59),
                     _similarity(t, la, lb, "bare_address", "bare_address", fuzz.ratio, 59)) / 100.0
    same_place = (t.postcode[la] > 0) & (t.postcode[la] == t.postcode[lb])
    same_place &= t.addr_parts[la, 5] == t.addr_parts[lb, 5]
    level[latin] = np.where((sim >= 0.85) | ((sim >= 0.6) & same_place), 3, np.where(sim >= 0.6, 2, 1))
    level[present & ~differ] = 4
    return level


def compare_batch(table: RecordTable, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Level matrix (pairs x fields) equal row for row to comparison.compare on each pair."""
    a, b = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    if len(a) > CHUNK_PAIRS:
        return np.concatenate([_compare_chunk(table, a[k : k + CHUNK_PAIRS], b[k : k + CHUNK_PAIRS])
                               for k in range(0, len(a), CHUNK_PAIRS)])
    return _compare_chunk(table, a, b)


def _compare_chunk(table: RecordTable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """compare_batch on a slice small enough that the temporary columns stay a few megabytes."""
    fam, giv = _compare_names(table, a, b)
    sex_a, sex_b = table.sex[a], table.sex[b]
    sex = np.where((sex_a > 0) & (sex_b > 0), np.where(sex_a & sex_b, 2, 1), 0)
    ids, phones = _compare_ids_and_phones(table, a, b)
    columns = (fam, giv, _compare_dates(table, a, b), sex, ids, phones, _compare_addresses(table, a, b))
    return np.stack(columns, axis=1).astype(np.int64).reshape(len(a), len(FIELDS))
