"""Generate audit pairs from clauses and rules, then pick a balanced, seeded selection.

Task kinds (one `task` value each):
- `audit`   a real clause, audited with one playbook: the findings its rules raise (each confirmed by
            the rule's regex) or an explicit "Findings: none" answer (a clean clause: a rule's
            pattern appears but its exception saves it, or none of the listed rules applies);
- `defect`  a clause that passes a rule, changed by a known edit so that it fails it (defects.py);
- `fix`     a flagged clause: the audit block, then a revised clause that passes the rules;
- `explain` why one rule flags one clause, in prose;
- `missing` a short multi-clause contract from one document: which `requires_any` rules it fails.

Which rules apply to a clause and what its review answers: review.py; the Pair record and the
balanced pick: selection.py.
Every random choice comes from a Random seeded by (seed, a stable key), so the output does not
depend on iteration order or PYTHONHASHSEED.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable

from legalbuild.answer_format import overall_risk
from legalbuild.curation.clauses import Clause, split_clauses, type_label
from legalbuild.curation.corpora import Document
from legalbuild.curation.defects import Defect, inject_defect, sentences
from legalbuild.curation.review import (
    Review,
    audit_answer,
    catalogue,
    clean_note,
    explain_answer,
    finding_of,
    plain_clean_note,
    playbooks_for,
    review,
    revise,
)
from legalbuild.curation.rulebook import Rule, Rulebook, normalize_text
from legalbuild.curation.selection import TASKS, Pair, quotas, rng_for, select_pairs
from legalbuild.prompting import AUDIT_INSTRUCTION, PLAYBOOK_SUFFIX

POOL_FACTOR = 4  # stop scanning a large source once it offers this many candidates per pair wanted
PLAYBOOKS_PER_CLAUSE = 2  # a clause is reviewed with at most this many (seeded) engaged playbooks
SMALL_SOURCE_CLAUSES = 300  # below this, a source yields every defect and explanation it can

AUDIT_TEMPLATES = (
    "Review this {type} clause with the {playbook} playbook ({perspective}). Report every red flag "
    "in the audit format, or say that there is none.\n\nClause:\n{clause}",
    "Audit the following contract clause against the {playbook} red-flag rules ({perspective}).\n\n"
    '"""\n{clause}\n"""',
    "Clause under review ({type}):\n{clause}\n\nPlaybook: {playbook}, {perspective}. List the findings "
    "with their rule ids and severities.",
    "Does this clause contain anything the {playbook} playbook would flag? Answer in the structured "
    "audit format.\n\nClause text:\n{clause}",
    "Check the clause below for risks under the {playbook} playbook ({perspective}).\n---\n{clause}\n---",
    "I'm {perspective}. Run the {playbook} checks on this clause and give me the audit.\n\n{clause}",
    AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX,  # the wording `legalbuild audit` and eval use
)
DEFECT_TEMPLATES = (
    "Here is a clause from a draft we received. Review it with the {playbook} playbook "
    "({perspective}) and report the red flags in the audit format.\n\n{clause}",
    "Counterparty draft, {type} clause:\n{clause}\n\nAudit it against the {playbook} rules and list "
    "any findings with rule id and severity.",
    "Before we sign: does this {type} clause raise any {playbook} red flags ({perspective})?\n\n"
    '"""\n{clause}\n"""',
    "Screen this clause for problems using the {playbook} playbook. Use the audit format.\n\nClause:\n{clause}",
    "Playbook: {playbook} ({perspective}).\nClause:\n{clause}\n\nWhat is wrong with this clause, if anything?",
    AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX,
)
FIX_TEMPLATES = (
    "Rewrite this clause so that it passes the {playbook} playbook ({perspective}). Start with the "
    "audit, then give the revised clause.\n\nClause:\n{clause}",
    "Fix the red flags in the following {type} clause under the {playbook} rules and propose "
    "replacement language.\n\n{clause}",
    "Redline this clause for the {playbook} review ({perspective}): list what is wrong, then write "
    'a corrected version.\n\n"""\n{clause}\n"""',
    "Propose a revised clause that resolves every {playbook} finding in the clause below.\n---\n{clause}\n---",
    "Our playbook is {playbook}. Audit this clause and suggest how to reword it.\n\nClause text:\n{clause}",
)
EXPLAIN_TEMPLATES = (
    'Explain why the clause below triggers "{title}" under the {playbook} playbook.\n\n{clause}',
    'Why is this clause a risk when {perspective}? Focus on the rule "{title}" ({rule_id}).\n\nClause:\n{clause}',
    'The {playbook} review flagged this clause as "{title}". Explain the problem in plain language '
    'and what to ask for instead.\n\n"""\n{clause}\n"""',
    "In two or three sentences, why does rule {rule_id} ({title}) fire on this {type} clause?\n\n{clause}",
    'Clause:\n{clause}\n\nA reviewer marked it "{title}" ({severity} severity). Explain why that '
    "matters and what a better clause would say.",
)
MISSING_TEMPLATES = (
    "Here is a short contract. Using the {playbook} playbook ({perspective}), list the required "
    "protections it is missing, in the audit format.\n\n{contract}",
    "Which clauses that the {playbook} playbook expects are absent from this agreement? Report "
    "each gap as a finding with rule id and severity.\n\n{contract}",
    "Check this contract for missing clauses ({perspective}). Only report what is missing, not what "
    'is badly worded.\n\n"""\n{contract}\n"""',
    "Contract excerpt:\n{contract}\n\nPlaybook: {playbook}. What required terms does it lack?",
    "Do a missing-clause review of the agreement below with the {playbook} rules and answer in the "
    "audit format.\n---\n{contract}\n---",
)


def perspective(rule: Rule) -> str:
    """Whose side the playbook takes, as a phrase that starts with "reviewing": the playbook
    descriptions say it two ways ("reviewing NDAs from the recipient side", "Tenant-side review of
    commercial lease agreements — ..."); both become the first form, without the dash's aside."""
    text = (rule.playbook_description or f"the {rule.playbook} playbook").split(" — ")[0]
    text = text.strip().rstrip(".")
    for prefix in ("Red-flag rules for reviewing ", "Red-flag rules for "):
        if text.startswith(prefix):
            text = "reviewing " + text[len(prefix) :]
    text = text.replace("Licensee-side review of", "reviewing, as licensee,")
    side = _SIDE_REVIEW.fullmatch(text)
    if side:
        who = side["side"][0].lower() + side["side"][1:] + (side["aside"] or "")
        text = f"reviewing {side['what']} from the {who} side"
    return text if text.startswith("reviewing") else f"reviewing with the {rule.playbook} playbook"


_SIDE_REVIEW = re.compile(r"(?P<side>.+?)[- ]side(?P<aside> \([^)]*\))? review of (?P<what>.+)")


def fill(template: str, **values: str) -> str:
    return template.format(**values)


def pick(rng: random.Random, templates: tuple[str, ...]) -> str:
    return templates[rng.randrange(len(templates))]


# ---------------------------------------------------------------------------- per-clause pairs
def clause_pairs(
    rv: Review, seed: int, generous: bool = False, plain_share: float = 0.0
) -> list[Pair]:
    """The audit, fix, explain and defect pairs of one clause under one playbook. `generous` (a
    small source) explains every finding and tries a defect for every passing rule; a
    `plain_share` of the audits are asked with the plain question (no playbook, no rule list)."""
    c = rv.clause
    rng = rng_for(seed, c.key, rv.playbook)
    first = rv.rules[0]
    values = {
        "type": type_label(c.clause_type),
        "playbook": rv.playbook,
        "perspective": perspective(first),
    }
    text = normalize_text(c.text)
    base = {"doc_id": c.doc_id, "source": c.source, "clause_type": c.clause_type, "clause": text}
    out: list[Pair] = []

    answer = audit_answer(rv.findings, clean_note(c.clause_type, rv.playbook, len(rv.rules)))
    rules = catalogue(rv.rules)
    primary = _primary(rv.findings)
    # Every review gets its audit: a clean clause the playbook has nothing to say about is the
    # common case in a real contract, and a model that never saw one answers every clause with a
    # finding (measured: 94% false alarms on clean clauses when only engaged ones were used).
    if rv.engaged or generous or not rv.findings:
        if rng_for(seed, c.key, rv.playbook, "plain").random() < plain_share:
            question = AUDIT_INSTRUCTION.format(clause=text)  # what an OpenAI client sends
            plain = audit_answer(rv.findings, plain_clean_note(c.clause_type))
            question_answer = (question, plain)
        else:
            question_answer = (
                fill(pick(rng, AUDIT_TEMPLATES), clause=text, **values) + rules,
                answer,
            )
        out.append(
            Pair(
                *question_answer, **base,
                rule_id=primary.id if primary else None, severity=primary.severity if primary else "none",
                task="audit", verified_by="regex", clean=not rv.findings,
            )
        )  # fmt: skip
    if rv.findings:
        revised = revise(text, rv.findings, rv.rules)
        if revised:
            out.append(
                Pair(
                    fill(pick(rng, FIX_TEMPLATES), clause=text, **values) + rules,
                    f"{answer}\n\nRevised clause:\n{revised}", **base,
                    rule_id=primary.id, severity=primary.severity, task="fix", verified_by="regex",
                )
            )  # fmt: skip
        explained = rv.findings if generous else [rv.findings[rng.randrange(len(rv.findings))]]
        out += [_explain(rule, text, values, base, rng, "regex") for rule in explained]

    passing = [r for r in rv.rules if r not in rv.findings]
    rng.shuffle(passing)
    for rule in passing if generous else passing[:1]:
        defect = inject_defect(text, rule, rng_for(seed, c.key, rule.id))
        if defect is not None:
            out += _defect_pairs(defect, rv, rule, values, base, rng)
    return out


def _primary(findings: list[Rule]) -> Rule | None:
    if not findings:
        return None
    return min(findings, key=lambda r: (("high", "medium", "low").index(r.severity), r.id))


def _explain(
    rule: Rule, text: str, values: dict, base: dict, rng: random.Random, verified: str
) -> Pair:
    instruction = fill(
        pick(rng, EXPLAIN_TEMPLATES),
        clause=text,
        title=rule.title,
        rule_id=rule.id,
        severity=rule.severity,
        **values,
    )
    return Pair(
        instruction,
        explain_answer(rule, text),
        **base,
        rule_id=rule.id,
        severity=rule.severity,
        task="explain",
        verified_by=verified,
    )


def _defect_pairs(
    defect: Defect, rv: Review, rule: Rule, values: dict, base: dict, rng: random.Random
) -> list[Pair]:
    base = {**base, "clause": defect.edited}
    findings = [r for r in rv.rules if r.violated(defect.edited)]
    answer = audit_answer(findings, "")
    pairs = [
        Pair(
            fill(pick(rng, DEFECT_TEMPLATES), clause=defect.edited, **values) + catalogue(rv.rules), answer, **base,
            rule_id=rule.id, severity=overall_risk([finding_of(r) for r in findings]), task="defect",
            verified_by="construction", edit=defect.edit,
        )
    ]  # fmt: skip
    if not rv.findings:  # the original passes every rule: it is the verified fix of the edit
        pairs.append(
            Pair(
                fill(pick(rng, FIX_TEMPLATES), clause=defect.edited, **values) + catalogue(rv.rules),
                f"{answer}\n\nRevised clause:\n{defect.original}", **base,
                rule_id=rule.id, severity=rule.severity, task="fix", verified_by="construction", edit=defect.edit,
            )
        )  # fmt: skip
    pairs.append(_explain(rule, defect.edited, values, base, rng, "construction"))
    pairs[-1].edit = defect.edit
    return pairs


# --------------------------------------------------------------------------- missing clauses
def missing_pairs(
    doc_clauses: list[Clause],
    playbook: str,
    rules: list[Rule],
    seed: int,
    limit: int = 4,
    draws: int = 1,
    max_chars: int = 3200,
) -> list[Pair]:
    """Short contracts from one document, built so that a `requires_any` rule is missing; `draws`
    different clause subsets per rule (a small source makes more of its few documents)."""
    required = [r for r in rules if r.flags_absence]
    if len(doc_clauses) < 3 or not required:
        return []
    rng = rng_for(seed, doc_clauses[0].doc_id, playbook, "missing")
    out = []
    rng.shuffle(required)
    for rule in [r for r in required for _ in range(draws)]:
        holders = [c for c in doc_clauses if not rule.violated(c.text)]
        others = [c for c in doc_clauses if rule.violated(c.text)]
        if not holders or len(others) < 3:
            continue  # no clause of this document provides it, or too little left without it
        chosen = _contract_clauses(others, rng, max_chars)
        contract = "\n\n".join(f"{i}. {normalize_text(c.text)}" for i, c in enumerate(chosen, 1))
        if not rule.violated(contract):
            continue
        findings = [r for r in required if r.violated(contract)]
        values = {"playbook": playbook, "perspective": perspective(rule)}
        out.append(
            Pair(
                fill(pick(rng, MISSING_TEMPLATES), contract=contract, **values) + catalogue([r for r in rules if r.flags_absence]),
                audit_answer(findings, ""),
                doc_id=chosen[0].doc_id, source=chosen[0].source, rule_id=rule.id, severity=rule.severity,
                clause_type="contract", task="missing", verified_by="construction", clause=contract,
            )
        )  # fmt: skip
        if len(out) >= limit * draws:
            break
    return out


def _contract_clauses(candidates: list[Clause], rng: random.Random, max_chars: int) -> list[Clause]:
    pool = sorted(rng.sample(candidates, min(len(candidates), 8)), key=lambda c: c.position)
    chosen, size = [], 0
    for c in pool:
        if size + len(c.text) > max_chars:
            continue
        chosen.append(c)
        size += len(c.text)
        if len(chosen) == 5:
            break
    return chosen if len(chosen) >= 3 else pool[:3]


# ------------------------------------------------------------------------------- generation
def candidate_pairs(
    documents: list[Document],
    rulebook: Rulebook,
    settings,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Pair], dict]:
    """Candidates from every source; large sources are scanned in a seeded order and stopped once
    every task has POOL_FACTOR times its quota from them."""
    seed = settings.seed
    by_playbook = rulebook.by_playbook()
    need = quotas(settings.target_pairs, settings.task_mix)
    need["clean"] = round(need["audit"] * settings.clean_share)
    need["audit"] -= need["clean"]
    by_source: dict[str, list[Document]] = defaultdict(list)
    for doc in documents:
        by_source[doc.source].append(doc)
    pairs: list[Pair] = []
    stats = {"documents": Counter(), "clauses": Counter(), "clauses_reviewed": Counter()}
    seen_texts: set[str] = set()  # a clause repeated in several documents is used once
    for source, docs in sorted(by_source.items()):
        docs = sorted(docs, key=lambda d: rng_for(seed, d.doc_id).random())
        split = [(d, _unseen(_clauses_of(d, settings), seen_texts)) for d in docs]
        generous = sum(len(c) for _, c in split) < SMALL_SOURCE_CLAUSES
        counts: Counter = Counter()
        for doc, clauses in split:
            stats["documents"][source] += 1
            stats["clauses"][source] += len(clauses)
            names = playbooks_for(doc, by_playbook)
            if not _full(counts, need, ("audit", "clean", "defect", "fix", "explain")):
                for clause in clauses:
                    stats["clauses_reviewed"][source] += 1
                    for rv in _reviews(clause, names, by_playbook, seed, generous):
                        for p in clause_pairs(rv, seed, generous, settings.plain_share):
                            counts["clean" if p.clean else p.task] += 1
                            pairs.append(p)
            if not _full(counts, need, ("missing",)):
                for name in names:
                    for p in missing_pairs(
                        clauses,
                        name,
                        by_playbook[name],
                        seed,
                        draws=3 if generous else 1,
                        max_chars=settings.max_contract_chars,
                    ):
                        counts[p.task] += 1
                        pairs.append(p)
            if _full(counts, need, (*TASKS, "clean")):
                break
        if log:
            log(
                f"{source}: {stats['documents'][source]} documents, {stats['clauses_reviewed'][source]} "
                f"clauses reviewed, {sum(counts.values())} candidate pairs {dict(counts)}"
            )
    return pairs, stats


