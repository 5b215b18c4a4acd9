"""Stage `train`: a LoRA (or QLoRA) adapter trained with TRL's SFTTrainer, monitored like a real run.

Reads `normalize/train.jsonl` + `val.jsonl` and the base stage's `model/` folder. Each row becomes a
conversational prompt-completion example (`legalbuild.prompting`), so the loss falls on the answer
only and the prompt is exactly what eval and serving send.

Monitoring: validation loss every `eval_steps`, an overfitting warning, optional early stopping that
keeps the best checkpoint, greedy samples at each evaluation, W&B (offline without an API key) /
TensorBoard / trackio under the entry's `logs/tracking/` (beside `out/`, not in it: run logs carry
timestamps and paths), and a rich progress bar with tokens/s and ETA.

Checkpoints live in `ctx.work_dir` (stable for the stage key), so a build killed mid-training
resumes from its last checkpoint. Writes `adapter/`, `metrics.json`, `log_history.json`,
`samples.jsonl` and `loss.png` into `ctx.out_dir`.

One process trains in the builder's own process (legalbuild/training/worker.py); with
`[train.distributed]` the launcher starts one worker per rank (legalbuild/training/launch.py).
The module top stays light: the stage graph reads `DEPENDS_ON` and calls `key_inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.hardware import auto_precision, training_threads

if TYPE_CHECKING:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe

DEPENDS_ON = ("normalize", "base")
# Keys of [train] a federated run does not read (each round trains [federated] local_steps).
NOT_FEDERATED = ("epochs", "max_steps", "warmup_ratio", "eval_steps", "early_stopping_patience")


def depends_on(recipe: Recipe) -> tuple[str, ...]:
    """A federated recipe trains on the silos' rows, never on the coordinator's normalize output."""
    return ("base",) if recipe.federated is not None else DEPENDS_ON


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.recipe import key_settings
    from legalbuild.training.distributed import key_part

    model = recipe.model
    if recipe.federated is not None:
        return federated_key(recipe, recipe_path)
    return {
        "model": {
            "dtype": model.dtype,
            "quantization": model.quantization,
            "double_quant": model.double_quant,
        },
        "lora": key_settings(recipe.lora),
        "train": key_settings(recipe.train),
        # world size, strategy and global batch; nothing for one process (launcher, ports: never)
        **key_part(recipe, recipe_path),
        **host_part(recipe),
        # a CPU run's sums follow its thread count: one process pins torch to this many threads
        **({"cpu_threads": training_threads(recipe.train.cpu_threads)} if _pinned(recipe) else {}),
    }


def host_part(recipe: Recipe) -> dict[str, Any]:
    """What every train key holds of the prompt and the host: the system prompt, the accelerator,
    `auto` precision as resolved (bf16 autocast and fp32 train to different adapters), and the
    versions of the libraries that train."""
    from legalbuild.engine.keys import library_versions
    from legalbuild.hardware import accelerator_kind

    return {
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        **(
            {"precision_resolved": auto_precision(accelerator_kind())}
            if recipe.train.precision == "auto"
            else {}
        ),
        "libraries": library_versions(),
    }


def _pinned(recipe: Recipe) -> bool:
    """One process on a CPU host: the run legalbuild pins to `training_threads()`."""
    from legalbuild.hardware import accelerator_kind
    from legalbuild.training.distributed import multi_process

    single = recipe.federated is None and not multi_process(recipe)
    return accelerator_kind() == "cpu" and single


def reproducibility(recipe: Recipe) -> str | None:
    """Why a rebuild of this train stage may write other bytes on this host (None: it does not;
    measured on CPU: the same bytes twice with the threads pinned, idle or under load)."""
    from legalbuild.hardware import accelerator_kind

    if accelerator_kind() == "cuda":
        return (
            "GPU kernels (cuBLAS reductions, atomic adds) may sum in another order from run to "
            "run and legalbuild does not force deterministic ones: the adapter is reproducible "
            "to numerical noise, not promised bit for bit"
        )
    if recipe.federated is not None:
        return (
            "federated: each silo trains in its own Flower process, whose threads legalbuild "
            "does not pin, and bit-identical rebuilds were not checked"
        )
    if not _pinned(recipe):
        return (
            "several training processes: each rank's threads are set by the launcher, not "
            "pinned by legalbuild, and bit-identical rebuilds were not checked"
        )
    return None


def federated_key(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    """[federated] settings, each silo's data as its own curate and normalize keys would hash it
    (names and digests, never rows or paths), the Flower venv's library versions."""
    from legalbuild.federated.environment import flower_versions
    from legalbuild.recipe import key_settings

    fed = recipe.federated
    assert fed is not None
    settings = key_settings(fed)
    settings.pop("silos")
    train = {k: v for k, v in key_settings(recipe.train).items() if k not in NOT_FEDERATED}
    return {
        "federated": settings,
        "silos": [{"name": s, **part} for s, part in silo_keys(recipe, recipe_path).items()],
        "lora": key_settings(recipe.lora),
        "train": train,
        "model": {"dtype": recipe.model.dtype},
        **host_part(recipe),
        "flower": flower_versions(),
    }


