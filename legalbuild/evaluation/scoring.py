"""Every figure of eval.json from answers: per model, per category, with bootstrap intervals.

Pure functions over rows and answers (no model, no heavy import), so the figures can be recomputed
from answers.jsonl. Metric definitions live in `legalbuild.metrics`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from legalbuild import metrics
from legalbuild.answer_format import parse_audit, render_audit
from legalbuild.evaluation.generate import Answer
from legalbuild.evaluation.rows import CATEGORY_FIELDS, EvalRow

# Answerers in the order tables print them; "merged+constrained" is the merged model held to the
# audit format by constrained decoding, reported beside (never instead of) its free answers.
MODEL_ORDER = ("base", "merged", "merged+constrained", "regex", "regex-unscoped")
BOOTSTRAP_SAMPLES = 1000
INTERVAL_METRICS = ("label_accuracy", "macro_f1")


def score(rows: Sequence[EvalRow], answers: Sequence[Answer]) -> dict[str, Any]:
    """Every metric of one answerer on the given rows (see legalbuild.metrics for definitions)."""
    predictions = [parse_audit(a.text) for a in answers]
    scored = metrics.label_scores([r.reference for r in rows], predictions)
    loss_tokens = sum(a.loss_tokens for a in answers if a.loss is not None)
    val_loss = (
        sum(a.loss * a.loss_tokens for a in answers if a.loss is not None) / loss_tokens
        if loss_tokens
        else None
    )
    scored.update(
        rows=len(rows),
        rouge_l=metrics.rouge_l([r.reference_text for r in rows], [a.text for a in answers]),
        val_loss=val_loss,
        perplexity=metrics.perplexity(val_loss),
        loss_tokens=loss_tokens,
        mean_answer_tokens=metrics.mean(a.tokens for a in answers),
        mean_answer_chars=metrics.mean(len(a.text) for a in answers),
        mean_latency_s=metrics.mean(a.seconds for a in answers),
    )
    return scored


def bootstrap_intervals(
    rows: Sequence[EvalRow],
    answers: Sequence[Answer],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of label accuracy and macro-F1: the labelled rows are
    resampled with replacement `samples` times (seeded, so eval.json is reproducible)."""
    pairs = [
        (row.reference, parse_audit(answer.text))
        for row, answer in zip(rows, answers, strict=True)
        if row.reference is not None
    ]
    if not pairs:
        return {}
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    for _ in range(samples):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        scored = metrics.label_scores([r for r, _ in sample], [p for _, p in sample])
        for name in INTERVAL_METRICS:
            if scored[name] is not None:
                draws[name].append(scored[name])
    return {
        name: [_percentile(values, 0.025), _percentile(values, 0.975)]
        for name, values in draws.items()
        if values
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def score_by_category(rows: Sequence[EvalRow], answers: dict[str, list[Answer]]) -> dict[str, Any]:
    """{category field: {value: {model: metrics}}} for task, clause type, severity and set."""
    out: dict[str, Any] = {}
    for field_name in CATEGORY_FIELDS:
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.category(field_name), []).append(i)
        out[field_name] = {
            value: {
                name: score([rows[i] for i in ix], [model_answers[i] for i in ix])
                for name, model_answers in answers.items()
            }
            for value, ix in sorted(groups.items())
        }
    return out


def regression_warning(overall: dict[str, dict[str, Any]]) -> str | None:
    base, merged = overall.get("base", {}), overall.get("merged", {})
    b, m = base.get("label_accuracy"), merged.get("label_accuracy")
    if b is None or m is None or m >= b:
        return None
    return f"REGRESSION: the merged model's label accuracy {m:.1%} is below its base's {b:.1%}"


def summarise(
    rows: Sequence[EvalRow],
    answers: dict[str, list[Answer]],
    *,
    engine: str,
    available: int,
    baseline_note: str,
    split: str,
) -> dict[str, Any]:
    """The content of eval.json (settings are added by the stage)."""
    overall = {name: score(rows, model_answers) for name, model_answers in answers.items()}
    for name, model_answers in answers.items():
        overall[name]["intervals"] = bootstrap_intervals(rows, model_answers)
    warnings = []
    regression = regression_warning(overall)
    if regression:
        warnings.append(regression)
    if split != "test":
        warnings.append(
            "no test split ([data.split] test_fraction = 0): these figures are on the validation "
            "rows, which may have been used to choose settings"
        )
    for name, m in overall.items():
        if m["labelled_rows"] and m["unparseable"] == m["labelled_rows"]:
            warnings.append(f"{name}: no answer follows the audit format")
    merged = overall.get("merged", {})
    base = overall.get("base", {})
    constrained = overall.get("merged+constrained", {})
    return {
        "version": 2,
        "engine": engine,
        "split": split,
        "rows": len(rows),
        "rows_available": available,
        "clean_rows": sum(r.clean for r in rows),
        "sets": _counts(r.set for r in rows),
        "tasks": _counts(r.category("task") for r in rows),
        "models": [m for m in MODEL_ORDER if m in overall],
        "regex_baseline": baseline_note,
        "metrics": overall,
        "by_category": score_by_category(rows, answers),
        "regression": regression,
        "warnings": warnings,
        "headline": {
            "rows": len(rows),
            "split": split,
            "merged_label_accuracy": merged.get("label_accuracy"),
            "merged_macro_f1": merged.get("macro_f1"),
            "merged_unparseable_rate": merged.get("unparseable_rate"),
            "merged_false_alarm_rate": merged.get("false_alarm_rate"),
            "merged_val_loss": merged.get("val_loss"),
            "constrained_label_accuracy": constrained.get("label_accuracy"),
            "base_label_accuracy": base.get("label_accuracy"),
            "base_val_loss": base.get("val_loss"),
            "regex_label_accuracy": overall.get("regex", {}).get("label_accuracy"),
            "regex_macro_f1": overall.get("regex", {}).get("macro_f1"),
            "regex_false_alarm_rate": overall.get("regex", {}).get("false_alarm_rate"),
            "regression": bool(regression),
        },
    }


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def write_answers(path: Path, rows: Sequence[EvalRow], answers: dict[str, list[Answer]]) -> None:
    """One line per row: the row, its reference, and every model's answer with its figures."""
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            record = {
                "id": row.id,
                "set": row.set,
                "source": row.source,
                **{name: row.category(name) for name in ("task", "clause_type", "severity")},
                "instruction": row.instruction,
                "clause": row.clause,
                "reference": row.reference_text
                if row.reference_text is not None
                else render_audit(row.reference)
                if row.reference is not None
                else None,
                "reference_labels": sorted(metrics.label_set(row.reference)),
                **({"categories": row.meta["categories"]} if "categories" in row.meta else {}),
                "answers": {
                    name: {
                        **asdict(model_answers[i]),
                        "labels": sorted(metrics.label_set(parse_audit(model_answers[i].text))),
                    }
                    for name, model_answers in answers.items()
                },
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
