"""Fellegi-Sunter m/u weights: serialisable model and EM estimation from unlabelled pairs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hie.empi.matching.comparison import FIELD_LEVELS, FIELDS
from hie.empi.matching.vectorized import RecordTable, compare_batch
from hie.empi.normalize import NormalizedRecord

log = logging.getLogger(__name__)

MODEL_VERSION = 1
_FLOOR = 1e-6

# Cold-start m/u per level (missing first, ignored) used until EM has seen data.
_DEFAULT_MU: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "family_name": ((1, 0.03, 0.02, 0.03, 0.05, 0.87), (1, 0.90, 0.02, 0.005, 0.005, 0.07)),
    "given_name": ((1, 0.04, 0.03, 0.04, 0.05, 0.84), (1, 0.985, 0.01, 0.003, 0.001, 0.001)),
    "birth_date": ((1, 0.02, 0.03, 0.05, 0.90), (1, 0.985, 0.012, 0.0025, 0.0005)),
    "sex": ((1, 0.02, 0.98), (1, 0.5, 0.5)),
    "id_number": ((1, 0.02, 0.08, 0.90), (1, 0.99998, 0.00001, 0.00001)),
    "phone": ((1, 0.15, 0.05, 0.80), (1, 0.9998, 0.0001, 0.0001)),
    "address": ((1, 0.10, 0.15, 0.25, 0.50), (1, 0.80, 0.15, 0.04, 0.01)),
}


@dataclass(slots=True)
class FieldWeights:
    """m and u probabilities of one field's agreement levels; index 0 (missing) is unused."""

    m: list[float]
    u: list[float]

    def weights(self) -> list[float]:
        """log2(m/u) per level, 0 for missing."""
        pairs = zip(self.m[1:], self.u[1:], strict=True)
        return [0.0] + [math.log2(max(m, _FLOOR) / max(u, _FLOOR)) for m, u in pairs]


@dataclass(slots=True)
class ModelWeights:
    """A trained Fellegi-Sunter model, versioned so stored weights can be told apart."""

    fields: dict[str, FieldWeights]
    prior: float
    version: int = MODEL_VERSION
    trained_on: str | None = None
    _table: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def prior_weight(self) -> float:
        """log2 prior odds that a random pair is the same person."""
        p = min(max(self.prior, 1e-12), 1 - 1e-12)
        return math.log2(p / (1 - p))

    def weight_table(self) -> np.ndarray:
        """Fields x levels matrix of log2(m/u), padded with zeros, for vectorised scoring."""
        if self._table is None:
            width = max(len(levels) for levels in FIELD_LEVELS.values())
            table = np.zeros((len(FIELDS), width))
            for i, name in enumerate(FIELDS):
                row = self.fields[name].weights()
                table[i, : len(row)] = row
            self._table = table
        return self._table

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form with level labels so stored models are self-describing."""
        return {
            "version": self.version,
            "prior": self.prior,
            "trained_on": self.trained_on,
            "fields": {
                name: {"levels": list(FIELD_LEVELS[name]), "m": fw.m, "u": fw.u}
                for name, fw in self.fields.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelWeights:
        """Rebuild a model, refusing versions or level layouts this code does not understand."""
        version = int(data["version"])  # type: ignore[call-overload]
        if version != MODEL_VERSION:
            raise ValueError(f"unsupported EMPI model version {version}")
        fields: dict[str, FieldWeights] = {}
        for name, spec in data["fields"].items():  # type: ignore[attr-defined]
            if tuple(spec["levels"]) != FIELD_LEVELS.get(name):
                raise ValueError(f"level layout of field {name!r} does not match this engine")
            fields[name] = FieldWeights(m=[float(x) for x in spec["m"]], u=[float(x) for x in spec["u"]])
        return cls(fields=fields, prior=float(data["prior"]), version=version,  # type: ignore[arg-type]
                   trained_on=data.get("trained_on"))  # type: ignore[attr-defined]


def default_model() -> ModelWeights:
    """Reasonable weights for scoring before any data has been seen."""
    fields = {name: FieldWeights(list(m), list(u)) for name, (m, u) in _DEFAULT_MU.items()}
    return ModelWeights(fields=fields, prior=1e-5, trained_on="defaults")


def estimate_u(records: Sequence[NormalizedRecord], n_pairs: int = 100_000, seed: int = 7,
               table: RecordTable | None = None) -> list[list[float]]:
    """u probabilities from random pairs, which are almost all different people."""
    n = len(records)
    rng = np.random.default_rng(seed)
    counts = [np.full(len(FIELD_LEVELS[f]), 0.5) for f in FIELDS]
    if n >= 2:
        left, right = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
        keep = left != right
        levels = compare_batch(table or RecordTable.build(records), left[keep], right[keep])
        for f, column in enumerate(levels.T):
            counts[f] += np.bincount(column, minlength=len(counts[f]))
    probs = []
    for c in counts:
        c[0] = 0.0
        probs.append([0.0] + list(c[1:] / c[1:].sum()))
    return probs


def _pattern_counts(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct comparison vectors and how often each occurs, so EM runs on patterns not pairs."""
    base = int(levels.max()) + 1 if len(levels) else 1
    powers = base ** np.arange(levels.shape[1], dtype=np.int64)
    codes, first, counts = np.unique(levels @ powers, return_index=True, return_counts=True)
    return levels[first], counts.astype(float)


