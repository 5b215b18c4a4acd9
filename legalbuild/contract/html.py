"""The audit as one self-contained HTML page (inline CSS, no script, no external request, like
the build report): a summary table by severity, then the clauses in document order with a risk
badge and their findings. All text is HTML-escaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legalbuild.contract.record import (
    badge_text,
    by_severity,
    clause_label,
    flagged,
    location_text,
    rank_of,
)
from legalbuild.report.pieces import esc, html_table

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --bg: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #102a43; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; color: #bcccdc; font-size: 12px; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 32px 48px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg); } td.num { text-align: right; font-variant-numeric: tabular-nums; }
a { color: #2f6fde; text-decoration: none; }
article { border-top: 1px solid var(--line); padding: 10px 0; }
article h3 { font-size: 15px; margin: 0 0 4px; } .where { color: var(--muted); font-size: 12px; font-weight: normal; }
blockquote { margin: 6px 0; padding: 6px 12px; background: var(--bg); border-left: 3px solid var(--line); }
.badge { display: inline-block; border-radius: 10px; padding: 0 9px; font-size: 12px; font-weight: 600; color: #fff; }
.high { background: #c62828; } .medium { background: #ef6c00; } .low { background: #f9a825; color: #1f2933; }
.none { background: #2e7d32; } .unparsed, .not_audited { background: #78909c; } .failed { background: #6a1b9a; }
.finding { margin: 6px 0 6px 12px; } .finding p { margin: 2px 0; } .rule { color: var(--muted); font-family: monospace; }
pre { white-space: pre-wrap; background: var(--bg); border: 1px solid var(--line); padding: 8px; font-size: 12px; }
.warning { color: #8a1c1c; background: #fdecea; border-left: 4px solid #d9534f; padding: 6px 10px; }
"""


def write_html(record: dict[str, Any], path: Path) -> None:
    path.write_text(render_html(record), encoding="utf-8")


def render_html(record: dict[str, Any]) -> str:
    doc, rows = record["document"], record["clauses"]
    subtitle = (
        f"model {record['model']} at {record['endpoint']} · {len(rows)} clauses · "
        f"{record['elapsed_s']:.1f} s · {record['created']}"
    )
    warning = ""
    if record["interrupted"]:
        warning = (
            '<p class="warning">Interrupted: clauses marked "not audited" were not finished.</p>'
        )
    summary_rows = "".join(  # badge() escapes its text
        f"<tr><td>{badge(rank)}</td><td class='num'>{n}</td></tr>"
        for rank, n in record["summary"].items()
        if n
    )
    worst = [r for r in by_severity(rows) if flagged(r)]
    flagged_table = html_table(
        ["risk", "clause", "where", "findings"],
        [
            [
                r["risk"],
                clause_label(r),
                location_text(r["location"]),
                "; ".join(f["title"] for f in r["findings"]),
            ]
            for r in worst
        ],  # fmt: skip
        numeric_from=9,
    )
    body = "".join(clause_html(r) for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Audit of {esc(doc["name"])}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>Audit of {esc(doc["name"])}</h1><p>{esc(subtitle)}</p></header>
<main>
{warning}
<section id="summary"><h2>Summary by severity</h2>
<table><thead><tr><th>risk</th><th>clauses</th></tr></thead><tbody>{summary_rows}</tbody></table>
<h3>Flagged clauses, worst first</h3>
{flagged_table if worst else "<p>No clause was flagged.</p>"}
</section>
<section id="clauses"><h2>Clauses in document order</h2>
{body}
</section>
</main>
</body>
</html>
"""


def badge(rank: str) -> str:
    return f'<span class="badge {esc(rank)}">{esc(rank.replace("_", " "))}</span>'


def clause_html(row: dict[str, Any]) -> str:
    parts = [
        f'<article id="clause-{row["index"]}">',
        f"<h3>{row['index']}. {esc(clause_label(row))} "
        f'<span class="where">{esc(location_text(row["location"]))}</span> '
        f"{badge(rank_of(row))}</h3>",
        f"<blockquote>{esc(row['text'])}</blockquote>",
    ]
    for f in row["findings"] or []:
        parts.append(
            f'<div class="finding">{badge(f["severity"])} <strong>{esc(f["title"])}</strong> '
            f'<span class="rule">[{esc(f["rule_id"])}]</span>'
        )
        for name, label in (
            ("why", "Why"),
            ("fix", "Fix"),
            ("suggested_clause", "Suggested clause"),
        ):
            if f.get(name):
                parts.append(f"<p><em>{label}:</em> {esc(f[name])}</p>")
        parts.append("</div>")
    if row["status"] == "audited" and not row["findings"] and row["note"]:
        parts.append(f"<p>{esc(row['note'])}</p>")
    if row["status"] == "unparsed":
        parts.append(f"<p>{esc(badge_text(row))}:</p><pre>{esc(row['answer'])}</pre>")
    if row["status"] == "failed":
        parts.append(
            f"<p>Request failed after {row['attempts']} attempt(s): {esc(row['error'])}</p>"
        )
    parts.append("</article>")
    return "\n".join(parts)
