"""The normalize stage: every data source becomes one clean, deduplicated train/validation split.

Each row goes, source after source in recipe order, curated pairs last (streamed; the first
occurrence of a duplicate wins):

    read (legalbuild.data_io) → map fields → clean text → length filters → dedup → kept

then, over the kept rows: split by hash → drop train rows whose instruction is in validation →
write `train.jsonl`, `val.jsonl`, `rejects.jsonl`, `stats.json` under ctx.out_dir.

Decisions, so users and tests can rely on them:
- Mapping: `instruction_field`/`output_field` must hold text; an Alpaca `input_field` that is
  present and non-empty is appended to the instruction after a blank line. Missing, null or
  non-text values, undecodable bytes, invalid JSON and malformed CSV rows are *bad rows*:
  `on_error = "fail"` raises DataError naming file:line (JSON: [index]; Parquet/datasets: row
  index) and the field; `"skip"` writes them to rejects.jsonl. Problems with a whole source
  (missing or unreadable file, a tabular file without the column) always raise DataError, and an
  empty source does too under "fail" (a warning under "skip").
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
without a StageContext; `run(ctx)` only collects the sources (adding curated pairs) and calls it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.data_io import Record, display_path, has_bad_unicode, open_source, source_files
from legalbuild.errors import DataError
from legalbuild.keys import file_set

if TYPE_CHECKING:
    from legalbuild.recipe import DataSection, DataSource, FilterSettings, Recipe
    from legalbuild.stages.context import StageContext

DEPENDS_ON = ("curate",)

CURATED_SOURCE = "curated"
CURATED_GROUP_FIELD = "doc_id"
# `clause` is the clause text inside the instruction, kept for eval (the curate stage writes it)
CURATED_META_FIELDS = [
    "rule_id",
    "severity",
    "clause_type",
    "task",
    "verified_by",
    "source",
    "clause",
]
SKIP_HINT = (
    'fix the data, or set data.on_error = "skip" to write bad rows to rejects.jsonl and go on'
)


# ------------------------------------------------------------------------------------- entry points
def run(ctx: StageContext) -> dict:
    """The stage: user sources, then the curated pairs when the curate stage ran."""
    sources = stage_sources(ctx.recipe, ctx.inputs)
    return normalize_sources(sources, ctx.recipe.data, ctx.resolve, ctx.out_dir, ctx.log)


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    """The data settings and, per source, the files it reads (where they lie is not hashed)."""
    from legalbuild.recipe import key_settings

    settings = key_settings(recipe.data)
    settings.pop("system_prompt")  # read by train/merge/eval, not by normalize
    sources = []
    for src, src_settings in zip(recipe.data.sources, settings.pop("sources"), strict=True):
        src_settings.pop("path")
        path = source_path(src, Path(recipe_path).parent)
        files = source_input_files(src, Path(recipe_path).parent)
        src_settings["data"] = file_set(files, root=path if path.is_dir() else path.parent)
        sources.append(src_settings)
    return {"settings": settings, "sources": sources}


def normalize_input_files(recipe: Recipe, recipe_path: Path) -> list[Path]:
    """Every file whose bytes the output depends on (for the cache key); cheap, reads nothing.

    Missing paths are left out: the stage itself then reports them as a DataError. The curated
    pairs are not listed: they enter the key through the curate stage's key."""
    base = Path(recipe_path).parent
    return sorted({f for src in recipe.data.sources for f in source_input_files(src, base)})


def source_input_files(src: DataSource, recipe_dir: Path) -> list[Path]:
    """The files one source reads (all files of a folder); [] when the path is missing."""
    return source_files(source_path(src, recipe_dir), src.format)


def source_path(src: DataSource, recipe_dir: Path) -> Path:
    path = Path(src.path).expanduser()
    return path if path.is_absolute() else (recipe_dir / path).resolve()


