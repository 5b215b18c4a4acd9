"""The audit of one document as one JSON-able record (the machine interface, described by
`audit.schema.json` beside this file), its summary by severity, and the Markdown and JSON writers.

Each clause has a `status`: `audited` (the answer follows the audit format: `risk` and
`findings` are set), `unparsed` (an answer, not in the format: kept in `answer`), `failed` (the
request failed after its retries: `error`), `not_audited` (Ctrl-C or --max-clauses came first).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from legalbuild.contract.split import ContractClause

SCHEMA_ID = "legalbuild-contract-audit/1"
SCHEMA_PATH = Path(__file__).with_name("audit.schema.json")
STATUSES = ("audited", "unparsed", "failed", "not_audited")
# How the summary orders clauses: the worst first.
RANKS = ("high", "medium", "low", "none", "unparsed", "failed", "not_audited")


def audit_record(
    clauses: list[ContractClause],
    results: list[dict[str, Any] | None],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The record of an audit: `meta` gives document, model, endpoint, recipe, recipe_key,
    playbook, constrained, max_tokens, temperature, concurrency, elapsed_s, interrupted."""
    rows = [clause_row(c, r) for c, r in zip(clauses, results, strict=True)]
    return {
        "schema": SCHEMA_ID,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **meta,
        "summary": summary_of(rows),
        "clauses": rows,
    }


def summary_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Clauses per risk (audited) or per status, every rank present."""
    summary = {rank: 0 for rank in RANKS}
    for row in rows:
        summary[rank_of(row)] += 1
    return summary


def clause_row(clause: ContractClause, result: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": clause.index,
        "number": clause.number,
        "heading": clause.heading,
        "clause_type": clause.clause_type,
        "location": clause.location,
        "text": clause.text,
    }
    if result is None:
        return {**row, "status": "not_audited", "risk": None, "findings": None, "note": None,
                "answer": None, "latency_s": None, "attempts": 0, "finish_reason": None,
                "prompt_tokens": None, "completion_tokens": None, "model": None, "error": None}  # fmt: skip
    parsed = result["findings"]
    status = "failed" if result["error"] else "audited" if parsed else "unparsed"
    return {
        **row,
        "status": status,
        "risk": result["risk"],
        "findings": parsed["findings"] if parsed else None,
        "note": parsed["note"] if parsed else None,
        **{k: result[k] for k in ("answer", "latency_s", "attempts", "finish_reason")},
        **{k: result[k] for k in ("prompt_tokens", "completion_tokens", "model", "error")},
    }


def rank_of(row: dict[str, Any]) -> str:
    return row["risk"] if row["status"] == "audited" else row["status"]


def flagged(row: dict[str, Any]) -> bool:
    """A clause that gets a comment: the model found something."""
    return row["status"] == "audited" and bool(row["findings"])


def by_severity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The clauses worst first (document order within a rank)."""
    return sorted(rows, key=lambda r: (RANKS.index(rank_of(r)), r["index"]))


def location_text(location: dict[str, Any]) -> str:
    unit, first, last = location["unit"], location["first"], location["last"]
    return f"{unit} {first}" if first == last else f"{unit}s {first}-{last}"


def clause_label(row: dict[str, Any]) -> str:
    return " ".join(p for p in (row["number"], row["heading"]) if p) or f"clause {row['index']}"


def comment_text(row: dict[str, Any]) -> str:
    """What a reviewer reads beside the clause: risk, then each finding's title, why, fix and
    suggested clause."""
    lines = [f"Risk: {row['risk']}"]
    for f in row["findings"] or []:
        lines.append(f"{f['title']} [{f['rule_id']}] ({f['severity']})")
        for name, label in (("why", "Why"), ("fix", "Fix"), ("suggested_clause", "Suggested")):
            if f.get(name):
                lines.append(f"{label}: {f[name]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- writers
def write_json(record: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_markdown(record: dict[str, Any], path: Path) -> None:
    path.write_text(render_markdown(record), encoding="utf-8")


def render_markdown(record: dict[str, Any]) -> str:
    doc = record["document"]
    out = [
        f"# Audit of {doc['name']}",
        "",
        f"Model `{record['model']}` at {record['endpoint']}; {len(record['clauses'])} clauses; "
        f"{record['elapsed_s']:.1f} s" + (" (interrupted)" if record["interrupted"] else "") + ".",
        "",
        "| risk | clauses |",
        "| --- | ---: |",
        *(f"| {rank.replace('_', ' ')} | {n} |" for rank, n in record["summary"].items() if n),
        "",
    ]
    for row in record["clauses"]:
        out.append(f"## {row['index']}. {clause_label(row)} ({location_text(row['location'])})")
        out += ["", "> " + row["text"], "", f"**{badge_text(row)}**", ""]
        for f in row["findings"] or []:
            out.append(f"- **{f['title']}** `{f['rule_id']}` ({f['severity']})")
            for name, label in (("why", "Why"), ("fix", "Fix"), ("suggested_clause", "Suggested")):
                if f.get(name):
                    out.append(f"  - {label}: {f[name]}")
        if row["status"] == "unparsed":
            out += ["```text", row["answer"].strip(), "```"]
        elif row["status"] == "failed":
            out.append(f"Request failed after {row['attempts']} attempt(s): {row['error']}")
        out.append("")
    return "\n".join(out)


def badge_text(row: dict[str, Any]) -> str:
    return {
        "audited": f"risk: {row['risk']}",
        "unparsed": "answer not in the audit format",
        "failed": "request failed",
        "not_audited": "not audited",
    }[row["status"]]
