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


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.engine.keys import library_versions
    from legalbuild.hardware import accelerator_kind
    from legalbuild.recipe import key_settings
    from legalbuild.training.distributed import key_part

    model = recipe.model
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
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        # bf16 autocast and fp32 train to different adapters: `auto` enters the key as resolved
        **(
            {"precision_resolved": auto_precision(accelerator_kind())}
            if recipe.train.precision == "auto"
            else {}
        ),
        # a CPU run's sums follow its thread count: one process pins torch to this many threads
        **({"cpu_threads": training_threads(recipe.train.cpu_threads)} if _pinned(recipe) else {}),
        "libraries": library_versions(),
    }


def _pinned(recipe: Recipe) -> bool:
    """One process on a CPU host: the run legalbuild pins to `training_threads()`."""
    from legalbuild.hardware import accelerator_kind
    from legalbuild.training.distributed import multi_process

    return accelerator_kind() == "cpu" and not multi_process(recipe)


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
    if not _pinned(recipe):
        return (
            "several training processes: each rank's threads are set by the launcher, not "
            "pinned by legalbuild, and bit-identical rebuilds were not checked"
        )
    return None


def run(ctx: StageContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the adapter. `callbacks` are extra TrainerCallbacks for one process (tests use one to
    simulate a crash)."""
    from legalbuild.hardware import accelerator_kind
    from legalbuild.training.distributed import check_host, multi_process
    from legalbuild.training.job import TrainJob

    resume_from = resume_point(ctx)
    if why := reproducibility(ctx.recipe):  # recorded in the manifest and the lock
        ctx.facts["not_bit_reproducible"] = why
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
