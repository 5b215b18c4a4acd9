"""The normalize pipeline: every data source becomes one clean, deduplicated train/validation split.

Each row goes, source after source in recipe order, curated pairs last (streamed; the first
occurrence of a duplicate wins):

    read (data.readers) → map fields (data.rows) → clean, filter, dedup (data.clean) → kept

then, over the kept rows: split by hash → drop train rows whose instruction is in validation
(data.split) → write `train.jsonl`, `val.jsonl`, `rejects.jsonl` (data.output), `stats.json`
(data.stats) under out_dir.

Decisions, so users and tests can rely on them:
- Mapping: `instruction_field`/`output_field` must hold text; an Alpaca `input_field` that is
  present and non-empty is appended to the instruction after a blank line. Missing, null or
  non-text values, undecodable bytes, invalid JSON, JSON nested deeper than 100 levels, JSON
  Lines lines over 16 MiB and malformed CSV rows are *bad rows*: `on_error = "fail"` raises
  DataError naming file:line (JSON: [index]; Parquet/datasets: row index) and the field; `"skip"`
  writes them to rejects.jsonl. Problems with a whole source (missing or unreadable file, a FIFO,
  device or /proc file, damaged Parquet pages, a tabular file without the column) always raise
  DataError, and an empty source does too under "fail" (a warning under "skip").
- Cleaning: Unicode NFC; CR/LF and Unicode line separators become "\\n"; zero-width and control
  characters go; runs of other whitespace (tabs, NBSP...) become one space; each line is stripped
  (indentation carries no meaning in clauses or audit answers); 3+ newlines become 2.
- Filters drop rows with an empty instruction or output, or one outside the min/max lengths.
- Dedup keys on the (instruction, output) pair, after cleaning. `exact`: identical text;
  `normalized`: also equal after casefolding and folding punctuation and whitespace. The same
  instruction with *different* outputs is kept (counted as `instructions_with_several_outputs`):
  it is not a duplicate pair, and both copies always land on the same side (see split).
- Split: a row's side depends on the row alone, so adding rows never moves existing ones:
  validation when sha256(salt, "row", normalized instruction) < val_fraction, or with
  `split.by = "group"` sha256(salt, "group", group value), which keeps a group whole. Curated rows
  are always split by doc_id, whatever split.by says: pairs from one contract share clause text,
  and a row split would leak it into validation. Rows without a group value fall back to the row
  hash (warned). With tiny data, when a side would be empty, the unit with the lowest (highest)
  hash moves to validation (training), with a warning.
- No validation instruction in training: after the split, a train row whose normalized
  instruction appears in validation is dropped (`in_validation`).
- rejects.jsonl holds every input row that is not in train/val with its reason (bad rows, filtered,
  duplicates, cross-split), so rows read = train + val + rejects. Rows past a source's `limit`
  are not read.
- Output row ids are the first 16 hex digits of sha256(instruction, output): stable across builds.

For timing (bench): `normalize_sources(sources, data, resolve, out_dir, log)` does the whole job
without a StageContext; the stage's `run(ctx)` only collects the sources (adding curated pairs)
and calls it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from legalbuild.data.filters import Deduper, filter_reason
from legalbuild.data.output import JsonlWriter, RejectSink, write_rows
from legalbuild.data.readers import open_source
from legalbuild.data.rows import SKIP_HINT, BadRow, Pair, check_columns, map_record
from legalbuild.data.split import assign_ids, drop_validation_instructions, split_pairs
from legalbuild.data.stats import Report, check_target
from legalbuild.errors import DataError
from legalbuild.files import display_path

if TYPE_CHECKING:
    from legalbuild.recipe import DataSection, DataSource


def normalize_sources(
    sources: list[DataSource],
    data: DataSection,
    resolve: Callable[[str], Path],
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Read, clean, dedup, split and write; returns the headline counts (the stage's metrics)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    with JsonlWriter(out_dir / "rejects.jsonl") as rejects:
        sink = RejectSink(rejects, report, data.on_error)
        dedup = Deduper(data.dedup)
        kept: list[Pair] = []
        for src in sources:
            kept += read_source(src, resolve(src.path), data, dedup, sink, report, log)
        train, val, test = split_pairs(kept, data, report, log)
        train = drop_validation_instructions(train, val + test, sink)
    if not train:
        raise DataError(
            f"no training rows left after cleaning {sum(report.rows_in.values())} rows of "
            f"{', '.join(display_path(resolve(s.path)) for s in sources)} ({report.drop_summary()})",
            hint="check the field names of each source and the [data.filters] lengths",
        )
    assign_ids(train + val + test)
    write_rows(out_dir / "train.jsonl", train)
    write_rows(out_dir / "val.jsonl", val)
    write_rows(out_dir / "test.jsonl", test)
    check_target(len(train), data, report)
    stats = report.stats(train, val, data, test)
    (out_dir / "stats.json").write_text(
        json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for warning in report.warnings:
        log(f"warning: {warning}")
    seconds = time.perf_counter() - started
    total_in = sum(report.rows_in.values())
    log(
        f"{total_in} rows in → {len(train)} train, {len(val)} val, {len(test)} test; {sum(report.drops.values())} dropped "
        f"({report.drop_summary()}) in {seconds:.2f}s"
    )
    return {
        "rows_in": total_in,
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "rejected": sum(report.drops.values()),
        "bad_rows": report.bad_rows,
        "filtered": report.filtered,
        "duplicates": report.drops["duplicate_exact"] + report.drops["duplicate_normalized"],
        "cross_split_removed": report.drops["in_validation"],
        "warnings": len(report.warnings),
        "seconds": round(seconds, 3),
        "rows_per_second": round(total_in / seconds) if seconds > 0 else None,
    }


def read_source(
    src: DataSource,
    path: Path,
    data: DataSection,
    dedup: Deduper,
    sink: RejectSink,
    report: Report,
    log: Callable[[str], None],
) -> list[Pair]:
    """One source's rows that survive mapping, cleaning, filters and dedup, in file order."""
    reader = open_source(path, src.format)
    check_columns(reader.columns, src, path, reader.format)
    kept: list[Pair] = []
    mapped = 0
    for rec in reader.records:
        report.rows_in[src.name] += 1
        try:
            pair = map_record(rec, src)
        except BadRow as bad:
            sink.bad(src.name, rec, bad)
            continue
        mapped += 1
        reason = filter_reason(pair, data.filters)
        duplicate = None if reason else dedup.duplicate_of(pair)
        if reason:
            sink.drop(pair, reason, raw=rec.raw)
        elif duplicate:
            sink.drop(pair, duplicate[0], raw=rec.raw, detail=f"same as {duplicate[1]}")
        else:
            kept.append(pair)
        if src.limit is not None and mapped >= src.limit:
            break
    rows_in = report.rows_in[src.name]
    log(f"source {src.name!r}: {rows_in} rows read from {display_path(path)}, {len(kept)} kept")
    if rows_in == 0:
        if data.on_error == "fail":
            raise DataError(
                f"{display_path(path)}: source {src.name!r} has no rows", hint=SKIP_HINT
            )
        report.warnings.append(f"source {src.name!r} ({display_path(path)}) has no rows")
    elif not kept:
        report.warnings.append(
            f"source {src.name!r}: none of its {rows_in} rows survived (see rejects.jsonl)"
        )
    return kept