def estimate_model(
    levels: np.ndarray,
    u_random: list[list[float]],
    n_records: int,
    max_iter: int = 60,
    tol: float = 1e-6,
) -> ModelWeights:
    """EM over candidate-pair levels for m; u from random pairs; prior rescaled to all pairs."""
    base = default_model()
    if len(levels) == 0:
        base.fields = {f: FieldWeights(base.fields[f].m, u_random[i]) for i, f in enumerate(FIELDS)}
        return base
    patterns, counts = _pattern_counts(levels)
    width = max(len(v) for v in FIELD_LEVELS.values())
    m = np.zeros((len(FIELDS), width))
    u = np.zeros((len(FIELDS), width))
    for i, name in enumerate(FIELDS):
        size = len(FIELD_LEVELS[name])
        m[i, :size] = base.fields[name].m
        u[i, :size] = u_random[i]
        u[i, 1:size] = 0.5 * u[i, 1:size] + 0.5 / (size - 1)
    lam = 0.1
    rows = np.arange(len(FIELDS))
    present = patterns > 0
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        pm = np.where(present, m[rows, patterns], 1.0).prod(axis=1)
        pu = np.where(present, u[rows, patterns], 1.0).prod(axis=1)
        post = lam * pm / (lam * pm + (1 - lam) * pu)
        new_lam = float((post * counts).sum() / counts.sum())
        new_m, new_u = np.zeros_like(m), np.zeros_like(u)
        for i in range(len(FIELDS)):
            np.add.at(new_m[i], patterns[:, i], post * counts)
            np.add.at(new_u[i], patterns[:, i], (1 - post) * counts)
        new_m[:, 0] = new_u[:, 0] = 0.0
        new_m = _normalise_rows(new_m + _mask(0.01))
        new_u = _normalise_rows(new_u + _mask(0.01))
        delta = float(np.abs(new_m - m).max())
        m, u, lam = new_m, new_u, new_lam
        if delta < tol:
            break
    log.info("EM converged after %s iterations, candidate match share %s", iterations, round(lam, 4))
    total_pairs = n_records * (n_records - 1) / 2
    prior = min(lam * len(levels) / max(total_pairs, 1.0), 0.5)
    fields = {
        name: FieldWeights(m=[float(x) for x in m[i, : len(FIELD_LEVELS[name])]],
                           u=_without_matches(u_random[i], m[i, : len(FIELD_LEVELS[name])], prior))
        for i, name in enumerate(FIELDS)
    }
    return ModelWeights(fields=fields, prior=prior, trained_on=f"em:{len(levels)}pairs")


def _without_matches(u_random: list[float], m: np.ndarray, prior: float) -> list[float]:
    """u of non-matches: random pairs are a prior-weighted mix of matches and non-matches, so take the matches out."""
    mixed = np.asarray(u_random, dtype=float)
    u = np.maximum(mixed - prior * m, 0.01 * mixed)
    u[0] = 0.0
    return [float(x) for x in u / u[1:].sum()]


def _mask(value: float) -> np.ndarray:
    """Pseudo-count matrix covering only each field's real, non-missing levels."""
    width = max(len(v) for v in FIELD_LEVELS.values())
    mask = np.zeros((len(FIELDS), width))
    for i, name in enumerate(FIELDS):
        mask[i, 1 : len(FIELD_LEVELS[name])] = value
    return mask


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Make each field's level probabilities sum to one."""
    return matrix / matrix.sum(axis=1, keepdims=True)
