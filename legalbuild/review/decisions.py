"""The reviewer's decisions on findings, and the audit record they make.

A finding is named `<clause index>.<finding number>` (both 1-based). It is open (kept: it gets a
comment) until the reviewer accepts it, with the clause text that replaces the original (the
suggested clause, edited or not), or rejects it (dropped from every download). One fix per
clause: accepting a finding's fix reopens another accepted finding of the same clause.

`reviewed_record` gives what the downloads are written from: the audit record (same schema as
`legalbuild audit --out x.json`) without the rejected findings, the accepted ones carrying the
reviewer's text as their suggested clause, risks and summary recounted; and the fixes, clause
index -> text, that the DOCX writes as tracked changes.
"""

from __future__ import annotations

import copy
from typing import Any

from legalbuild.contract.record import flagged, summary_of
from legalbuild.review.uploads import Refused

DECISIONS = ("accept", "reject", "reopen")
SEVERITIES = ("high", "medium", "low")
MAX_TEXT = 20_000  # characters of an edited clause


def finding_key(clause: int, number: int) -> str:
    return f"{clause}.{number}"


def decide(
    record: dict[str, Any],
    decisions: dict[str, dict[str, Any]],
    clause: int,
    number: int,
    decision: str,
    text: str | None = None,
    when: str = "",
) -> dict[str, dict[str, Any]]:
    """`decisions` with one more decision; Refused when it cannot be taken."""
    if decision not in DECISIONS:
        raise Refused(f"unknown decision {decision!r}", hint=f"one of {', '.join(DECISIONS)}")
    findings = finding_list(record, clause)
    if not 1 <= number <= len(findings):
        raise Refused(f"clause {clause} has no finding {number}", hint="reload the page")
    key = finding_key(clause, number)
    out = dict(decisions)
    if decision == "reopen":
        out.pop(key, None)
        return out
    if decision == "reject":
        out[key] = {"decision": "rejected", "at": when}
        return out
    text = (text if text is not None else findings[number - 1]["suggested_clause"]).strip()
    if not text:
        raise Refused(
            "nothing to put in place of the clause: the suggested clause is empty",
            hint="write the clause as it should read, then accept",
        )
    if len(text) > MAX_TEXT:
        raise Refused(f"the clause is {len(text):,} characters; at most {MAX_TEXT:,}")
    for other in [k for k, v in out.items() if v["decision"] == "accepted"]:
        if other.split(".")[0] == str(clause):
            del out[other]  # one fix per clause: the newer one wins
    out[key] = {"decision": "accepted", "text": text, "at": when}
    return out


def finding_list(record: dict[str, Any], clause: int) -> list[dict[str, Any]]:
    rows = [r for r in record["clauses"] if r["index"] == clause]
    if not rows:
        raise Refused(f"no clause {clause} in this review", hint="reload the page")
    return rows[0]["findings"] or []


def state_of(decisions: dict[str, dict[str, Any]], clause: int, number: int) -> str:
    """open, accepted or rejected."""
    entry = decisions.get(finding_key(clause, number))
    return entry["decision"] if entry else "open"


def reviewed_record(
    record: dict[str, Any], decisions: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[int, str]]:
    """(the record as reviewed, the fixes by clause index); see the module docstring."""
    out = copy.deepcopy(record)
    fixes: dict[int, str] = {}
    for row in out["clauses"]:
        if not flagged(row):
            continue
        kept = []
        for number, finding in enumerate(row["findings"], 1):
            entry = decisions.get(finding_key(row["index"], number))
            if entry and entry["decision"] == "rejected":
                continue
            if entry and entry["decision"] == "accepted":
                finding["suggested_clause"] = entry["text"]
                fixes[row["index"]] = entry["text"]
            kept.append(finding)
        if len(kept) < len(row["findings"]):
            row["risk"] = next(
                (s for s in SEVERITIES if any(f["severity"] == s for f in kept)), "none"
            )
            if not kept:
                row["note"] = "Every finding was rejected in review."
        row["findings"] = kept
    out["summary"] = summary_of(out["clauses"])
    return out, fixes
