"""The dataset card: where the pairs come from (licences, attribution) and what they contain."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from legalbuild.curation.corpora import LICENCES, Document
from legalbuild.curation.rulebook import Rulebook
from legalbuild.curation.selection import Pair

REDLINE_ATTRIBUTION = {
    "licence": "MIT",
    "attribution": "redline-buddy 0.2.0 playbooks, Copyright (c) Dhruv Arora, MIT, https://github.com/dhruv1220/redline-buddy",
}


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    q = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else [ordered[0]] * 99
    )
    return {
        "min": ordered[0],
        "p10": round(q[9]),
        "p50": round(q[49]),
        "p90": round(q[89]),
        "p99": round(q[98]),
        "max": ordered[-1],
    }


def build_card(
    pairs: list[Pair],
    documents: list[Document],
    rulebook: Rulebook,
    settings,
    corpora,
    stats: dict,
    seconds: float,
) -> dict[str, Any]:
    used_docs = {p.doc_id for p in pairs}
    return {
        "pairs": len(pairs),
        "seed": settings.seed,
        "settings": settings.model_dump(),
        "sources": [_source_entry(c, documents, used_docs) for c in corpora],
        "rulebooks": _rulebook_entry(rulebook),
        "counts": {
            "task": _count(p.task for p in pairs),
            "source": _count(p.source for p in pairs),
            "severity": _count(p.severity for p in pairs),
            "clause_type": _count(p.clause_type for p in pairs),
            "rule": _count(p.rule_id or "(clean)" for p in pairs),
            "verified_by": _count(p.verified_by for p in pairs),
            "defect_edit": _count(p.edit for p in pairs if p.edit),
            "documents": len(used_docs),
            "clean_audits": sum(1 for p in pairs if p.task == "audit" and p.clean),
        },
        "shares": {
            "max_rule": _max_share(p.rule_id for p in pairs if p.rule_id),
            "max_source": _max_share(p.source for p in pairs),
            "max_severity": _max_share(p.severity for p in pairs if p.severity != "none"),
        },
        "lengths": {
            "instruction_chars": percentiles([len(p.instruction) for p in pairs]),
            "output_chars": percentiles([len(p.output) for p in pairs]),
        },
        "scan": {k: dict(v) for k, v in stats.items()},
    }


def _count(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _max_share(values) -> float:
    counts = Counter(values)
    total = sum(counts.values())
    return round(max(counts.values()) / total, 4) if total else 0.0


def _source_entry(corpus, documents: list[Document], used: set[str]) -> dict[str, Any]:
    name = corpus.name or corpus.kind
    docs = [d for d in documents if d.source == name]
    entry: dict[str, Any] = {"name": name, "kind": corpus.kind, "documents_read": len(docs)}
    if corpus.kind in LICENCES:
        entry.update(LICENCES[corpus.kind])
    else:
        entry["licence"] = corpus.licence or "unstated (set `licence` on the corpus)"
        entry["attribution"] = f"user contracts from {corpus.path}"
    entry["documents_used"] = {d.doc_id: d.licence for d in docs if d.doc_id in used}
    return entry


def _rulebook_entry(rulebook: Rulebook) -> dict[str, Any]:
    packaged = any(r.domain != "any" for r in rulebook.rules)
    return {
        "files": sorted(f.name for f in rulebook.files),  # names only: the card is keyed content
        "rules": len(rulebook.rules),
        "playbooks": len({r.playbook for r in rulebook.rules}),
        **(REDLINE_ATTRIBUTION if packaged else {"licence": "user rulebooks", "attribution": ""}),
    }


def render_card_markdown(card: dict[str, Any]) -> str:
    c = card["counts"]
    lines = [
        "# Curated legal audit pairs",
        "",
        f"{card['pairs']} pairs from {c['documents']} documents, seed {card['seed']}.",
        "",
        "## Sources and licences",
        "",
    ]
    for s in card["sources"]:
        used = (
            f"{len(s['documents_used'])} of {s['documents_read']} documents used"
            if "documents_used" in s
            else f"{s['pairs']} pairs from labelled clauses"
        )
        lines.append(
            f"- **{s['name']}** ({s['kind']}): {s['licence']}. {s['attribution']} ({used})"
        )
    rb = card["rulebooks"]
    lines += [
        f"- **rulebooks**: {rb['rules']} rules in {rb['playbooks']} playbooks; {rb['licence']}. {rb['attribution']}",
        "",
    ]
    lines += [
        "## Labels",
        "",
        f"Verified by construction (a known edit flips the rule's regex): "
        f"{c['verified_by'].get('construction', 0)}; by the rule's regex on real text: "
        f"{c['verified_by'].get('regex', 0)}; unverified: {c['verified_by'].get('none', 0)}.",
        "",
    ]
    for title, key in (
        ("Task", "task"),
        ("Source", "source"),
        ("Severity", "severity"),
        ("Clause type", "clause_type"),
        ("Defect edit", "defect_edit"),
    ):
        lines += [f"## {title}", "", "| value | pairs |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in c[key].items()]
        lines.append("")
    lines += ["## Rules (pairs citing each)", "", "| rule | pairs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in c["rule"].items()]
    lines += ["", "## Largest shares", ""]
    lines += [f"- {k}: {v:.1%}" for k, v in card["shares"].items()]
    lines += [
        "",
        "## Lengths (characters)",
        "",
        "| field | min | p10 | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for field, p in card["lengths"].items():
        lines.append(
            f"| {field} | "
            + " | ".join(str(p.get(k, "")) for k in ("min", "p10", "p50", "p90", "p99", "max"))
            + " |"
        )
    return "\n".join(lines) + "\n"
