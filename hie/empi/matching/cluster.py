"""Batch deduplication: block, compare, estimate weights by EM, and cluster auto-linked pairs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hie.empi.matching.blocking import blocking_keys
from hie.empi.matching.comparison import FIELD_LEVELS, FIELDS
from hie.empi.matching.model import ModelWeights, default_model, estimate_model, estimate_u
from hie.empi.matching.scoring import Outcome, Thresholds, classify, resident_id, veto_reason
from hie.empi.matching.vectorized import RecordTable, compare_batch
from hie.empi.normalize import NormalizedRecord

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 200
MIN_EM_PAIRS = 500


@dataclass(slots=True)
class ClusterResult:
    """Person index per input record plus the figures a dedupe report needs."""

    person_of: list[int]
    model: ModelWeights
    candidate_pairs: int = 0
    auto_links: int = 0
    reviews: list[tuple[int, int, float]] = field(default_factory=list)
    blocked_merges: int = 0

    @property
    def persons(self) -> int:
        """Number of distinct persons found."""
        return len(set(self.person_of))


def candidate_pairs(records: Sequence[NormalizedRecord], max_block: int = MAX_BLOCK_SIZE) -> np.ndarray:
    """Distinct (i, j) pairs sharing a blocking key; oversized blocks (shared clinic phones) are skipped."""
    key_ids: dict[str, int] = {}
    block_of: list[int] = []
    member: list[int] = []
    for index, rec in enumerate(records):
        for key in blocking_keys(rec):
            block_of.append(key_ids.setdefault(key, len(key_ids)))
            member.append(index)
    n = len(records)
    order = np.argsort(np.asarray(block_of, dtype=np.int64), kind="stable")
    members = np.asarray(member, dtype=np.int64)[order]
    sizes = np.bincount(np.asarray(block_of, dtype=np.int64), minlength=len(key_ids))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if len(sizes) else sizes
    skipped = int((sizes > max_block).sum())
    if skipped:
        log.info("skipped %s blocks larger than %s records", skipped, max_block)
    chunks = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= max_block)]).tolist():
        first = starts[sizes == size]
        left, right = np.triu_indices(size, k=1)
        a, b = members[first[:, None] + left], members[first[:, None] + right]
        chunks.append((np.minimum(a, b) * n + np.maximum(a, b)).ravel())
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(chunks))
    return np.stack([codes // n, codes % n], axis=1)


class _Persons:
    """Union-find over records that refuses merges joining different valid resident IDs."""

    def __init__(self, records: Sequence[NormalizedRecord]) -> None:
        self.parent = list(range(len(records)))
        self.members: dict[int, list[int]] = {i: [i] for i in range(len(records))}
        self.ids: dict[int, set[str]] = {i: {n} if (n := resident_id(r)) else set() for i, r in enumerate(records)}

    def find(self, i: int) -> int:
        """Root of i's person, with path halving."""
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def merge(self, i: int, j: int) -> bool:
        """Join two persons unless that would put conflicting records together."""
        a, b = self.find(i), self.find(j)
        if a == b:
            return True
        if len(self.members[a]) < len(self.members[b]):
            a, b = b, a
        if self.ids[a] and self.ids[b] and self.ids[a] != self.ids[b]:
            return False
        self.parent[b] = a
        self.members[a].extend(self.members.pop(b))
        self.ids[a] |= self.ids.pop(b)
        return True


def compare_pairs(
    records: Sequence[NormalizedRecord], pairs: np.ndarray, table: RecordTable | None = None
) -> np.ndarray:
    """Level matrix (pairs x fields) for candidate pairs, compared column-wise."""
    table = table or RecordTable.build(records)
    return compare_batch(table, pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros((0, len(FIELDS)), np.int64)


def name_frequency_adjustment(
    columns: RecordTable, pairs: np.ndarray, levels: np.ndarray, model: ModelWeights
) -> np.ndarray:
    """Extra log2 weight for exact agreement on a rare name, less for a common one (batch-only, never stored)."""
    adjustment = np.zeros(len(pairs))
    n = max(len(columns.records), 1)
    for name, codes in (("family_name", columns.fam), ("given_name", columns.giv)):
        field_index = FIELDS.index(name)
        exact = FIELD_LEVELS[name].index("exact")
        u_exact = max(model.fields[name].u[exact], 1e-9)
        share = np.bincount(codes) / n
        hit = levels[:, field_index] == exact if len(pairs) else np.zeros(0, dtype=bool)
        adjustment[hit] += np.log2(u_exact / np.maximum(share[codes[pairs[hit, 0]]], 1.0 / n))
    return adjustment


def train_model(records: Sequence[NormalizedRecord], pairs: np.ndarray, levels: np.ndarray,
                table: RecordTable | None = None) -> ModelWeights:
    """Fit m by EM on candidate pairs and u on random pairs."""
    u_random = estimate_u(records, table=table or RecordTable.build(records))
    return estimate_model(levels, u_random, len(records))


def cluster(
    records: Sequence[NormalizedRecord],
    model: ModelWeights | None = None,
    thresholds: Thresholds | None = None,
    max_block: int = MAX_BLOCK_SIZE,
) -> ClusterResult:
    """Group records into persons; without a model, weights (and name frequencies) come from this batch by EM."""
    thresholds = thresholds or Thresholds()
    pairs = candidate_pairs(records, max_block)
    columns = RecordTable.build(records)
    levels = compare_pairs(records, pairs, columns)
    log.info("%s records, %s candidate pairs", len(records), len(pairs))
    learn = model is None and len(pairs) >= MIN_EM_PAIRS
    if model is None:
        model = train_model(records, pairs, levels, columns) if learn else default_model()
    table = model.weight_table()
    weights = model.prior_weight + (
        table[np.arange(table.shape[0]), levels].sum(axis=1) if len(levels) else np.zeros(0)
    )
    if learn:
        weights += name_frequency_adjustment(columns, pairs, levels, model)
    persons = _Persons(records)
    result = ClusterResult(person_of=[], model=model, candidate_pairs=len(pairs))
    linkable = []
    for k in np.argsort(-weights, kind="stable").tolist():
        weight = float(weights[k])
        if weight < thresholds.review:
            break
        i, j = int(pairs[k, 0]), int(pairs[k, 1])
        veto = veto_reason(records[i], records[j], tuple(levels[k].tolist()))
        outcome = classify(weight, thresholds, veto)
        if outcome is Outcome.AUTO_LINK:
            linkable.append((i, j))
        else:
            result.reviews.append((i, j, weight))
    for i, j in linkable:
        if persons.merge(i, j):
            result.auto_links += 1
        else:
            result.blocked_merges += 1
    roots: dict[int, int] = {}
    result.person_of = [roots.setdefault(persons.find(i), len(roots)) for i in range(len(records))]
    return result
