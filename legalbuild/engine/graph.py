"""The stage graph: which stages a recipe has, what each reads, and what its cache key covers.

Each stage module `legalbuild/stages/<name>.py` declares, beside `run`:
- `DEPENDS_ON`: the stages whose outputs it reads (absent ones, such as `curate` without a
  `[curate]` section, are skipped);
- `key_inputs(recipe, recipe_path)`: what else its output depends on (settings, data digests,
  library versions...), computed without loading anything heavy;
- optionally `enabled(recipe)`: whether the recipe has the stage at all (default: yes);
- optionally `depends_on(recipe)`: DEPENDS_ON as this recipe needs it (a federated train reads
  no normalize output).

A key hashes the stage's name, its upstream keys, the digest of the legalbuild code it runs
(`legalbuild.engine.code_digest`; the federated code only for a recipe with [federated]) and its
`key_inputs`. Keys chain: one changed byte in one data file
changes normalize's key and with it every key downstream. Nothing here imports torch & co.:
computing a plan must stay instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from legalbuild.engine.code_digest import code_files
from legalbuild.engine.keys import FileSet
from legalbuild.hashing import digest_json
from legalbuild.recipe import Recipe

STAGES = ("curate", "normalize", "base", "train", "merge", "eval")
# Kinds of store entries made on demand from a stage's output (export's GGUF files): the store
# owns their names (gc, clean, verify), the engine knows them only as entries whose manifest names
# the upstream entry they were made from (`Store.made_from`).
DERIVED = ("gguf",)
STORED = (*STAGES, *DERIVED)
# The code a recipe without [federated] never runs: its FederatedSection is None, and no stage
# reaches the Flower apps. Left out of such a recipe's keys, so federated work keeps its locks.
FEDERATED_CODE = ("legalbuild.federated", "legalbuild.recipe.federated")


@dataclass
class StageNode:
    name: str
    deps: tuple[str, ...]
    key: str = ""
    # what the key hashes (and the lock records): each file set as its digest and file count
    inputs: dict[str, Any] = field(default_factory=dict)
    # the per-file digests of each file set, by its flattened name ("code", "sources[0].data")
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return f"legalbuild.stages.{self.name}"


def stage_module(name: str) -> ModuleType:
    return importlib.import_module(f"legalbuild.stages.{name}")


def stage_names(recipe: Recipe) -> list[str]:
    names = []
    for name in STAGES:
        enabled = getattr(stage_module(name), "enabled", None)
        if enabled is None or enabled(recipe):
            names.append(name)
    return names


def build_graph(recipe: Recipe, recipe_path: Path) -> dict[str, StageNode]:
    """Every stage of the recipe with its key inputs and key, in build order."""
    nodes: dict[str, StageNode] = {}
    skip = () if recipe.federated is not None else FEDERATED_CODE
    for name in stage_names(recipe):
        module = stage_module(name)
        wanted = module.depends_on(recipe) if hasattr(module, "depends_on") else module.DEPENDS_ON
        deps = tuple(d for d in wanted if d in nodes)
        node = StageNode(name, deps)
        node.inputs, node.files = split_file_sets(
            {
                "stage": name,
                "upstream": {d: nodes[d].key for d in deps},
                "code": FileSet(code_files(module.__name__, skip)),
                **module.key_inputs(recipe, recipe_path),
            }
        )
        node.key = digest_json(node.inputs)
        nodes[name] = node
    return nodes


def split_file_sets(
    obj: Any, prefix: str = "", files: dict[str, dict[str, str]] | None = None
) -> tuple[Any, dict[str, dict[str, str]]]:
    """Replace each FileSet in nested inputs by its summary; collect its files under the name
    `legalbuild.engine.lock.flatten` gives it ("sources[0].data")."""
    files = {} if files is None else files
    if isinstance(obj, FileSet):
        files[prefix] = obj.files
        return obj.summary(), files
    if isinstance(obj, dict):
        return {
            k: split_file_sets(v, f"{prefix}.{k}" if prefix else str(k), files)[0]
            for k, v in obj.items()
        }, files
    if isinstance(obj, list):
        return [split_file_sets(v, f"{prefix}[{i}]", files)[0] for i, v in enumerate(obj)], files
    return obj, files


def downstream_of(nodes: dict[str, StageNode], stage: str) -> list[str]:
    """The stage itself and every stage that reads it, directly or not, in build order."""
    hit = {stage}
    for name, node in nodes.items():
        if any(d in hit for d in node.deps):
            hit.add(name)
    return [n for n in nodes if n in hit]
