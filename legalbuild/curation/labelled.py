"""Pairs from clauses labelled by people (`[[curate.labelled]]`): the labels, not the regexes,
decide the answer, so the model learns what the rulebook's patterns miss.

Each labelled clause (legalbuild/curation/cuad.py reads them) becomes one pair, asked either
- plainly (`plain_share`): `Audit this contract clause:` and the clause, as an OpenAI client asks;
- or as `legalbuild audit --playbook NAME` asks: the playbook's rules that apply to the clause
  listed in the question (curation/review.py `rules_for_text`, the function serving uses).
The answer is the table's (`cuad.answer_for`): a `Clause type:` line, then a finding per red-flag
category, citing a listed rule where one means that red flag. Every choice is seeded by the
clause's id, so the pairs do not depend on file order.

With `balance`, rare red-flag categories are not drowned by frequent ones: a clause's weight is
1 / (clauses of its rarest red-flag category), clauses of no red-flag category weigh `neg_weight`
times an average red-flag clause, and a clause may be used up to `max_repeat` times, each copy
asked another way (plainly, then per playbook), so no two pairs are the same question.
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
    if not source.balance:
        return [_pair(c, source, by_playbook, seed) for c in clauses[: source.pairs]]
    picked = []
    for clause, copies in balanced_copies(clauses, source, seed):
        picked += [_pair(clause, source, by_playbook, seed, copy) for copy in range(copies)]
    picked.sort(key=lambda p: rng_for(seed, source.name, p.instruction).random())
    return picked[: source.pairs]


def balanced_copies(clauses: list[Any], source: Any, seed: int) -> list[tuple[Any, int]]:
    """(clause, how many pairs it gives) so that about `source.pairs` pairs weigh every red-flag
    category alike (see the module docstring); fractions are rounded by a seeded draw."""
    count = {c: sum(c in x.categories for x in clauses) for c in cuad.RED_FLAGS}
    weights = []
    for clause in clauses:
        flags = [count[c] for c in clause.categories if c in cuad.RED_FLAGS and count[c]]
        weights.append(1 / min(flags) if flags else None)
    red = [w for w in weights if w is not None]
    mean = sum(red) / len(red) if red else 1.0
    weights = [w if w is not None else source.neg_weight * mean for w in weights]
    scale = source.pairs / sum(weights) if weights else 0.0
    ways = 1 + len(source.playbooks)  # each copy is asked another way
    out = []
    for clause, weight in zip(clauses, weights, strict=True):
        k = min(weight * scale, source.max_repeat, ways)
        whole = int(k)
        extra = rng_for(seed, source.name, clause.id, "copies").random() < k - whole
        if whole + extra:
            out.append((clause, whole + extra))
    return out


def _pair(
    clause: Any, source: Any, by_playbook: dict[str, list[Rule]], seed: int, copy: int = 0
) -> Pair:
    playbook = ask_of(clause, source, seed, copy)
    rules = rules_for_text(clause.text, by_playbook[playbook]) if playbook else []
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


def ask_of(clause: Any, source: Any, seed: int, copy: int = 0) -> str | None:
    """The playbook a copy of the clause is asked with (None: plainly). The first copy is plain
    with probability `plain_share`, else names a seeded playbook; copy k is the k-th next way in
    the cycle (plain, *playbooks), so the copies of one clause are different questions."""
    if not source.playbooks:
        return None
    rng = rng_for(seed, source.name, clause.id, "ask")
    ways = [None, *source.playbooks]
    first = 0 if rng.random() < source.plain_share else 1 + rng.randrange(len(source.playbooks))
    return ways[(first + copy) % len(ways)]


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
