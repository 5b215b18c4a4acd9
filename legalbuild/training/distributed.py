"""What `[train.distributed]` means for a build: how many processes, what enters the train key,
the Trainer arguments of each strategy, and what this host refuses. No heavy import: the key
part is computed on every `plan`.

The key holds what changes the adapter: the world size, the strategy with its options (a
DeepSpeed JSON by the digest of its bytes) and the global batch (micro-batch x accumulation x
world size). The launcher, node_rank and rdzv_endpoint are left out: they say how processes find
each other, like a logging option. One process with DDP is the same training as no section, so
it has the same key and runs in the builder's own process.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import RecipeError, StageFailedError
from legalbuild.hardware import visible_gpus
from legalbuild.recipe.training import DEEPSPEED_PRESETS

if TYPE_CHECKING:
    from legalbuild.recipe import DistributedSettings, Recipe

PRESETS_DIR = Path(__file__).with_name("presets")  # zero2.json, zero3.json, zero3-offload.json
FSDP_ALIASES = {"offload_params": "cpu_offload"}  # accelerate's name -> transformers' fsdp_config


def processes_per_node(dist: DistributedSettings) -> int:
    """`nproc_per_node` resolved: `auto` = the GPUs visible here, 1 on a host without any."""
    if dist.nproc_per_node == "auto":
        return max(visible_gpus(), 1)
    return dist.nproc_per_node


def world_size(recipe: Recipe) -> int:
    dist = recipe.train.distributed
    return 1 if dist is None else processes_per_node(dist) * dist.nnodes


def multi_process(recipe: Recipe) -> bool:
    """Whether the train stage runs under a launcher (several ranks, or a sharding strategy)."""
    dist = recipe.train.distributed
    return dist is not None and (world_size(recipe) > 1 or dist.strategy != "ddp")


def deepspeed_config(dist: DistributedSettings, recipe_dir: Path) -> Path:
    """The ZeRO JSON a deepspeed recipe names: a shipped preset or a file beside the recipe."""
    assert dist.deepspeed is not None
    if (PRESETS_DIR / f"{dist.deepspeed}.json").is_file():
        return PRESETS_DIR / f"{dist.deepspeed}.json"
    path = Path(dist.deepspeed).expanduser()
    return path if path.is_absolute() else recipe_dir / path


def key_part(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    """The train key's `distributed` entry ({} for one process: the key of a recipe without the
    section)."""
    from legalbuild.hashing import path_digest

    dist = recipe.train.distributed
    if dist is None or not multi_process(recipe):
        return {}
    train = recipe.train
    size = world_size(recipe)
    part: dict[str, Any] = {
        "world_size": size,
        "strategy": dist.strategy,
        "global_batch": train.batch_size * train.gradient_accumulation_steps * size,
    }
    if dist.strategy == "fsdp":
        part["fsdp"] = fsdp_config(dist)
    if dist.strategy == "deepspeed":
        config = deepspeed_config(dist, recipe_path.parent)
        if not config.is_file():  # found by `plan`, not by a launched build
            raise RecipeError(
                f"[train.distributed] deepspeed = {dist.deepspeed!r}: {config} is not a file",
                hint=f"write the ZeRO JSON there, or use a preset: {', '.join(DEEPSPEED_PRESETS)}",
            )
        part["deepspeed"] = path_digest(config.parent, config.name)
    return {"distributed": part}


def fsdp_config(dist: DistributedSettings) -> dict[str, Any]:
    options = {FSDP_ALIASES.get(k, k): v for k, v in dist.fsdp.items()}
    return {"version": 2, **options}


def trainer_arguments(recipe: Recipe, recipe_dir: Path) -> dict[str, Any]:
    """SFTConfig arguments of the strategy ({} for one process)."""
    dist = recipe.train.distributed
    if dist is None or not multi_process(recipe):
        return {}
    if dist.strategy == "fsdp":
        return {"fsdp": True, "fsdp_config": fsdp_config(dist)}
    if dist.strategy == "deepspeed":
        return {"deepspeed": str(deepspeed_config(dist, recipe_dir))}
    # LoRA leaves most parameters frozen and every trained one is used: no search for unused ones
    return {"ddp_find_unused_parameters": False}


def check_host(recipe: Recipe, recipe_dir: Path, accelerator: str) -> None:
    """Refuse, before any process starts, what this host cannot run."""
    dist = recipe.train.distributed
    if dist is None:
        return
    where = "[train.distributed]"
    if dist.strategy == "fsdp" and accelerator != "cuda":
        raise RecipeError(
            f'{where} strategy "fsdp" needs CUDA GPUs; this host has none',
            hint='train on CPU with strategy = "ddp" (gloo ranks), or run this recipe on a GPU host',
        )
    if (
        dist.launcher == "accelerate"
        and importlib.util.find_spec("accelerate.commands.launch") is None
    ):
        raise RecipeError(f'{where} launcher "accelerate": accelerate is not installed')
    if dist.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise RecipeError(
                f'{where} strategy "deepspeed": the deepspeed package is not installed',
                hint="pip install 'legalbuild[deepspeed]' (or deepspeed), or use ddp/fsdp",
            )
        config = deepspeed_config(dist, recipe_dir)
        if not config.is_file():
            raise RecipeError(f"{where} deepspeed {dist.deepspeed!r}: {config} does not exist")
    gpus = visible_gpus()
    if accelerator == "cuda" and processes_per_node(dist) > gpus:
        raise StageFailedError(
            f"{where} nproc_per_node = {dist.nproc_per_node} asks for {processes_per_node(dist)} "
            f"processes on this node, and {gpus} GPU(s) are visible",
            hint='lower nproc_per_node or use "auto" (one process per visible GPU); a different '
            "world size is a different train key",
        )


def rank() -> int:
    """This process's rank under a launcher (0 alone)."""
    return int(os.environ.get("RANK", "0"))
