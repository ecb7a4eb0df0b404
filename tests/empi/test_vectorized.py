"""The column-wise comparator must give exactly the levels of the per-pair one."""

import numpy as np

from hie.empi.matching.cluster import candidate_pairs
from hie.empi.matching.comparison import compare
from hie.empi.matching.vectorized import RecordTable, compare_batch
from hie.empi.normalize import normalize_record
from hie.empi.synthetic import generate

LATIN = [
    {"family_name": "white", "given_name": "alexa-rose", "birth_date": "19160822", "id_type": "AU-SOC",
     "id_number": "2502613", "address": "22 warrego circuit burnside bayswater 3040 nt"},
    {"family_name": "alexa-rose", "given_name": "whitbe", "birth_date": "19160228", "id_type": "AU-SOC",
     "id_number": "2502631", "address": "22 warregocircuit burnslde bayswater 3040 nt"},
    {"family_name": "pascoe", "given_name": "william", "birth_date": "19440720", "address": "4 messenger st 4670"},
    {"family_name": "samantha", "given_name": "pascoe", "birth_date": "19440702", "address": "4 messenger street 4670"},
    {"family_name": "smith", "given_name": "john", "birth_date": "1961-02-03", "address": "12 high st sydney"},
    {"name": "Chen Zihan", "birth_date": "2019-06-01", "address": ",,,"},
    {"name": "陈子轩", "birth_date": "2019-06-01", "phone": "13912345678"},
]


def assert_same_levels(records, pairs):
    table = RecordTable.build(records)
    batch = compare_batch(table, pairs[:, 0], pairs[:, 1])
    expected = np.array([compare(records[i], records[j]) for i, j in pairs.tolist()]).reshape(batch.shape)
    assert (batch == expected).all()


def test_batch_equals_pairwise_on_synthetic_candidates_and_random_pairs():
    records = [normalize_record(r) for r in generate(1500, seed=9).rows]
    random_pairs = np.random.default_rng(3).integers(0, len(records), (3000, 2))
    assert_same_levels(records, np.concatenate([candidate_pairs(records), random_pairs]))


def test_batch_equals_pairwise_on_latin_names_swaps_and_addresses():
    records = [normalize_record({"rec_id": str(i), **row}) for i, row in enumerate(LATIN)]
    pairs = np.array([(i, j) for i in range(len(records)) for j in range(len(records))])
    assert_same_levels(records, pairs)


def test_empty_batch():
    records = [normalize_record({"rec_id": "1", "name": "张三"})]
    assert compare_batch(RecordTable.build(records), np.zeros(0), np.zeros(0)).shape == (0, 7)
