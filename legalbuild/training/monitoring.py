"""Reading a Trainer log history: loss curves, the best evaluation, overfitting, the loss plot.

Pure functions over `trainer.state.log_history` (a list of dicts with `step` and `loss` or
`eval_loss`), so they work the same on a live run, a resumed run and a saved log_history.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one logged quantity (`loss` or `eval_loss`), one per step, in step order."""
    by_step = {
        int(entry["step"]): float(entry[key])
        for entry in history
        if key in entry and "step" in entry
    }
    return sorted(by_step.items())


def best_evaluation(history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, val loss) of the lowest validation loss, or None when nothing was evaluated."""
    evals = loss_series(history, "eval_loss")
    return min(evals, key=lambda pair: pair[1]) if evals else None


def _train_loss_at(train: list[tuple[int, float]], step: int) -> float | None:
    before = [loss for s, loss in train if s <= step]
    return before[-1] if before else None


def detect_overfitting(history: list[dict[str, Any]], patience: int) -> dict[str, Any] | None:
    """The overfitting signal: validation loss rose at each of the last `patience` evaluations while
    the training loss fell over the same window. Returns a description of it, or None."""
    evals = loss_series(history, "eval_loss")
    if len(evals) < patience + 1:
        return None
    window = evals[-(patience + 1) :]
    rising = all(
        later > earlier for (_, earlier), (_, later) in zip(window, window[1:], strict=False)
    )
    train = loss_series(history, "loss")
    start, end = _train_loss_at(train, window[0][0]), _train_loss_at(train, window[-1][0])
    if start is None and train:
        start = train[0][1]  # evaluation began before the first training log
    falling = start is not None and end is not None and end < start
    if not (rising and falling):
        return None
    return {
        "step": window[-1][0],
        "val_losses": [round(v, 4) for _, v in window],
        "train_loss_from": round(start, 4),
        "train_loss_to": round(end, 4),
        "message": (
            f"possible overfitting at step {window[-1][0]}: validation loss rose {patience} evaluations in a row "
            f"({' -> '.join(f'{v:.4f}' for _, v in window)}) while training loss fell ({start:.4f} -> {end:.4f})"
        ),
    }


FORMAT_RATE_KEY = "eval_format_rate"  # share of the samples that parse in the audit format


def plot_losses(history: list[dict[str, Any]], path: Path, title: str = "training") -> Path:
    """Training and validation loss on one plot, and the samples' format parse rate on a second
    axis when it was logged (matplotlib Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_series(history, "loss"), loss_series(history, "eval_loss")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), label="validation loss", color="tab:orange", marker="o")
        best_step, best_loss = min(evals, key=lambda pair: pair[1])
        ax.axvline(
            best_step,
            color="tab:green",
            linestyle=":",
            label=f"best val {best_loss:.3f} @ {best_step}",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    rates = loss_series(history, FORMAT_RATE_KEY)
    if rates:
        ax2 = ax.twinx()
        steps, values = zip(*rates, strict=True)
        ax2.plot(steps, [v * 100 for v in values], color="tab:purple", marker="s", linestyle="--")
        ax2.set_ylabel("samples in the audit format %")
        ax2.set_ylim(-5, 105)
        handles += ax2.get_lines()
        labels.append("samples that parse (%)")
    ax.legend(handles, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
