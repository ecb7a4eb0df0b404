"""Record-linkage engine of the EMPI: blocking, Fellegi-Sunter scoring with EM weights, clustering."""

from hie.empi.matching.blocking import blocking_keys, soundex
from hie.empi.matching.cluster import ClusterResult, candidate_pairs, cluster
from hie.empi.matching.comparison import FIELD_LEVELS, FIELDS, compare
from hie.empi.matching.model import MODEL_VERSION, FieldWeights, ModelWeights, default_model
from hie.empi.matching.scoring import (
    VETO_DIFFERENT_IDS,
    VETO_GIVEN_NAMES,
    VETO_UNCORROBORATED,
    MatchScore,
    Outcome,
    Thresholds,
    classify,
    resident_id,
    score,
)

__all__ = [
    "FIELDS",
    "FIELD_LEVELS",
    "MODEL_VERSION",
    "VETO_DIFFERENT_IDS",
    "VETO_GIVEN_NAMES",
    "VETO_UNCORROBORATED",
    "ClusterResult",
    "FieldWeights",
    "MatchScore",
    "ModelWeights",
    "Outcome",
    "Thresholds",
    "blocking_keys",
    "candidate_pairs",
    "classify",
    "cluster",
    "compare",
    "default_model",
    "resident_id",
    "score",
    "soundex",
]
