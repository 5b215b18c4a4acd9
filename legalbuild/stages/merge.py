"""Stage `merge`: fold the LoRA adapter into the base weights and prove the result is the same model.

`legalbuild.merging.merge.merge_adapter` does the work and returns a report (written as merge.json);
every check of `legalbuild.merging.checks` runs on the saved folder as a deployer would use it
(logit parity, no adapter files, tied embeddings, tokenizer and end-of-turn), and any failure
raises StageFailedError naming every failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.merging.checks import raise_on_failed_checks
from legalbuild.merging.merge import merge_adapter

if TYPE_CHECKING:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe

DEPENDS_ON = ("base", "train")


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.engine.keys import library_versions
    from legalbuild.recipe import key_settings

    return {
        "merge": key_settings(recipe.merge),
        "quantization": recipe.model.quantization,
        "system_prompt": recipe.data.system_prompt,
        "libraries": library_versions(("torch", "transformers", "peft", "safetensors")),
    }


def run(ctx: StageContext) -> dict[str, Any]:
    from legalbuild.training.adapter import check_adapter_base

    base_dir = ctx.inputs["base"] / "model"
    adapter_dir = ctx.inputs["train"] / "adapter"
    check_adapter_base(adapter_dir, ctx.inputs["base"])  # the base folder is the base entry's
    report = merge_adapter(
        base_dir,
        adapter_dir,
        ctx.out_dir / "model",
        ctx.recipe.merge,
        system_prompt=ctx.recipe.data.system_prompt,
        trained_quantization=ctx.recipe.model.quantization,
        trust_remote_code=ctx.recipe.model.trust_remote_code,
        log=ctx.log,
    )
    (ctx.out_dir / "merge.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    raise_on_failed_checks(report)
    return {
        "max_logit_diff": report["max_logit_diff"],
        "dtype": report["dtype"],
        "parameters": report["parameters"],
        "size_bytes": report["size_bytes"],
        "seconds": report["seconds"],
    }