def _clauses_of(doc: Document, settings) -> list[Clause]:
    return split_clauses(
        doc.text, doc.doc_id, doc.source, settings.min_clause_chars, settings.max_clause_chars
    )


def _unseen(clauses: list[Clause], seen: set[str]) -> list[Clause]:
    """Clauses that share no long sentence with an earlier document's clauses. Licence texts come
    in versions (two EULA editions share most paragraphs), and a shared paragraph would sit on both
    sides of the doc_id split."""
    out = []
    for clause in clauses:
        keys = {_fold(s) for s in sentences(clause.text) if len(s) >= 40}
        if keys & seen:
            continue
        seen.update(keys)
        out.append(clause)
    return out


def _fold(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _full(counts: Counter, need: dict[str, int], tasks) -> bool:
    """Enough candidates for these tasks: twice each quota, and POOL_FACTOR times their sum."""
    enough_each = all(counts[t] >= 2 * need[t] for t in tasks)
    return enough_each and sum(counts[t] for t in tasks) >= POOL_FACTOR * sum(
        need[t] for t in tasks
    )


def _reviews(
    clause: Clause, names: list[str], by_playbook: dict, seed: int, generous: bool
) -> list[Review]:
    found = [rv for name in names if (rv := review(clause, name, by_playbook[name])) is not None]
    if generous or len(found) <= PLAYBOOKS_PER_CLAUSE:
        return found
    return rng_for(seed, clause.key, "playbooks").sample(found, PLAYBOOKS_PER_CLAUSE)


def generate_pairs(
    documents: list[Document], rulebook: Rulebook, settings, *, log=None
) -> tuple[list[Pair], dict]:
    candidates, stats = candidate_pairs(documents, rulebook, settings, log=log)
    stats["candidates"] = Counter(p.task for p in candidates)
    return select_pairs(candidates, settings), stats
