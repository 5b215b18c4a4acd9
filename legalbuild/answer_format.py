"""The one answer format of the Legal Audit Assistant: written by curation, parsed by eval.

    Clause type: Limitation of liability
    Risk: high
    Finding 1: Uncapped liability [liability.uncapped] (severity: high)
    Why: An uncapped liability exposes the customer to losses far beyond the contract value.
    Fix: Cap each party's aggregate liability at the fees paid in the prior 12 months.
    Suggested clause: Each party's total liability under this Agreement shall not exceed ...

A clean clause:

    Risk: none
    Findings: none. The clause ...

The `Clause type:` line is optional: it says what the clause *is* (a CUAD category or a rulebook
clause type), before the verdict, so a reader and a scorer learn the type even when the answer
raises nothing; generating it first also keeps greedy decoding from committing to "Risk: none"
before the model has named what it reads. `Risk` is the highest severity among the findings (none
when there are none). Finding blocks are
numbered from 1; `Why`, `Fix` and `Suggested clause` lines are optional within a block. The parser
is tolerant of surrounding whitespace and case, and returns None when the text does not follow the
format (eval counts those answers as wrong and reports how many there were).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

SEVERITIES = ("high", "medium", "low")
RISK_LEVELS = (*SEVERITIES, "none")


@dataclass
class Finding:
    title: str
    rule_id: str
    severity: str
    why: str = ""
    fix: str = ""
    suggested_clause: str = ""


@dataclass
class Audit:
    risk: str
    findings: list[Finding] = field(default_factory=list)
    note: str = ""  # the sentence after "Findings: none."
    clause_type: str = ""  # the "Clause type:" line, when the answer has one

    @property
    def rule_ids(self) -> list[str]:
        return [f.rule_id for f in self.findings]


def overall_risk(findings: list[Finding]) -> str:
    for level in SEVERITIES:
        if any(f.severity == level for f in findings):
            return level
    return "none"


def render_audit(audit: Audit) -> str:
    lines = [f"Clause type: {_one_line(audit.clause_type)}"] if audit.clause_type else []
    lines.append(f"Risk: {audit.risk}")
    if not audit.findings:
        lines.append(f"Findings: none. {audit.note}".rstrip())
        return "\n".join(lines)
    for i, f in enumerate(audit.findings, 1):
        lines.append(f"Finding {i}: {f.title} [{f.rule_id}] (severity: {f.severity})")
        if f.why:
            lines.append(f"Why: {_one_line(f.why)}")
        if f.fix:
            lines.append(f"Fix: {_one_line(f.fix)}")
        if f.suggested_clause:
            lines.append(f"Suggested clause: {_one_line(f.suggested_clause)}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


_TYPE = re.compile(r"^\s*clause\s+type\s*:\s*(.+?)\s*$", re.I)
_RISK = re.compile(r"^\s*risk\s*:\s*(high|medium|low|none)\b", re.I)
_NONE = re.compile(r"^\s*findings\s*:\s*none\.?\s*(.*)$", re.I)
_FINDING = re.compile(
    r"^\s*finding\s+\d+\s*:\s*(.+?)\s*\[([^\]]+)\]\s*\(\s*severity\s*:\s*(high|medium|low)\s*\)\s*$",
    re.I,
)
_FIELD = re.compile(r"^\s*(why|fix|suggested clause)\s*:\s*(.*)$", re.I)


def parse_audit(text: str) -> Audit | None:
    """Parse an answer in the audit format; None when it does not follow it."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    clause_type = ""
    if lines and (m := _TYPE.match(lines[0])):
        clause_type, lines = m.group(1), lines[1:]
    if not lines or not (m := _RISK.match(lines[0])):
        return None
    audit = Audit(risk=m.group(1).lower(), clause_type=clause_type)
    current: Finding | None = None
    for line in lines[1:]:
        if (m := _NONE.match(line)) and current is None and not audit.findings:
            audit.note = m.group(1).strip()
            return audit if audit.risk == "none" else None
        if m := _FINDING.match(line):
            current = Finding(
                title=m.group(1).strip(), rule_id=m.group(2).strip(), severity=m.group(3).lower()
            )
            audit.findings.append(current)
            continue
        if (m := _FIELD.match(line)) and current is not None:
            name = m.group(1).lower().replace(" ", "_")
            setattr(current, name, m.group(2).strip())
            continue
        if current is None:
            return None  # text before any finding that is not part of the format
        # a stray line inside a finding block: keep it with the last field, tolerate it
    if not audit.findings:
        return None
    return audit


# ------------------------------------------------------------------------- constrained decoding
_LINE = r"[^\n]+"  # one line of free text
_TITLE = r"[^\n\[\]]+"


def audit_regex(rules: Sequence[tuple[str, str]] = (), clause_type: bool = False) -> str:
    """A regular expression of the audit format, for constrained decoding (vLLM
    `structured_outputs={"regex": ...}`, xgrammar for transformers). `rules` are (rule id,
    severity) pairs: when given, a finding may only cite one of them, with its own severity;
    otherwise any id. A fix answer's "Revised clause" part is allowed after the audit.
    `clause_type`: the answer starts with a `Clause type:` line (a model trained to write one)."""
    if rules:
        cited = "|".join(
            rf"\[{re.escape(rule_id)}\] \(severity: {severity}\)" for rule_id, severity in rules
        )
        header = rf"{_TITLE} (?:{cited})"
    else:
        header = rf"{_TITLE} \[[a-z0-9][a-z0-9._-]*\] \(severity: (?:high|medium|low)\)"
    finding = (
        rf"Finding [1-9]: {header}\nWhy: {_LINE}\nFix: {_LINE}(?:\nSuggested clause: {_LINE})?"
    )
    flagged = rf"Risk: (?:high|medium|low)\n{finding}(?:\n{finding}){{0,4}}"
    revised = rf"(?:\n\nRevised clause:\n{_LINE})?"
    clean = rf"Risk: none\nFindings: none\.(?: {_LINE})?"
    typed = rf"Clause type: {_TITLE}\n" if clause_type else ""
    return rf"{typed}(?:{flagged}{revised}|{clean})"
