"""The review page's HTML, rendered on the server (every value escaped); review.js only fetches
these fragments and posts the reviewer's clicks. Pages: the start page (upload form, reviews kept
on disk), the login form, one review (its header, the filters, and the two panes: the contract
with each flagged clause highlighted by severity, the findings worst first)."""

from __future__ import annotations

from typing import Any

from legalbuild.contract.html import badge
from legalbuild.contract.record import clause_label, flagged, location_text, rank_of
from legalbuild.report.pieces import esc
from legalbuild.review.decisions import SEVERITIES, state_of
from legalbuild.review.store import Review
from legalbuild.review.uploads import KINDS, Limits

STATUS_TEXT = {
    "queued": "waiting for the model",
    "running": "auditing",
    "done": "audited",
    "interrupted": "interrupted",
    "failed": "failed",
}
DOWNLOADS = (
    ("reviewed.docx", "reviewed DOCX (comments, tracked changes)"),
    ("report.html", "HTML report"),
    ("record.json", "JSON record"),
)


def layout(title: str, body: str, subtitle: str = "") -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="stylesheet" href="/static/review.css">
</head>
<body>
<header class="top"><a href="/" class="home">legalbuild review</a>
<span class="subtitle">{esc(subtitle)}</span></header>
<main>
{body}
</main>
<script src="/static/review.js"></script>
</body>
</html>
"""


def login_page(error: str = "") -> str:
    message = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    body = f"""<section class="card narrow"><h1>Sign in</h1>
<p>This review page is reachable from the network, so it asks for the API key of the recipe's
server (the value of its <code>[serve] api_key_env</code> variable).</p>
<form method="post" action="/login">
<label>API key <input type="password" name="key" autocomplete="current-password" required autofocus></label>
<button type="submit">Sign in</button>
</form>{message}</section>"""
    return layout("Sign in · legalbuild review", body)


def index_page(reviews: list[Review], playbooks: list[str], limits: Limits, model: str) -> str:
    options = "".join(f'<option value="{esc(p)}">{esc(p)}</option>' for p in playbooks)
    rows = "".join(_review_row(r) for r in reviews)
    listing = (
        f"<table><thead><tr><th>contract</th><th>status</th><th>playbook</th><th>uploaded (UTC)"
        f"</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p>No review yet.</p>"
    )
    body = f"""<section class="card">
<h1>Review a contract</h1>
<form id="upload" data-max-bytes="{limits.max_bytes}">
<label>Contract <span class="hint">({", ".join(KINDS)}; up to {limits.max_bytes / 2**20:.0f} MB,
{limits.max_pages} pages, {limits.max_clauses} clauses)</span>
<input type="file" id="file" name="file" accept="{",".join(KINDS)}" required></label>
<label>Playbook <select id="playbook" name="playbook">
<option value="">none: the model's own judgement</option>{options}</select></label>
<button type="submit" id="upload-button">Upload and audit</button>
<p id="upload-status" class="status" hidden></p>
<p id="upload-error" class="error" role="alert" hidden></p>
</form>
</section>
<section class="card"><h2>Reviews</h2>{listing}</section>"""
    return layout("legalbuild review", body, f"model {model}")


def _review_row(review: Review) -> str:
    meta = review.meta
    status = STATUS_TEXT.get(meta.get("status", ""), meta.get("status", ""))
    return (
        f'<tr><td><a href="/reviews/{esc(review.id)}">{esc(meta.get("file", review.id))}</a></td>'
        f"<td>{esc(status)}</td><td>{esc(meta.get('playbook') or '')}</td>"
        f"<td>{esc(meta.get('created', '')[:16].replace('T', ' '))}</td></tr>"
    )


def review_page(review: Review, state: dict[str, Any], panes: str, model: str) -> str:
    meta = review.meta
    links = " ".join(
        f'<a class="download" href="/reviews/{esc(review.id)}/download/{name}">{esc(text)}</a>'
        for name, text in DOWNLOADS
    )
    playbook = f"playbook {meta['playbook']}" if meta.get("playbook") else "no playbook"
    body = f"""<section class="card head" id="review" data-id="{esc(review.id)}">
