"""Readers for instruction/response data files, with the position of every record.

One function, `open_source(path, fmt)`, reads any supported format and returns a `SourceReader`:
the column names (for tabular formats, checked before any row is read) and an iterator of
`Record`s. Each record says where it came from (`where`: "file.jsonl:12", "file.json[3] (line 9)",
"file.parquet row 5", "folder[train] row 5") so a bad row can be named precisely.
`iter_jsonl(path)` is the project's one JSON Lines reader (line numbers, a bounded line size, a
bounded nesting depth); read any .jsonl file through it.

Two kinds of problems, two channels:
- problems with the whole source (missing file, a FIFO or device, not a parquet file, corrupt
  Parquet pages, JSON that is not an array, a format that cannot be guessed) raise `DataError` at
  once: there is no row to skip;
- problems with one row (invalid JSON on a line, a line over MAX_LINE_BYTES, JSON nested deeper
  than MAX_JSON_DEPTH, an element that is not an object, a CSV line the csv module rejects) come
  back as a `Record` with `error` set, and the caller decides (fail or skip).
Text is decoded as UTF-8 with `surrogateescape`, so undecodable bytes survive as lone surrogates;
the caller flags the fields that contain them (`has_bad_unicode`) instead of losing the file.
pyarrow and datasets are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legalbuild.data.records import Record, SourceReader
from legalbuild.errors import DataError
from legalbuild.files import (
    check_input_path,
    display_path,
    open_regular,
    read_regular_bytes,
    tree_files,
)

FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMAT_HINT = 'set `format` on the source to one of "jsonl", "json", "csv", "parquet", "hf_disk"'
MISSING_HINT = "data source paths are relative to the recipe's folder"
MAX_LINE_BYTES = 16 << 20  # a longer JSON Lines line is a bad row, read in bounded memory
MAX_JSON_DEPTH = 100  # deeper JSON is a bad row (deep enough for any record, far from the stack)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The concrete format of a source: the declared one, or a guess from the extension/contents."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf_disk"
    found = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"{display_path(path)}: cannot tell the format from the extension {path.suffix!r}",
            hint=FORMAT_HINT,
        )
    if found == "json" and _first_non_space_byte(path) == b"{":
        found = (
            "jsonl"  # JSON Lines saved under a .json name (a common export): one object per line
        )
    return found


def source_files(path: Path, fmt: str = "auto") -> list[Path]:
    """Every file whose bytes a source's rows depend on (a folder: all its files); [] if missing."""
    if not os.path.lexists(path):
        return []
    return tree_files(path)


def open_source(path: Path, fmt: str = "auto") -> SourceReader:
    """Open a source for reading; raises DataError when the source as a whole is unusable."""
    check_input_path(path, missing_hint=MISSING_HINT)  # a FIFO, a device, /proc...: DataError
    fmt = detect_format(path, fmt)
    if fmt == "hf_disk":
        if not path.is_dir():
            raise DataError(
                f'{display_path(path)}: format "hf_disk" needs a folder written by `Dataset.save_to_disk`',
                hint=FORMAT_HINT,
            )
        tree_files(path)  # DataError for a FIFO or broken link inside, which would hang or crash
        from legalbuild.data.columnar import open_hf_disk

        return open_hf_disk(path)
    if path.is_dir():
        raise DataError(
            f"{display_path(path)}: is a folder, but format is {fmt!r}",
            hint='a `datasets` save_to_disk folder needs format "auto" or "hf_disk"',
        )
    if fmt == "parquet":
        from legalbuild.data.columnar import open_parquet

        return open_parquet(path)
    opener = {"jsonl": _open_jsonl, "json": _open_json_array, "csv": _open_csv}
    return opener[fmt](path)


def has_bad_unicode(text: str) -> bool:
    """True when text holds lone surrogates: undecodable bytes (surrogateescape) or bad \\u escapes."""
    return not text.isascii() and _SURROGATE.search(text) is not None


_SURROGATE = re.compile("[\ud800-\udfff]")


# ------------------------------------------------------------------------------------ JSON Lines
def _open_jsonl(path: Path) -> SourceReader:
    return SourceReader(path, "jsonl", None, _read_jsonl(path))


def _read_jsonl(path: Path) -> Iterator[Record]:
    shown = display_path(path)
    for index, item in enumerate(iter_jsonl(path)):
        where = f"{shown}:{item.line}"
        if item.error:
            yield Record(where, index, item.line, None, item.text, item.error, item.detail)
        else:
            yield _object_record(where, index, item.line, item.value, item.text)


@dataclass
class JsonlLine:
    """One non-blank line of a JSON Lines file: its value, or why it has none."""

    line: int  # 1-based
    text: str  # the line, stripped (decoded with surrogateescape); cut short when too long
    value: Any = None
    error: str | None = None  # "invalid_json", "too_deep" or "line_too_long"
    detail: str = ""


