"""What is asked about each clause: the recipe's system prompt, then the same instruction wording
training and eval use (`legalbuild.prompting.audit_instruction`). With a playbook, the question
lists the playbook's rules that apply to the clause, as training did; with `constrained`, the
request carries vLLM's `structured_outputs` regex of the audit format (rule ids limited to the
listed rules). `legalbuild.contract.client` sends the questions; an answer is parsed with
`legalbuild.answer_format.parse_audit`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from legalbuild.errors import DataError
from legalbuild.prompting import audit_instruction


@dataclasses.dataclass
class Question:
    """What is sent for one clause: the user message and, for constrained decoding, the regex."""

    instruction: str
    regex: str | None = None

    def extra_body(self) -> dict[str, Any] | None:
        # vLLM >= 0.12 reads `structured_outputs`; the older `guided_regex` is silently ignored.
        return {"structured_outputs": {"regex": self.regex}} if self.regex else None


def playbook_questions(
    clauses: list[str], playbook: str | None, rules: list[Any], constrained: bool
) -> list[Question]:
    """One question per clause: the playbook's applicable rules listed (as in training) and, when
    `constrained`, the audit-format regex citing only those rules."""
    from legalbuild.answer_format import audit_regex
    from legalbuild.curation.review import rules_for_text

    out = []
    for clause in clauses:
        applicable = rules_for_text(clause, rules) if rules else []
        catalogue = [(r.id, r.title, r.severity) for r in applicable]
        regex = audit_regex([(r.id, r.severity) for r in applicable]) if constrained else None
        out.append(Question(audit_instruction(clause, playbook, catalogue), regex))
    return out


def playbook_rules(rulebook_specs: list[str], base_dir: Path, playbook: str) -> list[Any]:
    """The rules of one playbook of the recipe's rulebooks; DataError naming the ones there are."""
    from legalbuild.curation.rulebook import load_rulebooks

    by_playbook = load_rulebooks(rulebook_specs, base_dir).by_playbook()
    if playbook not in by_playbook:
        raise DataError(
            f"playbook {playbook!r} is not in the recipe's rulebooks",
            hint=f"choose one of: {', '.join(sorted(by_playbook))}",
        )
    return by_playbook[playbook]


def shorten(text: str | None, width: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
