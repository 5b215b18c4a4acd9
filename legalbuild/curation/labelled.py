"""Pairs from clauses labelled by people (`[[curate.labelled]]`): the labels, not the regexes,
decide the answer, so the model learns what the rulebook's patterns miss.

Each labelled clause (legalbuild/curation/cuad.py reads them) becomes one pair, asked either
- plainly (`plain_share`): `Audit this contract clause:` and the clause, as an OpenAI client asks;
- or as `legalbuild audit --playbook NAME` asks: the playbook's rules that apply to the clause
  listed in the question (curation/review.py `rules_for_text`, the function serving uses).
The answer is the table's (`cuad.answer_for`): a `Clause type:` line, then a finding per red-flag
category, citing a listed rule where one means that red flag. Every choice is seeded by the
clause's id, so the pairs do not depend on file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legalbuild.curation import cuad
from legalbuild.curation.review import finding_of, rules_for_text
from legalbuild.curation.rulebook import Rule
from legalbuild.curation.selection import Pair, rng_for
from legalbuild.errors import RecipeError
from legalbuild.prompting import audit_instruction

TASK = "labelled"


def labelled_pairs(
    source: Any, path: Path, by_playbook: dict[str, list[Rule]], seed: int
) -> list[Pair]:
    """Up to `source.pairs` pairs from the labelled clauses in `path` (a seeded pick)."""
    unknown = [p for p in source.playbooks if p not in by_playbook]
    if unknown:
        raise RecipeError(
            f"[curate.labelled] {source.name}: unknown playbook(s) {unknown}",
            hint=f"playbooks of the recipe's rulebooks: {', '.join(sorted(by_playbook)[:12])}...",
        )
    clauses = cuad.read_labelled(path)
    clauses.sort(key=lambda c: rng_for(seed, source.name, c.id).random())
    return [_pair(c, source, by_playbook, seed) for c in clauses[: source.pairs]]


def _pair(clause: Any, source: Any, by_playbook: dict[str, list[Rule]], seed: int) -> Pair:
    rng = rng_for(seed, source.name, clause.id, "ask")
    playbook, rules = None, []
    if source.playbooks and rng.random() >= source.plain_share:
        playbook = source.playbooks[rng.randrange(len(source.playbooks))]
        rules = rules_for_text(clause.text, by_playbook[playbook])
    listed = [(r.id, r.title, r.severity) for r in rules]
    answer = cuad.answer_for(clause.categories, [finding_of(r) for r in rules])
    flags = [c for c in cuad.ordered(clause.categories) if cuad.CATEGORIES[c].red_flag]
    primary = cuad.CATEGORIES[flags[0]] if flags else None
    return Pair(
        instruction=audit_instruction(clause.text, playbook, listed),
        output=answer,
        doc_id=f"{source.name}:{clause.document}",
        source=source.name,
        rule_id=primary.rule_id if primary else None,
        severity=max_severity(flags),
        clause_type=cuad.ordered(clause.categories)[0],
        task=TASK,
        verified_by=source.labels,
        clause=clause.text,
        clean=not flags,
    )


def max_severity(red_flags: Sequence[str]) -> str:
    order = ("high", "medium", "low")
    severities = [cuad.CATEGORIES[c].severity for c in red_flags]
    return next((s for s in order if s in severities), "none")


def labelled_sources(
    settings: Any, rulebook: Any, recipe_dir: Path, downloads: Path | None, log: Any
) -> dict[str, list[Pair]]:
    """{source name: its pairs} for every `[[curate.labelled]]` (curation/labelled.py)."""
    from legalbuild.data.remote import locate

    out = {}
    for source in settings.labelled:
        path = locate(source, recipe_dir, downloads, log)
        out[source.name] = labelled_pairs(source, path, rulebook.by_playbook(), settings.seed)
        log(f"{source.name}: {len(out[source.name])} pairs from labelled clauses")
    return out


def card_entry(source: Any, pairs: int) -> dict[str, Any]:
    """The source's entry in the dataset card (and so in the export's provenance)."""
    return {
        "name": source.name,
        "kind": f"labelled:{source.labels}",
        "licence": source.licence,
        "attribution": cuad.ATTRIBUTION,
        "pairs": pairs,
    }
