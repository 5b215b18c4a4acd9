"""The comparison table of eval.json: printed at the end of `legalbuild build`, shown in the report."""

from __future__ import annotations

from typing import Any

from legalbuild.evaluation.scoring import MODEL_ORDER

# (key, label, format, higher is better)
TABLE_ROWS = (
    ("label_accuracy", "finding-label accuracy", "pct", True),
    ("macro_f1", "macro-F1 (rule ids)", "pct", True),
    ("severity_accuracy", "risk-level accuracy", "pct", True),
    ("false_alarm_rate", "false alarms on clean clauses", "pct", False),
    ("unparseable_rate", "unparseable answers", "pct", False),
    ("rouge_l", "ROUGE-L of explanation", "num", True),
    ("val_loss", "loss on reference answers", "num", False),
    ("perplexity", "perplexity", "num", False),
    ("mean_answer_tokens", "mean answer length (tokens)", "int", None),
    ("mean_latency_s", "latency per answer (s)", "sec", None),
)
COLUMN_TITLES = {
    "merged+constrained": "constrained",
    "regex": "regex (told the rules)",
    "regex-unscoped": "regex (every playbook)",
}


def format_value(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "int":
        return f"{value:.0f}"
    return f"{value:.3f}"


def _cell(metrics: dict[str, Any], key: str, kind: str) -> str:
    text = format_value(metrics.get(key), kind)
    interval = metrics.get("intervals", {}).get(key)
    if interval and metrics.get(key) is not None:
        text += f" [{interval[0]:.0%}–{interval[1]:.0%}]"
    return text


def table_models(eval_json: dict) -> list[str]:
    overall = eval_json.get("metrics", {})
    return [m for m in MODEL_ORDER if m in overall]


def comparison_rows(eval_json: dict) -> list[list[str]]:
    """[metric, <one cell per model>, merged − base] as strings, for the table and the report.
    Label accuracy and macro-F1 carry their 95% bootstrap interval in brackets."""
    overall = eval_json.get("metrics", {})
    out = []
    for key, label, kind, higher in TABLE_ROWS:
        cells = [_cell(overall.get(m, {}), key, kind) for m in table_models(eval_json)]
        b, m = overall.get("base", {}).get(key), overall.get("merged", {}).get(key)
        delta = "–"
        if b is not None and m is not None:
            diff = m - b
            delta = (f"{diff * 100:+.1f} pt" if kind == "pct" else f"{diff:+.3f}") + _verdict(
                diff, higher
            )
        out.append([label, *cells, delta])
    return out


def comparison_header(eval_json: dict) -> list[str]:
    return [
        "metric",
        *(COLUMN_TITLES.get(m, m) for m in table_models(eval_json)),
        "merged − base",
    ]


def _verdict(diff: float, higher: bool | None) -> str:
    if higher is None or diff == 0:
        return ""
    return " better" if (diff > 0) == higher else " worse"


LABEL_SET_HEADER = [
    "label set",
    "asked",
    "answerer",
    "topic BA (16 red flags)",
    "clause-type BA",
    "flags any risk BA",
    "unparseable",
]


def label_set_rows(eval_json: dict) -> list[list[str]]:
    """One row per label set, way of asking and answerer: macro balanced accuracy on topic (with
    its 95% interval), on the clause-type line, "flags any risk", and the unparseable share."""
    out = []
    for name, data in eval_json.get("label_sets", {}).items():
        for ask, models in data["asks"].items():
            for model in [m for m in MODEL_ORDER if m in models]:
                s = models[model]
                out.append(
                    [
                        f"{name} ({data['clauses']})",
                        ask,
                        COLUMN_TITLES.get(model, model),
                        _ba(s["topic"]["macro_ba"], s["topic"]["macro_interval"]),
                        _ba(s["clause_type"]["macro_ba"], s["clause_type"]["macro_interval"]),
                        _ba(s["flags_any_risk"]["ba"], s["flags_any_risk"]["interval"]),
                        format_value(s["unparseable_rate"], "pct"),
                    ]
                )
    return out


def _ba(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" [{interval[0]:.2f}–{interval[1]:.2f}]" if interval else "")


def format_comparison_table(eval_json: dict) -> str:
    """A plain-text table of every headline metric for each answerer."""
    header = comparison_header(eval_json)
    body = comparison_rows(eval_json)
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    sets = ", ".join(f"{k} {v}" for k, v in eval_json.get("sets", {}).items())
    clean = eval_json.get("clean_rows")
    title = f"eval: {eval_json.get('rows', 0)} rows ({sets}{f'; {clean} clean' if clean is not None else ''})"
    out = [title, line(header), "  ".join("-" * w for w in widths), *map(line, body)]
    if "merged+constrained" in eval_json.get("metrics", {}):
        out.append(
            "constrained = the merged model held to the audit format by constrained decoding; "
            "'merged' is its free output"
        )
    if rows := label_set_rows(eval_json):
        out += ["", "labels the rulebook did not write (balanced accuracy, 0.5 = chance):"]
        out += _plain_table(LABEL_SET_HEADER, rows)
    out += [f"WARNING: {w}" for w in eval_json.get("warnings", [])]
    return "\n".join(out)


def _plain_table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        for cells in [header, ["-" * w for w in widths], *body]
    ]
