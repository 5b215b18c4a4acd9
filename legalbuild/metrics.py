"""Pure scoring functions for the eval stage: no model, no heavy import (rouge-score is imported lazily).

Every function takes parallel lists of reference and predicted answers (audit-format text, see
`legalbuild.answer_format`) and returns plain numbers, so the figures in eval.json can be recomputed
from answers.jsonl alone.

Definitions (the ones the report and the comparison table print):

- A row is *labelled* when its reference parses as an audit. Label metrics use labelled rows only.
- The label set of an audit is its rule ids, or {"(none)"} when it has no finding. An unparseable
  prediction has the empty label set: it is wrong on every metric, and counted in `unparseable`.
- `label_accuracy`: share of labelled rows whose predicted label set equals the reference set.
- `macro_f1`: mean per-label F1 over the labels that occur in the references ("(none)" included,
  so clean clauses weigh as one class). Labels only ever predicted (invented rule ids) have no
  reference row; they lower `micro_precision` and `label_accuracy` instead of adding zero-F1 classes.
- `severity_accuracy`: share of labelled rows whose predicted `Risk:` level equals the reference's.
- `false_alarms`: labelled rows with reference risk none whose prediction has findings or does not
  parse (an unreadable answer on a clean clause is a miss, not a quiet "no alarm");
  `false_alarm_rate` divides by the clean rows.
- `rouge_l`: mean ROUGE-L F-measure of the explanation (the Why lines, or the whole answer when the
  reference has none) against the reference's; rows without reference text are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from legalbuild.answer_format import Audit, parse_audit

NONE_LABEL = "(none)"


def label_set(audit: Audit | None) -> frozenset[str]:
    """Rule ids of an audit; {"(none)"} for a clean verdict; empty for an unparseable answer."""
    if audit is None:
        return frozenset()
    return frozenset(audit.rule_ids) if audit.findings else frozenset({NONE_LABEL})


@dataclass
class LabelCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0


def label_scores(references: Sequence[Audit | None], predictions: Sequence[Audit | None]) -> dict:
    """Finding-label accuracy, macro-F1, micro P/R, severity accuracy, false alarms, unparseable."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r is not None]
    counts: dict[str, LabelCounts] = {}
    exact = severity_ok = unparseable = clean = false_alarms = 0
    for ref, pred in pairs:
        gold, guess = label_set(ref), label_set(pred)
        exact += gold == guess
        severity_ok += pred is not None and pred.risk == ref.risk
        unparseable += pred is None
        if not ref.findings:
            clean += 1
            false_alarms += pred is None or bool(pred.findings)
        for label in gold | guess:
            c = counts.setdefault(label, LabelCounts())
            c.tp += label in gold and label in guess
            c.fp += label in guess and label not in gold
            c.fn += label in gold and label not in guess
    n = len(pairs)
    gold_labels = {label for ref, _ in pairs for label in label_set(ref)}
    tp = sum(c.tp for c in counts.values())
    fp = sum(c.fp for c in counts.values())
    fn = sum(c.fn for c in counts.values())
    return {
        "labelled_rows": n,
        "label_accuracy": _ratio(exact, n),
        "macro_f1": _mean(counts[label].f1 for label in sorted(gold_labels)),
        "micro_precision": _ratio(tp, tp + fp),
        "micro_recall": _ratio(tp, tp + fn),
        "severity_accuracy": _ratio(severity_ok, n),
        "unparseable": unparseable,
        "unparseable_rate": _ratio(unparseable, n),
        "clean_rows": clean,
        "false_alarms": false_alarms,
        "false_alarm_rate": _ratio(false_alarms, clean),
    }


def explanation_text(answer: str) -> str:
    """The Why lines of an audit answer joined by spaces, or the whole answer when it has none."""
    audit = parse_audit(answer)
    whys = [f.why for f in audit.findings if f.why] if audit is not None else []
    return " ".join(whys) if whys else answer.strip()


def rouge_l(references: Sequence[str | None], predictions: Sequence[str]) -> float | None:
    """Mean ROUGE-L F-measure of the explanations; references that are None are skipped."""
    from rouge_score import rouge_scorer  # lazy: keeps this module import-light

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(explanation_text(ref), explanation_text(pred))["rougeL"].fmeasure
        for ref, pred in zip(references, predictions, strict=True)
        if ref is not None
    ]
    return _mean(scores)


def perplexity(mean_token_loss: float | None) -> float | None:
    """exp(loss), capped so a diverged model prints a number rather than inf."""
    if mean_token_loss is None:
        return None
    return math.exp(min(mean_token_loss, 50.0))


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    return _mean(v for v in values if v is not None)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None
