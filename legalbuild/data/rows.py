"""A read record mapped onto the canonical row schema, or a bad row saying which field and why.

Rows of train.jsonl/val.jsonl: {"id", "instruction", "output", "source", "group", "meta"}.
`instruction_field`/`output_field` must hold text; an Alpaca `input_field` that is present and
non-empty is appended to the instruction after a blank line. Missing, null or non-text values and
undecodable bytes are bad rows (`BadRow`), as are the records a reader could not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.data.clean import clean_text, fold_text
from legalbuild.data.readers import has_bad_unicode
from legalbuild.data.records import Record
from legalbuild.errors import DataError
from legalbuild.files import display_path

if TYPE_CHECKING:
    from legalbuild.recipe import DataSource

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
