"""The sweep report's plots (matplotlib, PNG bytes): the objective by trial, parallel coordinates
of the values against the objective, parameter importances, the validation loss during training."""

from __future__ import annotations

import math
from typing import Any

from legalbuild.report.pieces import figure_png

BLUE, GREY, RED, GOLD = "#2f6fde", "#9aa5b1", "#d9534f", "#e3a33b"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot's first import
    import matplotlib.pyplot as plt

    return plt


def objective_by_trial(summary: dict[str, Any]) -> bytes:
    plt = _plt()
    trials, objective = summary["trials"], summary["objective"]
    maximize = summary["direction"] == "maximize"
    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = [t for t in trials if t["state"] == "COMPLETE"]
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], color=BLUE, zorder=3,
               label="complete")  # fmt: skip
    best, xs, ys = None, [], []
    for t in done:
        if best is None or (t["value"] > best if maximize else t["value"] < best):
            best = t["value"]
        xs.append(t["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color=GOLD, label="best so far")
    low = min((t["value"] for t in done), default=0.0)
    pruned = [t["number"] for t in trials if t["state"] == "PRUNED"]
    if pruned:
        ax.scatter(pruned, [low] * len(pruned), marker="x", color=GREY, label="pruned (no value)")
    for t in done:
        if t.get("baseline"):
            ax.annotate("recipe's values", (t["number"], t["value"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)  # fmt: skip
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{objective} (validation)")
    ax.set_title("Objective by trial")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _axis(values: list[Any], log: bool) -> tuple[list[float], list[str], list[float]]:
    """Each value placed on [0, 1]; tick labels and their positions."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        scale = (lambda v: math.log10(v)) if log and min(values) > 0 else (lambda v: float(v))
        lo, hi = scale(min(values)), scale(max(values))
        span = (hi - lo) or 1.0
        placed = [(scale(v) - lo) / span for v in values]
        ticks = sorted(set(values))
        if len(ticks) > 5:
            ticks = [min(values), max(values)]
        return placed, [f"{v:.4g}" for v in ticks], [(scale(v) - lo) / span for v in ticks]
    order = sorted(set(map(str, values)))
    step = 1 / max(1, len(order) - 1)
    return (
        [order.index(str(v)) * step for v in values],
        order,
        [i * step for i in range(len(order))],
    )


def parallel_coordinates(summary: dict[str, Any]) -> bytes:
    plt = _plt()
    keys = summary["params"]
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    axes = [*keys, summary["objective"]]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(axes)), 3.8))
    columns = [[t["values"][k] for t in done] for k in keys] + [[t["value"] for t in done]]
    logs = [*summary["log_params"], False]
    if done:
        placed = [
            _axis(col, k in logs) for col, k in zip(columns, [*keys, "objective"], strict=True)
        ]
        values = [t["value"] for t in done]
        lo, hi = min(values), max(values)
        cmap = plt.get_cmap("viridis")
        for i, t in enumerate(done):
            shade = (t["value"] - lo) / ((hi - lo) or 1.0)
            if summary["direction"] == "minimize":
                shade = 1 - shade
            ax.plot(range(len(axes)), [p[0][i] for p in placed], color=cmap(shade), alpha=0.85,
                    linewidth=2.2 if t["number"] == (summary["best"] or {}).get("trial") else 1.2)  # fmt: skip
        for j, (_, labels, ticks) in enumerate(placed):
            for label, y in zip(labels, ticks, strict=True):
                ax.text(j + 0.04, y, label, fontsize=7, va="center", color="#333")
    for j in range(len(axes)):
        ax.axvline(j, color=GREY, linewidth=1)
    ax.set_xticks(range(len(axes)), [a.rsplit(".", 1)[-1] if a in keys else a for a in axes])
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title("Parallel coordinates (complete trials; brighter = better objective)")
    return figure_png(fig)


def importances(summary: dict[str, Any]) -> bytes | None:
    found = summary.get("importances")
    if not found:
        return None
    plt = _plt()
    names = list(found)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.45 * len(names)))
    ax.barh(names, [found[n] for n in names], color=BLUE)
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.set_title("Parameter importances")
    ax.set_xlim(0, 1)
    return figure_png(fig)


def validation_curves(summary: dict[str, Any]) -> bytes | None:
    trials = [t for t in summary["trials"] if t.get("val_loss")]
    if not trials:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t in trials:
        steps, losses = zip(*t["val_loss"], strict=True)
        style = {"PRUNED": (GREY, "--"), "COMPLETE": (BLUE, "-")}.get(t["state"], (RED, ":"))
        ax.plot(steps, losses, color=style[0], linestyle=style[1], marker="o", markersize=3)
        ax.annotate(str(t["number"]), (steps[-1], losses[-1]), fontsize=7,
                    textcoords="offset points", xytext=(3, 0))  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss during training (dashed: pruned)")
    ax.grid(alpha=0.3)
    return figure_png(fig)
