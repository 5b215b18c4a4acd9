"""`legalbuild sweep report`: the study as a table (trial, values, objective, train seconds, which
stages were cache hits, pruned at which step), its plots as PNG files, all of it in one
self-contained HTML page in the build report's style (`sweep.html`), and as JSON (`sweep.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legalbuild.report import render_page
from legalbuild.report.pieces import Section, esc, html_table, note, png_html
from legalbuild.sweep import plots
from legalbuild.sweep.spec import Sweep

PLOTS = (
    ("objective", "Objective by trial", plots.objective_by_trial),
    ("parallel", "Parallel coordinates", plots.parallel_coordinates),
    ("importances", "Parameter importances", plots.importances),
    ("validation", "Validation loss during training", plots.validation_curves),
)


def trial_row(t: Any) -> dict[str, Any]:
    stages = t.user_attrs.get("stages") or {}
    train = stages.get("train") or {}
    return {
        "number": t.number,
        "state": t.state.name,
        "values": dict(t.params),
        "value": t.value if t.state.name == "COMPLETE" else None,
        "seconds": t.user_attrs.get("seconds"),
        "train_seconds": None if train.get("hit", True) else train.get("seconds"),
        "hits": [name for name, s in stages.items() if s.get("hit")],
        "built": [name for name, s in stages.items() if not s.get("hit")],
        "stages": stages,
        "pruned_at": t.user_attrs.get("pruned_at"),
        "val_loss": t.user_attrs.get("val_loss") or [],
        "baseline": bool(t.user_attrs.get("baseline")),
        "retry_of": t.system_attrs.get("failed_trial"),
        "note": t.user_attrs.get("note") or "",
    }


def cache_savings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stages skipped (cache hits) x what each cost when it was built."""
    hits: dict[str, int] = {}
    builds: dict[str, int] = {}
    saved = built = 0.0
    for row in rows:
        for name, stage in row["stages"].items():
            seconds = stage.get("seconds") or 0.0
            if stage.get("hit"):
                hits[name] = hits.get(name, 0) + 1
                saved += seconds
            else:
                builds[name] = builds.get(name, 0) + 1
                built += seconds
    return {"hits": hits, "builds": builds, "saved_s": round(saved, 1), "built_s": round(built, 1)}