def iter_jsonl(
    path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSON Lines file, in order, with its line number. Reads a regular
    file only (DataError otherwise) and at most max_line_bytes of any line: a longer line, invalid
    JSON or JSON nested deeper than max_depth comes back with `error` set, for the caller to fail
    on or skip. A UTF-8 byte-order mark on the first line is ignored."""
    with open_regular(path, MISSING_HINT) as f:
        line_no = 0
        while data := f.readline(max_line_bytes + 1):
            line_no += 1
            if line_no == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark, as some editors write
            if len(data) > max_line_bytes and not data.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip to the end of the line in bounded steps
                head = data[:200].decode("utf-8", "surrogateescape")
                detail = f"line longer than {max_line_bytes:,} bytes (read no further)"
                yield JsonlLine(line_no, head + "…", None, "line_too_long", detail)
                continue
            text = data.decode("utf-8", "surrogateescape").strip()
            if not text:
                continue  # blank lines (a trailing newline, spacing) are not rows
            try:
                value = json.loads(text)
            except RecursionError:
                yield JsonlLine(line_no, text, None, "too_deep", _too_deep_detail(max_depth))
                continue
            except ValueError as exc:
                detail = f"invalid JSON: {getattr(exc, 'msg', exc)} (column {getattr(exc, 'colno', '?')})"
                yield JsonlLine(line_no, text, None, "invalid_json", detail)
                continue
            if nested_deeper_than(value, max_depth):
                yield JsonlLine(line_no, text, None, "too_deep", _too_deep_detail(max_depth))
            else:
                yield JsonlLine(line_no, text, value)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when arrays/objects nest more than `limit` levels (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _too_deep_detail(limit: int) -> str:
    return f"JSON nested deeper than {limit} levels"


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each row of a JSON Lines file that must be well formed: the one
    reader of legalbuild's own JSONL files (splits, extra eval sets, answers). A bad line raises
    DataError naming file:line."""
    if not Path(path).is_file():
        raise DataError(f"{display_path(path)}: not found (or not a regular file)")
    for record in _read_jsonl(Path(path)):
        if record.error:
            raise DataError(f"{record.where}: {record.detail}")
        yield record.line or 0, record.fields or {}


def _object_record(where: str, index: int, line: int | None, obj: Any, raw: Any) -> Record:
    if isinstance(obj, dict):
        return Record(where, index, line, obj, raw)
    detail = f"expected a JSON object with named fields, got {_json_type(obj)}"
    return Record(where, index, line, None, raw, "not_an_object", detail)


def _json_type(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------ JSON array
def _open_json_array(path: Path) -> SourceReader:
    text = _read_text(path)
    return SourceReader(path, "json", None, _read_json_array(path, text))


def _read_json_array(path: Path, text: str) -> Iterator[Record]:
    """Walks the array element by element (raw_decode) so each element keeps its line number."""
    shown = display_path(path)
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if pos == len(text):
        return  # an empty file: no rows (the caller reports empty sources)
    if text[pos] != "[":
        raise DataError(
            f"{shown}:{_line_at(text, pos)}: a .json source must be one JSON array of objects",
            hint='for one object per line, name the file .jsonl or set format = "jsonl"',
        )
    pos = _skip_space(text, pos + 1)
    index = 0
    line, line_pos = 1, 0  # running line count, so the walk stays linear in the file size
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise DataError(
                f"{shown}:{line}: element [{index}] is nested too deeply to read "
                f"(more than {MAX_JSON_DEPTH} levels are refused)",
                hint="a JSON array cannot be read past such an element; fix the file "
                "(JSON Lines can skip bad lines)",
            ) from None
        except ValueError as exc:
            raise DataError(
                f"{shown}:{_line_at(text, getattr(exc, 'pos', pos))}: invalid JSON in element [{index}]: "
                f"{getattr(exc, 'msg', exc)}",
                hint="a broken JSON array cannot be read past the error; fix the file (JSON Lines can skip bad lines)",
            ) from None
        where = f"{shown}[{index}] (line {line})"
        if nested_deeper_than(obj, MAX_JSON_DEPTH):
            raw = _clip(text[pos:end])
            yield Record(
                where, index, line, None, raw, "too_deep", _too_deep_detail(MAX_JSON_DEPTH)
            )
        else:
            yield _object_record(where, index, line, obj, obj)
        index += 1
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_space(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise DataError(
                f"{shown}:{_line_at(text, pos)}: expected ',' or ']' after element [{index - 1}]"
            )
    if pos >= len(text):
        raise DataError(
            f"{shown}: the JSON array is not closed (missing ']')", hint="the file may be truncated"
        )


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width] + "…"


def _read_text(path: Path) -> str:
    text = read_regular_bytes(path, MISSING_HINT).decode("utf-8", "surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def _first_non_space_byte(path: Path) -> bytes:
    with open_regular(path, MISSING_HINT) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


# ------------------------------------------------------------------------------------------- CSV
def _open_csv(path: Path) -> SourceReader:
    shown = display_path(path)
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{shown}:1: unreadable CSV header: {exc}") from None
    columns = [c.strip() for c in header] if header else []
    return SourceReader(path, "csv", columns, _read_csv(shown, reader, columns))


def _read_csv(shown: str, reader: Any, columns: list[str]) -> Iterator[Record]:
    index = 0
    while True:
        start = (
            reader.line_num + 1
        )  # a quoted field may span lines: the row starts after the last one
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(
                f"{shown}:{start}",
                index,
                start,
                None,
                "",
                "invalid_csv",
                f"unreadable CSV row: {exc}",
            )
            index += 1
            continue
        if not any(v.strip() for v in values):
            continue  # blank lines
        where = f"{shown}:{start}"
        if len(values) > len(columns):  # usually an unquoted comma: the text columns are cut wrong
            detail = f"{len(values)} cells but the header has {len(columns)} (unquoted delimiter in a field?)"
            yield Record(where, index, start, None, values, "invalid_csv", detail)
        else:  # a short row lacks its last columns: reported as missing fields by the caller
            yield Record(where, index, start, dict(zip(columns, values, strict=False)), values)
        index += 1