<h1>{esc(meta["file"])}</h1>
<p class="meta">{esc(playbook)} · {meta.get("found", 0)} clauses found</p>
{progress_html(state)}
<nav class="downloads">Download: {links}</nav>
</section>
<section class="toolbar" aria-label="Filters">
<label>Severity <select id="filter-severity"><option value="">all</option>
{"".join(f'<option value="{s}">{s}</option>' for s in SEVERITIES)}</select></label>
<label>Rule <select id="filter-rule"><option value="">all</option></select></label>
<label><input type="checkbox" id="filter-open"> open only</label>
<span id="shown" aria-live="polite"></span>
</section>
<div id="panes" class="panes">{panes}</div>"""
    return layout(f"{meta['file']} · legalbuild review", body, f"model {model}")


def progress_html(state: dict[str, Any]) -> str:
    done, total, status = state["done"], state["total"], state["status"]
    text = f"{STATUS_TEXT.get(status, status)}: {done} of {total} clauses answered"
    error = (
        f'<p id="review-error" class="error" role="alert">{esc(state["error"])}</p>'
        if state.get("error")
        else ""
    )
    resume = (
        '<button id="resume" type="button">Audit the clauses not answered</button>'
        if status in ("interrupted", "failed")
        else ""
    )
    return (
        f'<div id="progress" data-status="{esc(status)}" data-done="{done}">'
        f'<progress max="{max(total, 1)}" value="{done}"></progress> '
        f'<span id="progress-text">{esc(text)}</span> {resume}{error}</div>'
    )


def panes_html(record: dict[str, Any], decisions: dict[str, dict[str, Any]]) -> str:
    rows = record["clauses"]
    cards = sorted(
        (
            (SEVERITIES.index(f["severity"]), row["index"], n, row, f)
            for row in rows
            if flagged(row)
            for n, f in enumerate(row["findings"], 1)
        ),
        key=lambda t: t[:3],
    )
    findings = "".join(finding_html(row, n, f, decisions) for _, _, n, row, f in cards)
    empty = "" if cards else '<p class="empty">No findings (yet).</p>'
    return f"""<section class="pane contract" id="contract" aria-label="Contract">
<h2>Contract</h2>{contract_html(rows, decisions)}</section>
<section class="pane findings" id="findings" aria-label="Findings">
<h2>Findings, worst first <span class="count">({len(cards)})</span></h2>{findings}{empty}</section>"""


def contract_html(rows: list[dict[str, Any]], decisions: dict[str, dict[str, Any]]) -> str:
    out, heading = [], None
    for row in rows:
        if row["heading"] and row["heading"] != heading:
            heading = row["heading"]
            out.append(f'<h3 class="section">{esc(heading)}</h3>')
        kept = [
            f["severity"]
            for n, f in enumerate(row["findings"] or [], 1)
            if state_of(decisions, row["index"], n) != "rejected"
        ]
        worst = next((s for s in SEVERITIES if s in kept), None)
        marks = f"risk-{worst}" if worst else f"rank-{rank_of(row)}"
        fix = next(
            (
                d["text"]
                for k, d in decisions.items()
                if k.split(".")[0] == str(row["index"]) and d["decision"] == "accepted"
            ),
            None,
        )
        text = esc(row["text"])
        if fix is not None:
            text = f"<del>{text}</del> <ins>{esc(fix)}</ins>"
        out.append(
            f'<p class="clause {marks}" id="clause-{row["index"]}" data-clause="{row["index"]}"'
            f' tabindex="0">{text} <span class="where">{esc(location_text(row["location"]))}</span></p>'
        )
    return "".join(out)


def finding_html(row: dict[str, Any], n: int, f: dict[str, Any], decisions) -> str:
    state = state_of(decisions, row["index"], n)
    entry = decisions.get(f"{row['index']}.{n}") or {}
    text = entry.get("text", f["suggested_clause"])
    details = "".join(
        f"<p><em>{label}:</em> {esc(f[name])}</p>"
        for name, label in (("why", "Why"), ("fix", "Fix"))
        if f.get(name)
    )
    return f"""<article class="finding sev-{esc(f["severity"])} state-{state}" id="finding-{row["index"]}-{n}"
 data-clause="{row["index"]}" data-finding="{n}" data-severity="{esc(f["severity"])}"
 data-rule="{esc(f["rule_id"])}" data-state="{state}">
<header>{badge(f["severity"])} <strong>{esc(f["title"])}</strong> <code class="rule">{esc(f["rule_id"])}</code>
<span class="state">{state}</span></header>
<p class="where"><a href="#clause-{row["index"]}" class="goto">{esc(clause_label(row))} · {esc(location_text(row["location"]))}</a></p>
{details}
<label>Suggested clause <span class="hint">(edit it, then accept)</span>
<textarea name="text" rows="4">{esc(text)}</textarea></label>
<div class="actions"><button type="button" data-decision="accept">Accept fix</button>
<button type="button" data-decision="reject">Reject</button>
<button type="button" data-decision="reopen">Reopen</button></div>
</article>"""
