"""Batch deduplication of a registration CSV into rec_id,person_id, reporting bad rows by line."""

from __future__ import annotations

import csv
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hie.empi.matching import ModelWeights, Thresholds, cluster
from hie.empi.normalize import NormalizedRecord, normalize_record

log = logging.getLogger(__name__)
_UNDECODABLE = re.compile("[\udc80-\udcff]")
MAX_FIELD_CHARS = 1000
MAX_CSV_FIELD = 2**31 - 1

INPUT_COLUMNS = (
    "rec_id", "source", "name", "family_name", "given_name", "sex", "birth_date",
    "id_type", "id_number", "phone", "address",
)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A problem found on one CSV line; field is None when the whole row was unusable."""

    line: int
    rec_id: str
    reason: str
    field: str | None = None


@dataclass(slots=True)
class DedupeReport:
    """Counts and problems of one dedupe run, for the CLI to print and the caller to check."""

    rows: int = 0
    matched_rows: int = 0
    persons: int = 0
    linked_records: int = 0
    candidate_pairs: int = 0
    auto_links: int = 0
    review_pairs: list[tuple[str, str, float]] = field(default_factory=list)
    malformed: list[RowProblem] = field(default_factory=list)
    field_issues: list[RowProblem] = field(default_factory=list)
    seconds: float = 0.0
    model: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(slots=True)
class _Row:
    """One input row with where it came from and, if usable, its normalised record."""

    line: int
    rec_id: str
    record: NormalizedRecord | None


class _Lines:
    """Physical lines for csv.reader, with the position of the last line handed out and a way to step back."""

    def __init__(self, lines: list[str]) -> None:
        self.lines, self.pos = lines, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _records(lines: list[str], width: int) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line, fields, fault) per CSV record; a runaway quote is reported and the lines after it re-read."""
    source = _Lines(lines)
    reader = csv.reader(source, strict=True)
    while True:
        start = source.pos + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            values, fault = [], f"bad quoting: {exc}"
            if "unexpected end of data" in str(exc):
                fault = "unterminated quote: the quoted field opened on this line is never closed"
        else:
            if source.pos == start or len(values) == width:
                yield start, values, None
                continue
            fault = f"unterminated quote: the quoted field opened on this line runs on to line {source.pos}"
        partial = next(csv.reader([lines[start - 1]]), [])
        yield start, partial, fault
        source.pos = start
        reader = csv.reader(source, strict=True)


def _read_rows(in_path: Path, report: DedupeReport, encoding: str) -> list[_Row]:
    """Parse the CSV, keeping every data row; structural faults mark a row malformed, not fatal."""
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    with in_path.open(newline="", encoding=encoding, errors="surrogateescape") as handle:
        lines = handle.read().splitlines(keepends=True)
    limit = csv.field_size_limit(MAX_CSV_FIELD)
    try:
        header = [h.strip().lower() for h in next(csv.reader(lines[:1]), [])]
        if "rec_id" not in header:
            raise ValueError(f"{in_path}: header has no rec_id column")
        rec_col = header.index("rec_id")
        for start, values, fault in _records(lines[1:], len(header)):
            start += 1
            if not fault and (not values or all(not v.strip() for v in values)):
                continue
            rec_id = _printable(values[rec_col].strip()[:MAX_FIELD_CHARS]) if rec_col < len(values) else ""
            if rec_id and not fault and rec_id in first_line:
                report.malformed.append(RowProblem(start, rec_id, f"duplicate rec_id (first on line "
                                                                  f"{first_line[rec_id]}); row not written"))
                continue
            reason = fault or _structural_fault(values, header, rec_id)
            if reason:
                report.malformed.append(RowProblem(start, rec_id, reason))
                rows.append(_Row(start, rec_id, None))
                continue
            first_line[rec_id] = start
            raw = {name: value for name, value in zip(header, values, strict=True) if name in INPUT_COLUMNS}
            record = normalize_record(raw)
            for field_name, issue in record.issues:
                report.field_issues.append(RowProblem(start, rec_id, issue, field_name))
            rows.append(_Row(start, rec_id, record))
    finally:
        csv.field_size_limit(limit)
    return rows


def _structural_fault(values: list[str], header: list[str], rec_id: str) -> str | None:
    """Why a row cannot be matched at all, or None."""
    if len(values) != len(header):
        return f"expected {len(header)} fields, got {len(values)}"
    if _UNDECODABLE.search("".join(values)):
        return "not valid UTF-8"
    if not rec_id:
        return "missing rec_id"
    longest = max(range(len(values)), key=lambda k: len(values[k]))
    if len(values[longest]) > MAX_FIELD_CHARS:
        return f"field {header[longest]} is {len(values[longest])} characters long (at most {MAX_FIELD_CHARS})"
    return None


def _printable(text: str) -> str:
    """Replace undecodable bytes so a rec_id can be written back out."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def dedupe_csv(
    in_path: str | Path,
    out_path: str | Path,
    model: ModelWeights | None = None,
    thresholds: Thresholds | None = None,
    encoding: str = "utf-8-sig",
) -> DedupeReport:
    """Assign a person_id to every row of IN.csv; without a model the weights are learnt by EM."""
    started = time.perf_counter()
    report = DedupeReport()
    # Opened first, so an unwritable output fails before minutes of matching, not after.
    with Path(out_path).open("w", newline="", encoding="utf-8") as handle:
        rows = _read_rows(Path(in_path), report, encoding)
        usable = [row for row in rows if row.record is not None]
        records = [row.record for row in usable if row.record is not None]
        result = cluster(records, model=model, thresholds=thresholds)
        person_of_row = {id(row): person for row, person in zip(usable, result.person_of, strict=True)}
        labels: dict[tuple[str, int], str] = {}
        sizes: dict[str, int] = {}
        writer = csv.writer(handle)
        writer.writerow(["rec_id", "person_id"])
        for row in rows:
            group = ("m", person_of_row[id(row)]) if id(row) in person_of_row else ("x", row.line)
            person_id = labels.setdefault(group, f"P{len(labels) + 1:07d}")
            sizes[person_id] = sizes.get(person_id, 0) + 1
            writer.writerow([row.rec_id, person_id])
    report.rows = len(rows)
    report.matched_rows = len(records)
    report.persons = len(labels)
    report.linked_records = sum(size for size in sizes.values() if size > 1)
    report.candidate_pairs = result.candidate_pairs
    report.auto_links = result.auto_links
    report.review_pairs = [(records[i].rec_id, records[j].rec_id, round(w, 3)) for i, j, w in result.reviews]
    report.model = result.model.to_dict()
    report.seconds = time.perf_counter() - started
    log.info(
        "dedupe %s: %s rows, %s persons, %s malformed", in_path, report.rows, report.persons, len(report.malformed)
    )
    return report
