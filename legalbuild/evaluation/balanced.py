"""Balanced accuracy per category, with 95% bootstrap intervals, for labels the rulebook did not write.

For a category C: positives are the rows labelled C, negatives every other row; a prediction says
C or not. Balanced accuracy = (true-positive rate + true-negative rate) / 2, so a rare category
weighs as much as a frequent one and answering "no" everywhere scores 0.5 (chance). The macro
figure is the mean over the categories that have both positives and negatives among the rows.

Intervals: the rows are resampled with replacement (seeded); each draw recomputes every
category's figure and the macro mean from the same draw, so the macro interval is honest about
the categories' shared rows. Vectorised with numpy (a draw is a vector of row weights).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

DRAWS = 1000


def balanced_table(
    labels: Sequence[set[str]],
    predicted: Sequence[set[str]],
    categories: Sequence[str],
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """{"macro_ba", "macro_interval", "categories": {c: {positives, negatives, tpr, tnr, ba,
    interval}}} for the rows' label sets and predicted sets (see the module docstring)."""
    import numpy as np

    truth = np.array([[c in row for c in categories] for row in labels], dtype=bool)
    guess = np.array([[c in row for c in categories] for row in predicted], dtype=bool)
    n = len(labels)
    if n == 0:
        return {"macro_ba": None, "macro_interval": None, "categories": {}}
    weights = np.vstack(
        [np.ones(n), np.random.default_rng(seed).multinomial(n, [1 / n] * n, size=draws)]
    )  # row 0: the rows as they are; then one row of weights per bootstrap draw
    tp = weights @ (truth & guess)
    pos = weights @ truth
    tn = weights @ (~truth & ~guess)
    neg = weights @ ~truth
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, tnr = tp / pos, tn / neg
    ba = (tpr + tnr) / 2
    scored = [i for i in range(len(categories)) if pos[0, i] > 0 and neg[0, i] > 0]
    per = {}
    for i, name in enumerate(categories):
        ok = i in scored
        per[name] = {
            "positives": int(pos[0, i]),
            "negatives": int(neg[0, i]),
            "tpr": _num(tpr[0, i]) if pos[0, i] else None,
            "tnr": _num(tnr[0, i]) if neg[0, i] else None,
            "ba": _num(ba[0, i]) if ok else None,
            "interval": _interval(ba[1:, i]) if ok else None,
        }
    if not scored:
        return {"macro_ba": None, "macro_interval": None, "categories": per}
    with warnings.catch_warnings():  # a draw may miss every positive of a rare category
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = np.nanmean(ba[:, scored], axis=1)
    return {
        "macro_ba": _num(macro[0]),
        "macro_interval": _interval(macro[1:]),
        "scored_categories": len(scored),
        "categories": per,
    }


def balanced_binary(truth: Sequence[bool], guess: Sequence[bool], **kwargs: Any) -> dict[str, Any]:
    """Balanced accuracy of one yes/no question (e.g. "flags any risk" on red-flag clauses)."""
    table = balanced_table(
        [{"yes"} if t else set() for t in truth],
        [{"yes"} if g else set() for g in guess],
        ["yes"],
        **kwargs,
    )
    row = table["categories"].get("yes", {})
    return {**row, "ba": table["macro_ba"], "interval": table["macro_interval"]}


def _interval(values: Any) -> list[float] | None:
    import numpy as np

    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None
    return [_num(np.percentile(finite, 2.5)), _num(np.percentile(finite, 97.5))]


def _num(value: Any) -> float | None:
    value = float(value)
    return None if value != value else round(value, 4)  # NaN -> None
