"""Evaluation rows: the held-out split of normalize and the recipe's extra sets, and the balanced pick.

An extra set is JSONL, one object a line, in either of two shapes:

    {"instruction": "...", "output": "<audit-format answer>", "id"?: "...", "meta"?: {...}}
    {"clause": "...", "expected": ["rule.id", ...], "severity": "high|medium|low|none",
     "clause_type"?: "...", "task"?: "...", "id"?: "..."}

The first is scored like a held-out row. The second asks the default audit instruction about
`clause` and scores labels and risk only (it has no reference text, so no loss and no ROUGE-L);
`severity` is the expected overall risk, required when `expected` is non-empty and `none` when it
is empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild.answer_format import RISK_LEVELS, Audit, Finding, parse_audit
from legalbuild.data.readers import read_jsonl
from legalbuild.errors import DataError
from legalbuild.prompting import AUDIT_INSTRUCTION, CATALOGUE_HEADER

CATEGORY_FIELDS = ("task", "ask", "clause_type", "severity", "set")


@dataclass
class EvalRow:
    id: str
    set: str  # "test", "val" or "extra:<file stem>"
    instruction: str
    clause: str  # what the regex baseline reads
    reference_text: str | None  # None for label-only rows (extra sets in the clause shape)
    reference: Audit | None  # parsed reference; None when it does not follow the audit format
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def category(self, name: str) -> str:
        if name == "set":
            return self.set
        if name == "ask":  # how the question was put: with a rule list, a playbook, or plainly
            if CATALOGUE_HEADER in self.instruction:
                return "rule list"
            return "playbook" if "Playbook: " in self.instruction else "plain"
        if name == "severity":  # the curated severity, else the reference's overall risk
            value = self.meta.get("severity") or (self.reference.risk if self.reference else None)
            return str(value or "unknown")
        return str(self.meta.get(name) or "unknown")

    @property
    def clean(self) -> bool:
        """The reference says the clause has no red flag."""
        return self.reference is not None and not self.reference.findings


def load_split_rows(path: Path, set_name: str) -> list[EvalRow]:
    """Rows of a normalize split file (`val.jsonl` or `test.jsonl`)."""
    rows = []
    for lineno, obj in read_jsonl(path):
        for key in ("instruction", "output"):
            if not isinstance(obj.get(key), str):
                raise DataError(
                    f"{path}:{lineno}: field {key!r} must be a string",
                    hint="rows come from normalize",
                )
        meta = obj.get("meta") or {}
        rows.append(
            EvalRow(
                id=str(obj.get("id", f"{set_name}-{lineno}")),
                set=set_name,
                instruction=obj["instruction"],
                clause=str(meta.get("clause") or clause_from_instruction(obj["instruction"])),
                reference_text=obj["output"],
                reference=parse_audit(obj["output"]),
                source=str(obj.get("source", "")),
                meta=meta,
            )
        )
    return rows


def load_extra_set(path: Path, instruction_template: str = AUDIT_INSTRUCTION) -> list[EvalRow]:
    """Rows of one `[eval] extra_sets` file (either shape of the module docstring)."""
    if not path.is_file():
        raise DataError(
            f"{path}: extra eval set not found",
            hint="[eval] extra_sets paths are relative to the recipe",
        )
    name = f"extra:{path.stem}"
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        row_id = str(obj.get("id", f"{path.stem}-{lineno}"))
        if "clause" in obj:
            rows.append(_clause_row(obj, where, row_id, name, instruction_template))
        elif "instruction" in obj:
            rows.append(_instruction_row(obj, where, row_id, name))
        else:
            raise DataError(
                f"{where}: a row needs either 'clause' + 'expected' or 'instruction' + 'output'",
                hint='e.g. {"clause": "...", "expected": ["liability.uncapped"], "severity": "high"}',
            )
    return rows


def _clause_row(obj: dict, where: str, row_id: str, set_name: str, template: str) -> EvalRow:
    clause, expected = obj.get("clause"), obj.get("expected")
    if not isinstance(clause, str) or not clause.strip():
        raise DataError(f"{where}: field 'clause' must be a non-empty string")
    if not isinstance(expected, list) or not all(
        isinstance(r, str) and r.strip() for r in expected
    ):
        raise DataError(
            f"{where}: field 'expected' must be a list of rule ids (empty for a clean clause)"
        )
    severity = obj.get("severity", None if expected else "none")
    if severity not in RISK_LEVELS:
        raise DataError(
            f"{where}: field 'severity' must be one of {', '.join(RISK_LEVELS)} (got {severity!r})",
            hint="the expected overall risk: the highest severity among the expected findings",
        )
    if bool(expected) == (severity == "none"):
        raise DataError(f"{where}: severity {severity!r} contradicts expected {expected!r}")
    findings = [Finding(title=rid, rule_id=rid.strip(), severity=severity) for rid in expected]
    meta = {"severity": severity, "task": obj.get("task", "audit")}
    if obj.get("clause_type"):
        meta["clause_type"] = str(obj["clause_type"])
    return EvalRow(
        id=row_id,
        set=set_name,
        instruction=template.format(clause=clause.strip()),
        clause=clause.strip(),
        reference_text=None,
        reference=Audit(risk=severity, findings=findings),
        source=set_name,
        meta=meta,
    )


def _instruction_row(obj: dict, where: str, row_id: str, set_name: str) -> EvalRow:
    instruction, output = obj.get("instruction"), obj.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: field 'instruction' must be a non-empty string")
    if not isinstance(output, str) or not output.strip():
        raise DataError(
            f"{where}: field 'output' must be a non-empty string (an audit-format answer)"
        )
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: field 'meta' must be an object")
    return EvalRow(
        id=row_id,
        set=set_name,
        instruction=instruction,
        clause=str(meta.get("clause") or clause_from_instruction(instruction)),
        reference_text=output,
        reference=parse_audit(output),
        source=set_name,
        meta=meta,
    )


def clause_from_instruction(instruction: str) -> str:
    """The clause inside an instruction: the text after the first blank line when the instruction
    has a lead-in ("Audit this clause:\\n\\n<clause>"), else the whole instruction."""
    head, sep, rest = instruction.partition("\n\n")
    return rest.strip() if sep and rest.strip() and len(head) < 300 else instruction.strip()


def stratum(row: EvalRow) -> tuple[str, str]:
    """(set, task), with clean audits a stratum of their own so that they are always scored."""
    task = row.category("task")
    return row.set, f"{task}:clean" if row.clean else task


def select_rows(rows: Sequence[EvalRow], max_rows: int) -> list[EvalRow]:
    """At most `max_rows` rows, taken round-robin over strata (set, task, clean or not) so that
    every task kind, every extra set and the clean clauses are represented; within a stratum the
    order is a hash of the row id, so the same data always gives the same pick. Returned in their
    input order."""
    strata: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(rows):
        strata.setdefault(stratum(row), []).append(index)
    queues = [
        sorted(ix, key=lambda i: _stable_hash(rows[i].id)) for _, ix in sorted(strata.items())
    ]
    picked: list[int] = []
    while len(picked) < max_rows and any(queues):
        for queue in queues:
            if queue and len(picked) < max_rows:
                picked.append(queue.pop(0))
    return [rows[i] for i in sorted(picked)]


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
