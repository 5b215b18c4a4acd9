"""One clause seen through one playbook: which rules apply to it (`applicable_rules`, also at
serving time through `rules_for_text`), which fire, and the answers curation writes for it (the
audit block, the explanation, the revision).

Which rules apply: the presence rules (`forbids_*`, `max_value`) of the playbook always, since their
patterns are their own scope; the absence rules (`requires_any`) only when they speak about the
clause's type (a governing-law clause is not expected to hold a liability cap).
"""

from __future__ import annotations

from dataclasses import dataclass

from legalbuild.answer_format import Audit, Finding, overall_risk, render_audit
from legalbuild.curation.clauses import Clause, classify_clause, type_label
from legalbuild.curation.corpora import Document
from legalbuild.curation.defects import sentences
from legalbuild.curation.rulebook import ANY_DOMAIN, Rule, evidence, normalize_text
from legalbuild.prompting import rule_catalogue


@dataclass
class Review:
    """One clause seen through one playbook."""

    clause: Clause
    playbook: str
    rules: list[Rule]  # the rules that apply to this clause
    findings: list[Rule]  # those that fire
    engaged: bool  # the playbook has something to say (else no audit pair: only defects)


# Types that name one specific clause: an absence rule of such a type can judge a single clause of
# that type (a liability clause without a cap). Absence rules of the broad types (confidentiality in
# an NDA, data protection, IP, other: escrow, export control...) speak about a whole contract and
# are used in `missing` tasks only.
CLAUSE_LEVEL_ABSENCE_TYPES = frozenset(
    {"limitation_of_liability", "governing_law", "termination", "warranty", "payment", "renewal",
     "indemnity", "non_compete", "assignment"}
)  # fmt: skip


def applicable_rules(clause: Clause, playbook_rules: list[Rule]) -> list[Rule]:
    """Presence rules always; absence rules of the clause's own type when that type names one
    specific clause (CLAUSE_LEVEL_ABSENCE_TYPES)."""
    return [
        r
        for r in playbook_rules
        if not r.flags_absence
        or (r.clause_type == clause.clause_type and r.clause_type in CLAUSE_LEVEL_ABSENCE_TYPES)
    ]


def catalogue(rules: list[Rule]) -> str:
    """The `Rules to check:` block of an audit question (see `legalbuild.prompting`)."""
    return rule_catalogue((r.id, r.title, r.severity) for r in rules)


def rules_for_text(text: str, playbook_rules: list[Rule]) -> list[Rule]:
    """The rules of one playbook that apply to a clause known only by its text (serving time):
    the clause is typed as curation types it, then `applicable_rules` decides."""
    kind = classify_clause("", text)
    clause = Clause(doc_id="", source="", heading="", text=text, position=0, clause_type=kind)
    return applicable_rules(clause, playbook_rules)


def engages(clause: Clause, rules: list[Rule]) -> bool:
    """A playbook has something to say about the clause: an absence rule of its type, or a
    presence rule whose pattern appears in it (even if saved by an `unless_any`)."""
    text = normalize_text(clause.text)
    return any(r.flags_absence or any(p.search(text) for p in r.check.patterns) for r in rules)


def review(clause: Clause, playbook: str, rules: list[Rule]) -> Review | None:
    applicable = applicable_rules(clause, rules)
    if not applicable:
        return None
    findings = [r for r in applicable if r.violated(clause.text)]
    return Review(
        clause,
        playbook,
        applicable,
        findings,
        engaged=bool(findings) or engages(clause, applicable),
    )


def playbooks_for(doc: Document, by_playbook: dict[str, list[Rule]]) -> list[str]:
    return [
        name
        for name, rules in by_playbook.items()
        if doc.domain == ANY_DOMAIN or rules[0].domain in (doc.domain, ANY_DOMAIN)
    ]


# ------------------------------------------------------------------------------ answers
def finding_of(rule: Rule) -> Finding:
    return Finding(
        title=rule.title,
        rule_id=rule.id,
        severity=rule.severity,
        why=rule.why,
        fix=rule.suggestion or f"Use language such as: {rule.fallback}",
        suggested_clause=rule.fallback,
    )


def audit_answer(findings: list[Rule], clean_note: str) -> str:
    ordered = sorted(findings, key=lambda r: (("high", "medium", "low").index(r.severity), r.id))
    items = [finding_of(r) for r in ordered]
    return render_audit(
        Audit(risk=overall_risk(items), findings=items, note=clean_note if not items else "")
    )


def clean_note(clause_type: str, playbook: str, n_rules: int) -> str:
    return f"The {type_label(clause_type)} clause raises none of the {n_rules} {playbook} checks that apply to it."


def plain_clean_note(clause_type: str) -> str:
    """The clean verdict of a plain question: no list of checks was shown, so none is counted."""
    return f"No red flag found in this {type_label(clause_type)} clause."


def explain_answer(rule: Rule, text: str) -> str:
    found = evidence(rule, text)
    if rule.check.kind == "requires_any":
        where = "Nothing in the clause provides it: the language this rule looks for is absent."
    elif rule.check.kind == "max_value":
        where = f'The clause sets "{found}", above the limit of {rule.check.max:g}.'
    else:
        where = f'The clause says: "{found}".'
    ask = rule.suggestion or "Replace it with balanced language."
    lines = [
        f"{rule.title} (rule {rule.id}, severity {rule.severity}).",
        f"{rule.description} {where}",
        f"Why it matters: {rule.why}",
        f"What to ask for: {ask}",
    ]
    if rule.fallback:
        lines.append(f"Suggested clause: {rule.fallback}")
    return "\n".join(lines)


def revise(text: str, findings: list[Rule], rules: list[Rule]) -> str | None:
    """A revision that passes every applicable rule: offending sentences out, fallbacks in; None
    when the rules' regexes do not confirm it."""
    parts = sentences(text)
    for rule in findings:
        if not rule.flags_absence:
            parts = [s for s in parts if not any(p.search(s) for p in rule.check.patterns)]
    additions = []
    for rule in findings:
        if rule.fallback and rule.violated(" ".join([*parts, *additions])):
            additions.append(rule.fallback)
    revised = " ".join([*parts, *additions])
    if not revised or any(r.violated(revised) for r in rules):
        return None
    return revised
