"""Label sets: clauses labelled by someone other than the rulebook (`[[eval.label_sets]]`, e.g. the
CUAD dev split), asked the way users ask and scored against those labels.

Each clause is asked with the plain question (`Audit this contract clause:`, what an OpenAI client
sends) and, per `playbooks`, the way `legalbuild audit --playbook NAME` asks: the playbook's rules
that apply to the clause listed in the question. Every answerer of the eval stage answers the same
rows (base, merged, the regex baselines). Scores, per way of asking and answerer:

- `topic`: per labelled category, "does the answer raise a finding on this topic" as balanced
  accuracy (positives: the clauses of the category; negatives: the other clauses), with the macro
  mean over the red-flag categories and 95% bootstrap intervals (evaluation/balanced.py); topics
  are read conservatively from rule ids and exact titles (curation/cuad.py `finding_topics`);
- `clause_type`: the same, read from the `Clause type:` line (`type_topics`);
- `flags_any_risk`: balanced accuracy of "Risk is not none" on red-flag clauses vs the others;
- `unparseable_rate`: answers not in the audit format.
The labels say what a clause *is*; whether it is bad for your side is the table's reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from legalbuild.answer_format import parse_audit
from legalbuild.evaluation.balanced import balanced_binary, balanced_table
from legalbuild.evaluation.generate import Answer
from legalbuild.evaluation.rows import EvalRow
from legalbuild.prompting import audit_instruction

PLAIN = "plain"


def label_rows(label_set: Any, path: Path, playbook_rules: dict[str, list[Any]]) -> list[EvalRow]:
    """The set's clauses (at most `max_rows`, a deterministic pick that keeps every red-flag
    category represented), each asked once plainly and once per playbook."""
    from legalbuild.curation import cuad
    from legalbuild.curation.review import rules_for_text
    from legalbuild.errors import RecipeError

    clauses = pick(cuad.read_labelled(path), label_set.max_rows, label_set.seed)
    unknown = [p for p in label_set.playbooks if p not in playbook_rules]
    if unknown:
        raise RecipeError(
            f"[eval.label_sets] {label_set.name}: unknown playbook(s) {unknown}",
            hint=f"playbooks of the recipe's rulebooks: {', '.join(sorted(playbook_rules)[:12])}...",
        )
    asks = ([PLAIN] if label_set.plain else []) + list(label_set.playbooks)
    rows = []
    for clause in clauses:
        for ask in asks:
            rules = [] if ask == PLAIN else rules_for_text(clause.text, playbook_rules[ask])
            listed = [(r.id, r.title, r.severity) for r in rules]
            rows.append(
                EvalRow(
                    id=f"{clause.id}:{ask}",
                    set=f"{label_set.name}:{ask}",
                    instruction=audit_instruction(
                        clause.text, None if ask == PLAIN else ask, listed
                    ),
                    clause=clause.text,
                    reference_text=None,
                    reference=None,
                    source=label_set.name,
                    meta={
                        "categories": list(clause.categories),
                        "ask": ask,
                        "task": "labelled",
                        "max_new_tokens": label_set.max_new_tokens,
                    },
                )
            )
    return rows


def pick(clauses: Sequence[Any], max_rows: int, seed: int) -> list[Any]:
    """All clauses when they fit; else, in a seeded hash order, first round-robin over the
    red-flag categories (so rare ones keep their positives) up to half the budget, then the rest."""
    from legalbuild.curation.cuad import RED_FLAGS

    order = sorted(clauses, key=lambda c: hashlib.sha256(f"{seed}:{c.id}".encode()).hexdigest())
    if len(order) <= max_rows:
        return list(clauses)
    chosen: dict[str, Any] = {}
    queues = [[c for c in order if name in c.categories] for name in RED_FLAGS]
    while len(chosen) < max_rows // 2 and any(queues):
        for queue in queues:
            while queue and queue[0].id in chosen:
                queue.pop(0)
            if queue and len(chosen) < max_rows // 2:
                clause = queue.pop(0)  # (chosen[queue[0].id] = queue.pop(0) pops before it reads)
                chosen[clause.id] = clause
    for clause in order:
        if len(chosen) >= max_rows:
            break
        chosen.setdefault(clause.id, clause)
    return [c for c in clauses if c.id in chosen]


def score_label_sets(
    rows: Sequence[EvalRow], answers: dict[str, Sequence[Answer]]
) -> dict[str, Any]:
    """{set name: {"clauses", "asks": {ask: {answerer: scores}}}} (see the module docstring)."""
    out: dict[str, Any] = {}
    for name in sorted({r.source for r in rows}):
        mine = [i for i, r in enumerate(rows) if r.source == name]
        asks: dict[str, Any] = {}
        for ask in dict.fromkeys(rows[i].meta["ask"] for i in mine):
            index = [i for i in mine if rows[i].meta["ask"] == ask]
            asks[ask] = {
                model: score_answers([rows[i] for i in index], [given[i] for i in index])
                for model, given in answers.items()
            }
        out[name] = {"clauses": len(mine) // max(1, len(asks)), "asks": asks}
    return out


def score_answers(rows: Sequence[EvalRow], answers: Sequence[Answer]) -> dict[str, Any]:
    from legalbuild.curation.cuad import CATEGORIES, RED_FLAGS, finding_topics, type_topics

    audits = [parse_audit(a.text) for a in answers]
    labels = [set(r.meta["categories"]) for r in rows]
    present = [c for c in CATEGORIES if any(c in lab for lab in labels)]
    red = set(RED_FLAGS)
    return {
        "rows": len(rows),
        "unparseable_rate": round(sum(a is None for a in audits) / max(1, len(rows)), 4),
        "topic": _both(labels, [finding_topics(a) for a in audits], present),
        "clause_type": _both(labels, [type_topics(a) for a in audits], present),
        "flags_any_risk": balanced_binary(
            [bool(lab & red) for lab in labels],
            [a is not None and a.risk != "none" for a in audits],
        ),
    }


def _both(labels: list[set[str]], predicted: list[set[str]], present: list[str]) -> dict[str, Any]:
    """Macro BA over the red-flag categories (what the targets are stated on) with its interval,
    the macro over every category present, and the per-category figures."""
    from legalbuild.curation.cuad import RED_FLAGS

    flagged = balanced_table(labels, predicted, [c for c in RED_FLAGS if c in present])
    every = balanced_table(labels, predicted, present)
    return {
        "macro_ba": flagged["macro_ba"],
        "macro_interval": flagged["macro_interval"],
        "red_flag_categories_scored": flagged.get("scored_categories", 0),
        "macro_ba_all": every["macro_ba"],
        "categories": every["categories"],
    }


def summary_lines(result: dict[str, Any], log: Callable[[str], None]) -> None:
    """One log line per set, way of asking and answerer: macro BA on topic and flags-any-risk."""
    for name, data in result.items():
        for ask, models in data["asks"].items():
            cells = []
            for model, s in models.items():
                topic = s["topic"]["macro_ba"]
                cells.append(f"{model} {topic if topic is not None else '-'}")
            log(f"{name} ({ask}, {data['clauses']} clauses) topic macro BA: {'; '.join(cells)}")
