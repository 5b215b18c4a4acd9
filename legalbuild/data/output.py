"""JSON Lines out: train/val rows, and rejects.jsonl with every row left out and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.data.rows import SKIP_HINT
from legalbuild.errors import DataError

if TYPE_CHECKING:
    from legalbuild.data.records import Record
    from legalbuild.data.rows import BadRow, Pair
    from legalbuild.data.stats import Report


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
