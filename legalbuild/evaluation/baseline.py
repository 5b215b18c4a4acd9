"""The non-neural baselines: the rulebook's regex checks answering in the audit format, two ways.

- `regex` (fair: told what the model is told): the rules the question lists (its `Rules to check:`
  catalogue, `legalbuild.prompting.catalogue_rules`) are checked, and only those; a question that
  names a playbook without a catalogue gets that playbook's rules that apply to the clause
  (`curation.review.rules_for_text`, as `legalbuild audit --playbook` picks them); a plain
  question gets every playbook (there is nothing else to go on).
- `regex-unscoped`: every playbook's rules of the clause's type, whatever the question says (the
  baseline the eval used to report; it fires rules of playbooks the question never named).

A rule raises a finding when its regex check fires on the clause text (`Rule.violated`). A
clause of unknown type is typed with the curation classifier first. Answers are rendered by
curation's `audit_answer`, exactly as the training data writes them. Where the labels come from
the same rulebook (the curated test split), the fair baseline is the teacher itself: a model has
to match it there and earn its place on labels the rulebook did not write.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from legalbuild.errors import DataError
from legalbuild.evaluation.generate import Answer
from legalbuild.evaluation.rows import EvalRow
from legalbuild.prompting import catalogue_rules

BaselineAnswer = Callable[[EvalRow], str]
CLEAN_NOTE = "None of the rulebook's checks fires on this clause."
BASELINES = ("regex", "regex-unscoped")
_PLAYBOOK = re.compile(r"\bPlaybook: ([a-z0-9][a-z0-9-]*)\b")


def make_regex_baselines(rules: Sequence[Any]) -> dict[str, BaselineAnswer]:
    """{"regex": fair, "regex-unscoped": every playbook} answerers from rulebook rules."""
    from legalbuild.curation.clauses import classify_clause
    from legalbuild.curation.review import audit_answer, rules_for_text

    by_type: dict[str, list[Any]] = {}
    by_playbook: dict[str, list[Any]] = {}
    for rule in rules:
        by_type.setdefault(rule.clause_type, []).append(rule)
        by_playbook.setdefault(rule.playbook, []).append(rule)
    by_id = {rule.id: rule for rule in rules}

    def unscoped(row: EvalRow) -> str:
        kind = row.meta.get("clause_type") or classify_clause("", row.clause)
        fired = [rule for rule in by_type.get(kind, []) if rule.violated(row.clause)]
        return audit_answer(fired, CLEAN_NOTE)

    def fair(row: EvalRow) -> str:
        listed = [
            by_id[rule_id] for rule_id, _, _ in catalogue_rules(row.instruction) if rule_id in by_id
        ]
        if not listed:
            playbook = row.meta.get("playbook") or _named_playbook(row.instruction)
            if playbook not in by_playbook:
                return unscoped(row)
            listed = rules_for_text(row.clause, by_playbook[playbook])
        return audit_answer([rule for rule in listed if rule.violated(row.clause)], CLEAN_NOTE)

    return {"regex": fair, "regex-unscoped": unscoped}


def _named_playbook(instruction: str) -> str | None:
    found = _PLAYBOOK.search(instruction)
    return found.group(1) if found else None


def load_regex_baselines(
    rulebook_specs: Sequence[str] | None, base_dir: Any
) -> tuple[dict[str, BaselineAnswer], str]:
    """The curation rulebook's regex checks as baselines, or ({}, why not)."""
    try:
        from legalbuild.curation import rulebook

        specs = list(rulebook_specs) if rulebook_specs else [rulebook.PACKAGED_REDLINE]
        book = rulebook.load_rulebooks(specs, base_dir)
    except (ImportError, AttributeError, DataError) as exc:
        return {}, f"regex baseline unavailable: {exc}"
    note = (
        f"{len(book.rules)} rules from {len(book.files)} playbook(s); 'regex' checks the rules the "
        "question lists (or its playbook's), 'regex-unscoped' every playbook's rules of the clause type"
    )
    return make_regex_baselines(book.rules), note


def run_baseline(
    baseline: BaselineAnswer, rows: Sequence[EvalRow], count_tokens: Callable[[str], int]
) -> list[Answer]:
    answers = []
    for row in rows:
        began = time.perf_counter()
        text = baseline(row)
        seconds = time.perf_counter() - began
        answers.append(Answer(text=text, tokens=count_tokens(text), seconds=seconds))
    return answers
