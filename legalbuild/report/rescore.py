"""A recipe's own eval on a model that recipe did not build: `legalbuild eval RECIPE --model M`.

The eval stage's code (legalbuild/stages/eval.py) runs with the recipe's held-out rows, extra sets,
label sets and `[eval]` settings, on another model:

- another recipe (a .toml file): its merged model, re-hashed against its manifest first, so it
  must be built;
- a merged model folder (config.json and weights: `legalbuild export --format hf`, a snapshot);
- a LoRA adapter folder (adapter_config.json: a training checkpoint's folder, a train entry's
  `adapter/`): merged into the recipe's base model first, with the recipe's `[merge]` settings and
  checks, as the merge stage does.

So "how does recipe B's model do on recipe A's rows" and "how did the checkpoint at step 200 do"
get the same rows and the same scoring as a build, and nothing is rebuilt. Nothing enters the
cache: the work (a merged checkpoint, the eval's files) lives in a temporary folder under the
cache's `tmp/`, removed at the end (its name carries the owner's pid, so `legalbuild gc` clears one
a crash left). eval.json and answers.jsonl are written to `out` only when asked, each replaced whole
or refused (never a folder, link, FIFO or device), and `out` is created only where nothing is.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legalbuild.engine import pipeline
from legalbuild.engine.context import StageContext
from legalbuild.engine.ownership import owner_tag, remove_tree
from legalbuild.errors import LegalbuildError
from legalbuild.files import check_output_file, display_path, write_replacing

OUTPUT_FILES = ("eval.json", "answers.jsonl")


def model_kind(model: Path) -> str:
    """`recipe`, `merged` or `adapter`: what `--model` names, or a LegalbuildError saying what
    was expected there."""
    shown = display_path(model)
    if model.is_file() and model.suffix == ".toml":
        return "recipe"
    if not model.is_dir():
        raise LegalbuildError(
            f"--model {shown}: "
            + ("no such file or folder" if not os.path.lexists(model) else "not a folder"),
            hint="name a recipe (.toml) whose merge stage is built, a merged model folder "
            "(config.json) or a LoRA adapter folder (adapter_config.json)",
        )
    if (model / "adapter_config.json").is_file():
        return "adapter"
    if (model / "config.json").is_file():
        return "merged"
    raise LegalbuildError(
        f"--model {shown}: a folder with neither config.json (a merged model) nor "
        "adapter_config.json (a LoRA adapter)",
        hint="a training checkpoint is the checkpoint-N folder; a built recipe's model is named "
        "by its .toml",
    )


def check_out_dir(out: Path) -> None:
    """Refuse, before any work, an output folder the results could not be written to without
    replacing something that is not a regular file legalbuild may overwrite."""
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise LegalbuildError(
            f"--out {display_path(out)}: exists and is not a folder",
            hint="name a new folder (it is created) or an existing one",
        )
    for name in OUTPUT_FILES:
        check_output_file(out / name)


def rescore(
    loaded: Any,
    store: Any,
    model: Path,
    *,
    out: Path | None = None,
    label_sets: bool = True,
    compare_base: bool = False,
    max_rows: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The recipe's eval of `model` (see the module docstring); returns eval.json's content."""
    kind = model_kind(model)
    if out is not None:
        check_out_dir(out)
    inputs = _recipe_inputs(loaded, store, compare_base or kind == "adapter")
    settings = loaded.recipe.eval.model_copy(
        update={
            "compare_base": compare_base,
            "fail_if_worse": False,
            "max_rows": max_rows or loaded.recipe.eval.max_rows,
            **({} if label_sets else {"label_sets": []}),
        }
    )
    recipe = loaded.recipe.model_copy(update={"eval": settings})
    work = store.root / "tmp" / f"rescore-{owner_tag()}-{secrets.token_hex(4)}"
    (work / "out").mkdir(parents=True)
    try:
        inputs["merge"] = _model_entry(
            model, kind, loaded, recipe, store, inputs.get("base"), work, log
        )
        log(f"model: {display_path(inputs['merge'] / 'model')} ({kind})")
        from legalbuild.stages import eval as eval_stage

        ctx = StageContext(
            name="eval",
            key="rescore",
            recipe=recipe,
            recipe_path=loaded.recipe_path,
            out_dir=work / "out",
            work_dir=work / "work",
            inputs=inputs,
            log_fn=lambda m: log(f"eval       {m}"),
            downloads_dir=store.root / "downloads",
        )
        eval_stage.run(ctx)
        result = json.loads((work / "out" / "eval.json").read_text(encoding="utf-8"))
        if out is not None:
            _publish(work / "out", out)
        return result
    finally:
        remove_tree(work)


def _recipe_inputs(loaded: Any, store: Any, need_base: bool) -> dict[str, Path]:
    """The recipe's own entries the eval reads: normalize (its held-out rows) and, when needed,
    base; checked byte for byte, NotBuiltError naming the command when one is missing."""
    inputs = {}
    stages = ["normalize"] + (["base"] if need_base else [])
    for stage in stages:
        if stage in loaded.nodes:
            inputs[stage] = pipeline.locate_output(loaded, store, stage, verify=True)
    return inputs


def _model_entry(
    model: Path,
    kind: str,
    loaded: Any,
    recipe: Any,
    store: Any,
    base: Path | None,
    work: Path,
    log: Callable[[str], None],
) -> Path:
    """A folder holding the model to score as `model/`, as the eval stage reads a merge entry. An
    adapter is merged by the merge stage's own `run` (its base check, merge and parity checks)."""
    if kind == "recipe":
        other = pipeline.Loaded.from_path(model)
        return pipeline.locate_output(other, store, "merge", verify=True)
    entry = work / "merge"
    entry.mkdir()
    if kind == "merged":
        (entry / "model").symlink_to(model.resolve(), target_is_directory=True)
        return entry
    from legalbuild.stages import merge as merge_stage

    assert base is not None  # _recipe_inputs was asked for it
    (work / "train").mkdir()
    (work / "train" / "adapter").symlink_to(model.resolve(), target_is_directory=True)
    merge_stage.run(
        StageContext(
            name="merge",
            key="rescore",
            recipe=recipe,
            recipe_path=loaded.recipe_path,
            out_dir=entry,
            work_dir=work / "merge-work",
            inputs={"base": base, "train": work / "train"},
            log_fn=lambda m: log(f"merge      {m}"),
        )
    )
    return entry


def _publish(made: Path, out: Path) -> None:
    """Copy eval.json and answers.jsonl into `out`, each replaced whole (checked again: the
    folder may have changed during the eval)."""
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        data = (made / name).read_bytes()
        write_replacing(out / name, lambda temp, data=data: temp.write_bytes(data))
