"""Stage `base`: resolve the base model once and hand later stages a plain Hugging Face folder.

Whatever the source (a packaged or local GGUF, a local folder, a pinned hub id: see
`legalbuild.basemodel.sources`), the stage writes `out/model/` (safetensors, tokenizer, chat
template, and a generation_config whose eos is the chat template's end-of-turn token, so generation
stops where a turn ends) and `out/base.json` describing where it came from, with the base's
`identity` (the same on every machine). Later stages never pay the GGUF conversion again: the folder
is cached under the stage key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.basemodel.convert import convert_gguf, copy_folder, finish_tokenizer
from legalbuild.basemodel.sources import (
    KNOWN_LICENCES,
    base_identity,
    base_key_inputs,
    materialise,
    resolve_base_location,
    tokenizer_location,
)
from legalbuild.engine.keys import library_versions

if TYPE_CHECKING:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe

DEPENDS_ON: tuple[str, ...] = ()


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    model = recipe.model
    return {
        "model": {"revision": model.revision, "trust_remote_code": model.trust_remote_code},
        "source": base_key_inputs(model, recipe_path.parent),
        "libraries": library_versions(("transformers", "gguf", "torch")),
    }


def run(ctx: StageContext) -> dict[str, Any]:
    model_settings = ctx.recipe.model
    kind, location = resolve_base_location(model_settings, ctx.recipe_dir)
    started = time.perf_counter()
    source = materialise(kind, location, model_settings)
    model_dir = ctx.out_dir / "model"

    if kind in ("package", "gguf"):
        ctx.log(
            f"converting GGUF {Path(location).name} to safetensors (dequantizing, ~40 s for 135M)"
        )
        params, architecture = convert_gguf(Path(location), model_dir, model_settings)
    else:
        ctx.log(f"copying model folder {source['path']}")
        params, architecture = copy_folder(Path(source["path"]), model_dir, model_settings)

    end_token = finish_tokenizer(
        tokenizer_location(model_settings, ctx.recipe_dir, default=source), model_dir
    )
    # base.json holds only what the key determines; where the files lay and how long it took
    # go to the manifest (ctx.facts), so the same key always gives the same bytes.
    ctx.facts.update(
        source_path=str(source.get("path")), prepare_seconds=round(time.perf_counter() - started, 1)
    )
    if "resolved_revision" in source:
        ctx.facts["resolved_revision"] = source["resolved_revision"]
    info = {
        "kind": kind,
        **{k: v for k, v in source.items() if k != "path"},
        "licence": model_settings.licence or KNOWN_LICENCES.get(model_settings.base, "unknown"),
        "parameters": params,
        "architecture": architecture,
        "end_of_turn_token": end_token,
    }
    if kind == "package":
        info["package"] = model_settings.base
    info["identity"] = base_identity(info)
    (ctx.out_dir / "base.json").write_text(json.dumps(info, indent=2) + "\n")
    ctx.log(f"{architecture}, {params:,} parameters, licence {info['licence']}, eos {end_token!r}")
    return {"parameters": params, "architecture": architecture, "kind": kind}