def stage_sources(recipe: Recipe, inputs: dict[str, Path]) -> list[DataSource]:
    """The recipe's sources, plus `curated` (the curate stage's pairs.jsonl) when it ran."""
    from legalbuild.recipe import DataSource

    sources = list(recipe.data.sources)
    if "curate" in inputs:
        if any(s.name == CURATED_SOURCE for s in sources):
            raise DataError(
                f"a data source is named {CURATED_SOURCE!r}, the name reserved for the [curate] pairs",
                hint="rename that [[data.sources]] entry",
            )
        sources.append(
            DataSource(
                name=CURATED_SOURCE,
                path=str(Path(inputs["curate"]) / "pairs.jsonl"),
                format="jsonl",
                input_field=None,
                group_field=CURATED_GROUP_FIELD,
                meta_fields=CURATED_META_FIELDS,
            )
        )
    return sources


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
        train, val = split_pairs(kept, data, report, log)
        train = drop_validation_instructions(train, val, sink)
    if not train:
        raise DataError(
            f"no training rows left after cleaning ({report.drop_summary()})",
            hint="check the field names of each source and the [data.filters] lengths",
        )
    assign_ids(train + val)
    write_rows(out_dir / "train.jsonl", train)
    write_rows(out_dir / "val.jsonl", val)
    check_target(len(train), data, report)
    stats = report.stats(train, val, data)
    (out_dir / "stats.json").write_text(
        json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for warning in report.warnings:
        log(f"warning: {warning}")
    seconds = time.perf_counter() - started
    total_in = sum(report.rows_in.values())
    log(
        f"{total_in} rows in → {len(train)} train, {len(val)} val; {sum(report.drops.values())} dropped "
        f"({report.drop_summary()}) in {seconds:.2f}s"
    )
    return {
        "rows_in": total_in,
        "train": len(train),
        "val": len(val),
        "rejected": sum(report.drops.values()),
        "bad_rows": report.bad_rows,
        "filtered": report.filtered,
        "duplicates": report.drops["duplicate_exact"] + report.drops["duplicate_normalized"],
        "cross_split_removed": report.drops["in_validation"],
        "warnings": len(report.warnings),
        "seconds": round(seconds, 3),
        "rows_per_second": round(total_in / seconds) if seconds > 0 else None,
    }


# ---------------------------------------------------------------------------------------- rows
@dataclass
class Pair:
    instruction: str
    output: str
    source: str
    group: str | None
    meta: dict[str, Any]
    where: str
    line: int | None = None
    index: int = 0
    folded_instruction: str = ""  # casefolded, punctuation/whitespace folded: dedup and split key
    id: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instruction": self.instruction,
            "output": self.output,
            "source": self.source,
            "group": self.group,
            "meta": self.meta,
        }