def silo_keys(recipe: Recipe, recipe_path: Path) -> dict[str, dict[str, Any]]:
    """Per silo, what its curate and normalize stages would put in their keys."""
    from legalbuild.federated.layout import silo_recipe
    from legalbuild.stages import curate, normalize

    assert recipe.federated is not None
    out = {}
    for silo in recipe.federated.silos:
        own = silo_recipe(recipe, silo)
        out[silo.name] = {
            "curate": curate.key_inputs(own, recipe_path) if own.curate else None,
            "normalize": normalize.key_inputs(own, recipe_path),
        }
    return out


def silo_data_keys(recipe: Recipe, recipe_path: Path) -> dict[str, str]:
    """A digest of each silo's data key part: a silo reuses its prepared rows while it holds."""
    from legalbuild.engine.keys import summarized
    from legalbuild.hashing import digest_json

    return {
        name: digest_json(summarized(part)) for name, part in silo_keys(recipe, recipe_path).items()
    }


def run(ctx: StageContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the adapter. `callbacks` are extra TrainerCallbacks for one process (tests use one to
    simulate a crash)."""
    if why := reproducibility(ctx.recipe):  # recorded in the manifest and the lock
        ctx.facts["not_bit_reproducible"] = why
    if ctx.recipe.federated is not None:
        from legalbuild.federated.run import run as federated_run

        data_keys = silo_data_keys(ctx.recipe, ctx.recipe_path)
        return federated_run(
            ctx.recipe, ctx.recipe_dir, Path(ctx.inputs["base"]), ctx.out_dir, ctx.work_dir,
            data_keys, ctx.log,
        )  # fmt: skip
    from legalbuild.hardware import accelerator_kind
    from legalbuild.training.distributed import check_host, multi_process
    from legalbuild.training.job import TrainJob

    resume_from = resume_point(ctx)
    job = TrainJob(
        key=ctx.key,
        recipe=ctx.recipe,
        recipe_dir=ctx.recipe_dir,
        base_dir=Path(ctx.inputs["base"]),
        data_dir=Path(ctx.inputs["normalize"]),
        out_dir=ctx.out_dir,
        work_dir=ctx.work_dir,
        logs_dir=ctx.logs_dir,
        log=ctx.log,
        console=ctx.console,
    )
    if multi_process(ctx.recipe):
        from legalbuild.training import launch

        check_host(ctx.recipe, ctx.recipe_dir, accelerator_kind())
        if callbacks:
            raise ValueError("callbacks run in one process only")
        return launch.run(job, resume_from)
    from legalbuild.hardware import torch_threads, training_threads
    from legalbuild.training.worker import train

    with torch_threads(training_threads(ctx.recipe.train.cpu_threads)):  # the count the key holds
        return train(job, resume_from, callbacks)


def resume_point(ctx: StageContext) -> Path | None:
    """The newest complete checkpoint in work_dir (half-written ones, from a kill while saving,
    are skipped and removed), with the samples file cut back to it."""
    from legalbuild.training.checkpoints import resumable_checkpoint, trim_samples

    checkpoint = resumable_checkpoint(ctx.work_dir / "checkpoints", ctx.log)
    step = int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else None
    trim_samples(ctx.work_dir / "samples.jsonl", step)
    if checkpoint:
        ctx.log(f"resuming from {checkpoint.name}")
    return checkpoint