def summarise_study(sweep: Sweep, study: Any) -> dict[str, Any]:
    """Everything the report shows, as plain data (what `--json` prints)."""
    from legalbuild.sweep.results import best_of

    rows = [trial_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    attrs = study.user_attrs
    runs = [v for k, v in sorted(attrs.items()) if k.startswith("run:")]
    return {
        "study": sweep.study_name,
        "sweep_file": sweep.path.name,
        "recipe": sweep.recipe_path.name,
        "objective": sweep.settings.objective,
        "direction": sweep.settings.direction,
        "trials_wanted": sweep.settings.trials,
        "params": [p.key for p in sweep.params],
        "log_params": [p.key for p in sweep.params if p.log],
        "recipe_values": _recipe_values(sweep),
        "counts": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
        "best": best_of(study),
        "test": attrs.get("test"),
        "importances": _importances(study),
        "cache": cache_savings(rows),
        "runs": runs,
        "wall_s": round(sum(r.get("wall_s", 0) for r in runs), 1),
        "trials": rows,
    }


def _recipe_values(sweep: Sweep) -> dict[str, Any]:
    from legalbuild.sweep.overrides import resolve_key, value_at

    return {p.key: value_at(sweep.recipe, resolve_key(p.key, "[space]")) for p in sweep.params}


def _importances(study: Any) -> dict[str, float] | None:
    """fANOVA importances (Optuna's default evaluator); None with too few complete trials."""
    import optuna

    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    return {k: round(float(v), 4) for k, v in found.items()} or None


def write_sweep_report(sweep: Sweep, study: Any, dest: Path | None = None) -> tuple[Path, dict]:
    """sweep.html, sweep.json and one PNG per plot in `dest` (default: the study folder's
    report/); returns the HTML path and the summary."""
    summary = summarise_study(sweep, study)
    dest = Path(dest or sweep.study_dir / "report")
    dest.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, title, draw in PLOTS:
        png = draw(summary)
        if png is not None:
            (dest / f"{name}.png").write_bytes(png)
            figures.append((title, png))
    (dest / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    html = render_page(f"legalbuild sweep: {sweep.study_name}", _sections(summary, figures))
    (dest / "sweep.html").write_text(html, encoding="utf-8")
    return dest / "sweep.html", summary


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sections(summary: dict[str, Any], figures: list[tuple[str, bytes]]) -> list[Section]:
    keys = summary["params"]
    header = ["trial", "state", *[k.rsplit(".", 1)[-1] for k in keys], summary["objective"],
              "seconds", "train s", "cache hits", "pruned at", "note"]  # fmt: skip
    rows = [
        [str(r["number"]) + (" (recipe)" if r["baseline"] else ""), r["state"].lower(),
         *[_fmt(r["values"].get(k)) for k in keys], _fmt(r["value"]), _fmt(r["seconds"]),
         _fmt(r["train_seconds"]), ", ".join(r["hits"]) or "–", _fmt(r["pruned_at"]),
         r["note"] + (f" (re-run of {r['retry_of']})" if r["retry_of"] is not None else "")]
        for r in summary["trials"]
    ]  # fmt: skip
    plots_html = "".join(f"<h3>{esc(t)}</h3>{png_html(png, t)}" for t, png in figures)
    return [
        Section("summary", "Summary", _summary_html(summary)),
        Section("trials", "Trials", html_table(header, rows, numeric_from=2)),
        Section("plots", "Plots", plots_html or note("no plot yet: no trial has completed")),
    ]


def _per_stage(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}x" for name, n in counts.items()) or "none"


def _summary_html(s: dict[str, Any]) -> str:
    best, test, cache = s["best"], s["test"], s["cache"]
    lines = [
        f"Objective: {s['objective']} on the validation split, {s['direction']}d; "
        f"{s['trials_wanted']} trials wanted; "
        + ", ".join(f"{n} {state.lower()}" for state, n in sorted(s["counts"].items())),
        "The recipe's own values: "
        + ", ".join(f"{k} = {_fmt(v)}" for k, v in s["recipe_values"].items()),
    ]
    if best:
        lines.append(
            f"Best: trial {best['trial']}, {s['objective']} = {_fmt(best['value'])}, with "
            + ", ".join(f"{k} = {_fmt(v)}" for k, v in best["values"].items())
        )
    if test:
        head = test.get("headline") or {}
        how = (
            "scored once and never used to choose"
            if test.get("split") == "test"
            else "the recipe has no test split: these are validation figures, the ones it was chosen on"
        )
        lines.append(
            f"Winner (trial {test['trial']}) with the recipe's [eval], on the {test.get('split')} "
            f"split ({test.get('rows')} rows; {how}): {s['objective']} = "
            f"{_fmt(test.get('objective'))}; label accuracy {_fmt(head.get('merged_label_accuracy'))}, "
            f"macro-F1 {_fmt(head.get('merged_macro_f1'))}, false alarms "
            f"{_fmt(head.get('merged_false_alarm_rate'))}"
        )
    lines.append(
        f"Wall time {s['wall_s'] / 60:.1f} min over {len(s['runs'])} run(s). The cache skipped "
        f"{sum(cache['hits'].values())} stage builds of trials, worth {cache['saved_s'] / 60:.1f} "
        f"min as they were built ({_per_stage(cache['hits'])}); trials built "
        f"{sum(cache['builds'].values())} stages in {cache['built_s'] / 60:.1f} min "
        f"({_per_stage(cache['builds'])})"
    )
    hosts = {json.dumps(r.get("host", {}), sort_keys=True) for r in s["runs"]}
    lines += [f"Host: {h}" for h in sorted(hosts)]
    return "".join(f"<p>{esc(line)}</p>" for line in lines)
