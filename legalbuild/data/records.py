"""What every data reader yields: one `Record` per row, with where it came from, inside a
`SourceReader` (readers.py for text formats, columnar.py for Parquet and datasets folders)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Record:
    """One row as read from a source, before any mapping."""

    where: str  # human location: "path:line", "path[index] (line n)", "path row n"
    index: int  # 0-based position of the row in its source
    line: int | None  # 1-based line where the row starts (JSONL, CSV, JSON array), else None
    fields: dict[str, Any] | None  # the row's columns; None when the row could not be read
    raw: Any  # what to show in rejects.jsonl (the line's text, or the row's object)
    error: str | None = None  # reason code when the row could not be read
    detail: str = ""  # human explanation of `error`


@dataclass
class SourceReader:
    path: Path
    format: str
    columns: list[str] | None  # known up front for csv, parquet and hf_disk; None for JSON formats
    records: Iterator[Record]