class BadRow(Exception):
    """A row that cannot be mapped onto the schema; `on_error` decides what happens to it."""

    def __init__(self, reason: str, field_name: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field_name, self.detail = reason, field_name, detail


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


def check_columns(columns: list[str] | None, src: DataSource, path: Path, fmt: str) -> None:
    """Tabular sources declare their columns up front: a missing one is a source error, not N bad rows."""
    if columns is None:
        return
    for role in ("instruction_field", "output_field"):
        name = getattr(src, role)
        if name not in columns:
            where = f"{display_path(path)}:1" if fmt == "csv" else display_path(path)
            raise DataError(
                f"{where}: source {src.name!r} has no column {name!r} (its {role}); "
                f"columns: {', '.join(columns) or '(none: empty header)'}",
                hint=f"set {role} on the source to the column that holds it",
            )


def map_record(rec: Record, src: DataSource) -> Pair:
    """A read record → a cleaned Pair, or BadRow naming the field and the reason."""
    if rec.error:
        raise BadRow(rec.error, None, rec.detail)
    fields = rec.fields or {}
    instruction = clean_text(text_field(fields, src.instruction_field, required=True))
    output = clean_text(text_field(fields, src.output_field, required=True))
    if src.input_field and instruction:  # an empty instruction stays empty, to be filtered as such
        extra = clean_text(text_field(fields, src.input_field, required=False))
        if extra:
            instruction = f"{instruction}\n\n{extra}"
    group = group_value(fields, src.group_field)
    meta = {name: fields.get(name) for name in src.meta_fields}
    return Pair(
        instruction,
        output,
        src.name,
        group,
        meta,
        rec.where,
        rec.line,
        rec.index,
        fold_text(instruction),
    )


def text_field(fields: dict[str, Any], name: str, *, required: bool) -> str:
    value = fields.get(name)
    if value is None:
        if not required:
            return ""
        present = ", ".join(sorted(k for k, v in fields.items() if v is not None)) or "none"
        state = "is null" if name in fields else "is missing"
        raise BadRow("missing_field", name, f"{state} (fields present: {present})")
    if not isinstance(value, str):
        raise BadRow(
            "not_a_string", name, f"expected text, got {type(value).__name__} {_short(value)}"
        )
    if has_bad_unicode(value):
        raise BadRow(
            "encoding", name, "contains bytes that are not valid UTF-8 (or a broken \\u escape)"
        )
    return value


def group_value(fields: dict[str, Any], name: str | None) -> str | None:
    if not name:
        return None
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, int | float | str):  # numeric document ids are common in exports
        return str(value).strip() or None
    raise BadRow(
        "not_a_string", name, f"a group value must be text or a number, got {type(value).__name__}"
    )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------- cleaning
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
# A run of whitespace other than newline (tabs, NBSP...) that is not already one plain space:
# leaving single spaces unmatched keeps the substitution cheap on ordinary prose.
_SPACES = re.compile(r"[^\S\n ][^\S\n]*| [^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, one kind of line break, no invisible characters, single spaces, at most one blank line."""
    return text.strip() if _already_clean(text) else clean_text_fully(text)


def clean_text_fully(text: str) -> str:
    """clean_text without the shortcut for text that is already clean (the reference behaviour)."""
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    if not text.isascii():  # after removing invisibles, which can separate a letter from its accent
        text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _already_clean(text: str) -> bool:
    """The common case, checked at C speed: NFC text whose only whitespace is single spaces and
    newlines (isprintable() is False for tabs, CR, controls, NBSP, zero-width and line separators)."""
    return (
        text.replace("\n", "").isprintable()
        and (text.isascii() or unicodedata.is_normalized("NFC", text))
        and "  " not in text
        and " \n" not in text
        and "\n " not in text
        and "\n\n\n" not in text
    )


@functools.cache
def _punctuation_to_space() -> dict[int, str]:
    """Every Basic Multilingual Plane punctuation character (Unicode category P*) → a space."""
    return {cp: " " for cp in range(0x10000) if unicodedata.category(chr(cp)).startswith("P")}


def fold_text(text: str) -> str:
    """The comparison form of a text: casefolded, punctuation and all whitespace folded to one space."""
    return " ".join(text.casefold().translate(_punctuation_to_space()).split())


def filter_reason(pair: Pair, limits: FilterSettings) -> str | None:
    ins, out = len(pair.instruction), len(pair.output)
    checks = (
        (ins == 0, "empty_instruction"),
        (out == 0, "empty_output"),
        (ins < limits.min_instruction_chars, "instruction_too_short"),
        (ins > limits.max_instruction_chars, "instruction_too_long"),
        (out < limits.min_output_chars, "output_too_short"),
        (out > limits.max_output_chars, "output_too_long"),
    )
    return next((reason for failed, reason in checks if failed), None)


class Deduper:
    """Remembers the pairs kept so far; answers (reason, first copy's location) for a repeat."""

    def __init__(self, mode: str):
        self.mode = mode
        self.exact: dict[tuple[str, str], str] = {}
        self.folded: dict[tuple[str, str], str] = {}

    def duplicate_of(self, pair: Pair) -> tuple[str, str] | None:
        if self.mode == "none":
            return None
        exact_key = (pair.instruction, pair.output)
        if (first := self.exact.get(exact_key)) is not None:
            return "duplicate_exact", first
        self.exact[exact_key] = pair.where
        if self.mode == "normalized":
            folded_key = (pair.folded_instruction, fold_text(pair.output))
            if (first := self.folded.get(folded_key)) is not None:
                return "duplicate_normalized", first
            self.folded[folded_key] = pair.where
        return None


# ---------------------------------------------------------------------------------------- split
def split_pairs(
    pairs: list[Pair], data: DataSection, report: Report, log: Callable[[str], None]
) -> tuple[list[Pair], list[Pair]]:
    """Each pair's side from a hash of its split unit (its group, or its folded instruction)."""
    settings = data.split
    if settings.by == "row" and any(p.source == CURATED_SOURCE for p in pairs):
        log(
            f"curated pairs are split by {CURATED_GROUP_FIELD} (whole contracts on one side); other sources by row"
        )
    units = [split_unit(p, settings.by, report) for p in pairs]
    fraction = {u: unit_fraction(settings.salt, u) for u in set(units)}
    val_units = {u for u, f in fraction.items() if f < settings.val_fraction}
    val_units = rescue_empty_side(fraction, val_units, report)
    report.split_units = {"train": len(fraction) - len(val_units), "val": len(val_units)}
    train = [p for p, u in zip(pairs, units, strict=True) if u not in val_units]
    val = [p for p, u in zip(pairs, units, strict=True) if u in val_units]
    return train, val


def split_unit(pair: Pair, by: str, report: Report) -> tuple[str, str]:
    if by == "group" or pair.source == CURATED_SOURCE:
        if pair.group is not None:
            return ("group", pair.group)
        report.rows_without_group += 1
    return ("row", pair.folded_instruction)


def unit_fraction(salt: str, unit: tuple[str, str]) -> float:
    """A number in [0, 1) that depends only on the salt and the unit: the split never reshuffles."""
    text = f"{salt}\x00{unit[0]}\x00{unit[1]}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2**64


def rescue_empty_side(
    fraction: dict[tuple[str, str], float], val_units: set, report: Report
) -> set:
    """With very few units a side can come out empty; move the unit nearest the threshold across."""
    if len(fraction) < 2:
        report.warnings.append("only one split unit (row or group): the validation split is empty")
        return val_units
    if not val_units:
        val_units = {min(fraction, key=fraction.get)}
        report.warnings.append(
            "no unit fell into validation by hash: the lowest-hash unit was moved there"
        )
    elif len(val_units) == len(fraction):
        val_units = val_units - {max(fraction, key=fraction.get)}
        report.warnings.append(
            "every unit fell into validation by hash: the highest-hash unit was moved to train"
        )
    return val_units


def drop_validation_instructions(
    train: list[Pair], val: list[Pair], sink: RejectSink
) -> list[Pair]:
    """No validation instruction may be trained on (group splits can put twins on both sides)."""
    held_out = {p.folded_instruction for p in val}
    kept = []
    for pair in train:
        if pair.folded_instruction in held_out:
            sink.drop(pair, "in_validation", raw=None, detail="its instruction is in val.jsonl")
        else:
            kept.append(pair)
    return kept


def assign_ids(pairs: Iterable[Pair]) -> None:
    """Content ids; with dedup = "none" a repeated pair gets a -2, -3... suffix to stay unique."""
    seen: Counter[str] = Counter()
    for pair in pairs:
        text = f"{pair.instruction}\x00{pair.output}".encode("utf-8", "surrogatepass")
        base = hashlib.sha256(text).hexdigest()[:16]
        seen[base] += 1
        pair.id = base if seen[base] == 1 else f"{base}-{seen[base]}"


def check_target(n_train: int, data: DataSection, report: Report) -> None:
    low, high = data.target_min_pairs, data.target_max_pairs
    if not low <= n_train <= high:
        side = "fewer" if n_train < low else "more"
        report.warnings.append(
            f"{n_train} training pairs: {side} than the target range {low}..{high} "
            "(data.target_min_pairs/target_max_pairs; 2,000-5,000 suits a domain specialisation)"
        )


# -------------------------------------------------------------------------------- output, stats
class JsonlWriter:
    """JSON Lines out; undecodable bytes kept from inputs are written as \\udcXX escapes, not lost."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0

    def __enter__(self) -> JsonlWriter:
        self.file = open(self.path, "w", encoding="utf-8", errors="backslashreplace", newline="\n")
        return self

    def write(self, obj: dict[str, Any]) -> None:
        self.file.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def write_rows(path: Path, pairs: list[Pair]) -> None:
    with JsonlWriter(path) as out:
        for pair in pairs:
            out.write(pair.row())


@dataclass
class Report:
    rows_in: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    bad_rows: int = 0
    filtered: int = 0
    rows_without_group: int = 0
    split_units: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def drop_summary(self) -> str:
        return (
            ", ".join(f"{reason} {n}" for reason, n in sorted(self.drops.items())) or "none dropped"
        )

    def stats(self, train: list[Pair], val: list[Pair], data: DataSection) -> dict[str, Any]:
        if self.rows_without_group:
            self.warnings.append(
                f"{self.rows_without_group} rows had no group value and were split by row"
            )
        kept = train + val
        per_source: dict[str, dict[str, int]] = {
            name: {"train": 0, "val": 0} for name in self.rows_in
        }
        for side, pairs in (("train", train), ("val", val)):
            for pair in pairs:
                per_source[pair.source][side] += 1
        outputs_per_instruction: dict[str, set[str]] = {}
        for pair in kept:
            outputs_per_instruction.setdefault(pair.folded_instruction, set()).add(pair.output)
        return {
            "rows_in": dict(self.rows_in),
            "rows_in_total": sum(self.rows_in.values()),
            "rows_out": {"train": len(train), "val": len(val)},
            "pairs_per_source": per_source,
            "drops": dict(sorted(self.drops.items())),
            "bad_rows": self.bad_rows,
            "filtered": self.filtered,
            "duplicates": {
                "mode": data.dedup,
                "exact": self.drops["duplicate_exact"],
                "normalized": self.drops["duplicate_normalized"],
            },
            "cross_split_removed": self.drops["in_validation"],
            "instructions_with_several_outputs": sum(
                len(o) > 1 for o in outputs_per_instruction.values()
            ),
            "split": {
                "by": data.split.by,
                "curated_by": CURATED_GROUP_FIELD,
                "val_fraction": data.split.val_fraction,
                "salt": data.split.salt,
                "units": self.split_units,
            },
            "lengths": {
                "instruction": percentiles([len(p.instruction) for p in kept]),
                "output": percentiles([len(p.output) for p in kept]),
            },
            "target_pairs": [data.target_min_pairs, data.target_max_pairs],
            "warnings": list(self.warnings),
        }


def percentiles(values: list[int]) -> dict[str, int]:
    """p5/p50/p95 by the nearest-rank method, and the max (all 0 for no values)."""
    if not values:
        return {"p5": 0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p5": rank(5), "p50": rank(50), "p95": rank(95), "max": ordered[-1]}


class RejectSink:
    """Where dropped rows go: bad rows raise under on_error = "fail"; everything else is written down."""

    def __init__(self, writer: JsonlWriter, report: Report, on_error: str):
        self.writer, self.report, self.on_error = writer, report, on_error

    def bad(self, source: str, rec: Record, bad: BadRow) -> None:
        if self.on_error == "fail":
            field_part = f"field {bad.field_name!r}: " if bad.field_name else ""
            raise DataError(f"{rec.where}: {field_part}{bad.detail} [{bad.reason}]", hint=SKIP_HINT)
        self.report.bad_rows += 1
        self._write(
            source, rec.where, rec.line, rec.index, bad.reason, bad.field_name, bad.detail, rec.raw
        )

    def drop(self, pair: Pair, reason: str, *, raw: Any, detail: str = "") -> None:
        """A readable row left out by a filter, dedup or the cross-split rule (raw None: the cleaned pair)."""
        if reason not in ("duplicate_exact", "duplicate_normalized", "in_validation"):
            self.report.filtered += 1
        if raw is None:
            raw = {"instruction": pair.instruction, "output": pair.output}
        self._write(pair.source, pair.where, pair.line, pair.index, reason, None, detail, raw)

    def _write(self, source, where, line, index, reason, field_name, detail, raw) -> None:
        self.report.drops[reason] += 1
        self.writer.write(
            {
                "source": source,
                "where": where,
                "line": line,
                "index": index,
                "reason": reason,
                "field": field_name,
                "detail": detail,
                "raw": raw,
            }
        )
