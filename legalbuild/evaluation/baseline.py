"""The non-neural baseline: the rulebook's regex checks answer in the audit format.

A rule applies to a clause of its own clause type (the curation rulebook types each rule from its
id, title and description), from every loaded playbook: the baseline is not told the playbook. It
raises a finding when its regex check fires on the clause text. A clause of unknown type is typed
with the curation classifier first. Answers are rendered by curation's `audit_answer`, exactly as
the training data writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from legalbuild.errors import DataError
from legalbuild.evaluation.generate import Answer
from legalbuild.evaluation.rows import EvalRow

BaselineAnswer = Callable[[str, str | None], str]  # (clause text, clause type) -> answer
CLEAN_NOTE = "None of the rulebook's checks fires on this clause."


def make_regex_baseline(rules: Sequence[Any]) -> BaselineAnswer:
    """`baseline_answer(clause_text, clause_type) -> audit-format answer` from rulebook rules."""
    from legalbuild.curation.clauses import classify_clause
    from legalbuild.curation.review import audit_answer

    by_type: dict[str, list[Any]] = {}
    for rule in rules:
        by_type.setdefault(rule.clause_type, []).append(rule)

    def baseline_answer(clause_text: str, clause_type: str | None) -> str:
        kind = clause_type or classify_clause("", clause_text)
        fired = [rule for rule in by_type.get(kind, []) if rule.violated(clause_text)]
        return audit_answer(fired, CLEAN_NOTE)

    return baseline_answer


def load_regex_baseline(
    rulebook_specs: Sequence[str] | None, base_dir: Any
) -> tuple[BaselineAnswer | None, str]:
    """The curation rulebook's regex checks as a baseline, or (None, why not)."""
    try:
        from legalbuild.curation import rulebook

        specs = list(rulebook_specs) if rulebook_specs else [rulebook.PACKAGED_REDLINE]
        book = rulebook.load_rulebooks(specs, base_dir)
    except (ImportError, AttributeError, DataError) as exc:
        return None, f"regex baseline unavailable: {exc}"
    note = f"{len(book.rules)} rules from {len(book.files)} playbook(s)"
    return make_regex_baseline(book.rules), note


def run_baseline(
    baseline: BaselineAnswer, rows: Sequence[EvalRow], count_tokens: Callable[[str], int]
) -> list[Answer]:
    answers = []
    for row in rows:
        began = time.perf_counter()
        text = baseline(row.clause, row.meta.get("clause_type"))
        seconds = time.perf_counter() - began
        answers.append(Answer(text=text, tokens=count_tokens(text), seconds=seconds))
    return answers
