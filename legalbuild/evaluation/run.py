"""The eval stage's work between reading its rows and scoring them: every answerer answers every
row (the models through `generate.evaluate_model`, the regex baselines through `baseline`), and
the label sets' rows are read, found (a local file, a mirror or a checked download) and asked."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from legalbuild.evaluation.baseline import load_regex_baselines, run_baseline
from legalbuild.evaluation.generate import Answer, evaluate_model, tokenizer_of
from legalbuild.evaluation.rows import EvalRow


def answer_rows(
    rows: Sequence[EvalRow],
    model_dirs: dict[str, Path],
    recipe: Any,
    recipe_dir: Path,
    engine: str,
    constraint: Callable[[EvalRow], str],
    log: Callable[[str], None],
) -> tuple[dict[str, list[Answer]], str]:
    """({answerer: one answer per row}, the baselines' note). Models answer freely, and the
    merged model also under constrained decoding when `[eval] constrained`, reported apart."""
    settings = recipe.eval
    answers: dict[str, list[Answer]] = {}
    for name, model_dir in model_dirs.items():
        began = time.perf_counter()
        constrain = settings.constrained and name == "merged"
        free, constrained = evaluate_model(
            model_dir,
            rows,
            recipe.data.system_prompt,
            engine=engine,
            batch_size=settings.batch_size,
            max_new_tokens=[r.meta.get("max_new_tokens", settings.max_new_tokens) for r in rows],
            constraints=[constraint(r) for r in rows] if constrain else None,
            log=lambda msg, name=name: log(f"{name}: {msg}"),
        )
        answers[name] = free
        if constrained is not None:
            answers[f"{name}+constrained"] = constrained
        log(f"{name}: {len(rows)} answers in {time.perf_counter() - began:.1f}s")
    specs = recipe.curate.rulebooks if recipe.curate else None
    baselines, note = load_regex_baselines(specs, recipe_dir)
    if baselines:
        tokenizer = tokenizer_of(model_dirs["merged"])

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        for name, baseline in baselines.items():
            answers[name] = run_baseline(baseline, rows, count)
    log(note)
    return answers, note


def label_set_rows(
    recipe: Any, recipe_dir: Path, downloads: Path | None, log: Callable[[str], None]
) -> list[EvalRow]:
    """The questions of every `[[eval.label_sets]]` (evaluation/labelsets.py)."""
    if not recipe.eval.label_sets:
        return []
    from legalbuild.curation import rulebook
    from legalbuild.data.remote import locate
    from legalbuild.evaluation.labelsets import label_rows

    specs = list(recipe.curate.rulebooks) if recipe.curate else [rulebook.PACKAGED_REDLINE]
    by_playbook = rulebook.load_rulebooks(specs, recipe_dir).by_playbook()
    rows = []
    for label_set in recipe.eval.label_sets:
        path = locate(label_set, recipe_dir, downloads, log)
        rows += label_rows(label_set, path, by_playbook)
    return rows
