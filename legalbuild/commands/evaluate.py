"""`legalbuild eval`: a recipe's eval (its rows, label sets and scoring) on a model it did not
build. It parses and prints; the work is in legalbuild.report.rescore."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from legalbuild.commands.common import (
    AsJson,
    CacheDir,
    RecipeArg,
    console,
    err_console,
    open_recipe,
)

ModelArg = Annotated[
    Path,
    typer.Option(
        "--model",
        help="What to score: another recipe (.toml; its merge stage must be built), a merged "
        "model folder (config.json), or a LoRA adapter folder (adapter_config.json, e.g. a "
        "training checkpoint-N), merged into this recipe's base first.",
        show_default=False,
    ),
]


def evaluate(
    recipe: RecipeArg,
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for eval.json and answers.jsonl (created if absent; those two files are "
            "replaced whole). Default: print only.",
        ),
    ] = None,
    label_sets: Annotated[
        bool,
        typer.Option(
            "--label-sets/--no-label-sets",
            help="Also ask the recipe's [[eval.label_sets]] questions (CUAD: hundreds of them).",
        ),
    ] = True,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Also score the recipe's base model.")
    ] = False,
    max_rows: Annotated[
        int | None,
        typer.Option(min=1, help="Held-out rows to score at most (default: [eval] max_rows)."),
    ] = None,
    as_json: AsJson = False,
    cache_dir: CacheDir = None,
) -> None:
    """Score a model with RECIPE's eval: its held-out rows, label sets and scoring, as a build does.

    The model is scored beside the rulebook's regexes (told the rules, and unscoped) on the
    same rows, so figures compare with RECIPE's own eval table. RECIPE's normalize stage must be
    built (`legalbuild build RECIPE --until normalize`; base too for an adapter or
    --compare-base). Nothing is added to the cache.

    Examples: legalbuild eval recipes/legal-audit-smollm2.toml --model
    recipes/legal-audit-smollm2-cuad.toml (the CUAD model on the default's test rows);
    legalbuild eval recipe.toml --model ckpts/checkpoint-200 --out eval-200/."""
    from legalbuild.evaluation.table import format_comparison_table
    from legalbuild.report.rescore import rescore

    loaded, store = open_recipe(recipe, cache_dir)
    say = (
        (lambda m: err_console.print(m, markup=False))
        if as_json
        else (lambda m: console.print(m, markup=False))
    )
    result = rescore(
        loaded,
        store,
        model,
        out=out,
        label_sets=label_sets,
        compare_base=compare_base,
        max_rows=max_rows,
        log=say,
    )
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    console.print(format_comparison_table(result), markup=False)
    if out is not None:
        console.print(f"wrote {out / 'eval.json'} and {out / 'answers.jsonl'}")
