"""What one training process runs: the base model loaded, LoRA attached, TRL's SFTTrainer trained,
and (on rank 0 only) the adapter and its reports written into the stage's output folder.

One process: the train stage calls `train` in the builder's process. Several: the launcher starts
`python -m legalbuild.training.worker SPEC` once per rank (legalbuild/training/launch.py); every
rank trains, rank 0 alone logs to the console and writes outputs, and a `LegalbuildError` raised
on a rank is written beside the spec for the builder to raise again. No heavy import at module
level.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import LegalbuildError, RecipeError, StageFailedError
from legalbuild.hardware import torch_device
from legalbuild.training.data import (
    length_report,
    read_rows,
    sample_prompts,
    to_dataset,
    token_lengths,
)
from legalbuild.training.model import (
    attach_lora,
    check_frozen,
    load_base_model,
    precision_reason,
    resolve_precision,
)

if TYPE_CHECKING:
    from legalbuild.recipe import TrainSection
    from legalbuild.stages.context import StageContext

LOG_MARK = "legalbuild-log: "  # rank 0's stage log lines, told apart from library output


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def sft_config(
    train: TrainSection,
    checkpoints: Path,
    device: str,
    precision: str,
    has_val: bool,
    trackers: list[str],
    project: str,
    strategy_args: dict[str, Any] | None = None,
) -> Any:
    from trl import SFTConfig

    early_stopping = train.early_stopping_patience is not None
    return SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a share of the steps in transformers 5
        weight_decay=train.weight_decay,
        max_length=train.max_length,
        packing=train.packing,
        seed=train.seed,
        data_seed=train.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=train.gradient_checkpointing,
        eval_strategy="steps" if has_val else "no",
        eval_steps=train.eval_steps,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        # Early stopping keeps the best checkpoint, so every evaluation must have one to go back to.
        save_strategy="steps",
        save_steps=train.eval_steps if early_stopping else train.save_steps,
        save_total_limit=2,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        report_to=trackers or "none",
        run_name=project,
        project=project,
        trackio_static_space_id=False,  # local only: never create a Space
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=device == "cuda",
        **(strategy_args or {}),
    )


def train(
    ctx: StageContext, resume_from: Path | None, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train the adapter; rank 0 writes the outputs and returns the metrics (other ranks: {})."""
    from datasets.utils import logging as datasets_logging

    # TRL's four dataset passes each draw a bar; the stage's own progress bar is the one to watch.
    bars_were_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return _train(ctx, resume_from, callbacks)
    finally:
        if bars_were_on:
            datasets_logging.enable_progress_bar()


def _train(ctx: StageContext, resume_from: Path | None, callbacks: Sequence[Any]) -> dict[str, Any]:
    from legalbuild.training.distributed import multi_process, trainer_arguments
    from legalbuild.training.tracking import finish_wandb, selected_trackers, tracking_environment

    recipe = ctx.recipe
    train, lora, model_settings = recipe.train, recipe.lora, recipe.model
    system_prompt = recipe.data.system_prompt
    model_dir = Path(ctx.inputs["base"]) / "model"
    train_rows = read_rows(Path(ctx.inputs["normalize"]) / "train.jsonl")
    val_rows = read_rows(Path(ctx.inputs["normalize"]) / "val.jsonl")
    if not train_rows:
        raise StageFailedError("train.jsonl has no rows: nothing to train on")
    if train.early_stopping_patience and not val_rows:
        raise RecipeError(
            "[train.early_stopping_patience] needs validation rows, and val.jsonl is empty"
        )
    trackers = selected_trackers(train.report_to)
    strategy = recipe.train.distributed.strategy if multi_process(recipe) else "none"
    sharded = strategy in ("fsdp", "deepspeed")

    device = torch_device()
    precision = resolve_precision(train.precision, device)
    ctx.log(
        f"device {device}, precision {precision}{precision_reason(train.precision, device)}, "
        f"quantization {model_settings.quantization}"
    )

    from transformers import AutoTokenizer, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = length_report(token_lengths(tokenizer, train_rows, system_prompt), train.max_length)
    val_lengths = length_report(token_lengths(tokenizer, val_rows, system_prompt), train.max_length)
    ctx.log(
        f"{lengths['rows']} train rows ({lengths['mean_tokens']} tokens mean, p95 {lengths['p95_tokens']}), "
        f"{lengths['truncated']} truncated at max_length {train.max_length}, {lengths['dropped']} dropped "
        f"(prompt alone too long); {len(val_rows)} validation rows ({val_lengths['truncated']} truncated), "
        f"{min(len(val_rows), train.eval_rows or len(val_rows))} used for validation loss"
    )

    quantized = model_settings.quantization != "none"
    model = load_base_model(model_dir, model_settings, device, precision, fsdp=strategy == "fsdp")
    model = attach_lora(model, lora, train, quantized)
    params = check_frozen(model, lora.bias)
    ctx.log(
        f"trainable {params['trainable_parameters']:,} of {params['total_parameters']:,} parameters; "
        f"frozen {params['frozen_fraction']:.4%} (base weights frozen: {params['base_frozen_fraction']:.4%})"
    )

    from legalbuild.training.callbacks import (
        LoraHistogramCallback,
        OverfitMonitor,
        ProgressCallback,
        SampleCallback,
    )
    from legalbuild.training.monitoring import (
        FORMAT_RATE_KEY,
        best_evaluation,
        loss_series,
        plot_losses,
    )

    checkpoints = ctx.work_dir / "checkpoints"
    samples_path = ctx.work_dir / "samples.jsonl"
    progress = ProgressCallback(ctx.log, ctx.console)
    overfit = OverfitMonitor(train.overfit_patience, ctx.log)
    stage_callbacks: list[Any] = [progress, overfit, LoraHistogramCallback()]
    prompts = sample_prompts(val_rows, train.samples)
    sampler = None
    if prompts and val_rows and sharded:
        ctx.log(f"no samples during training: the {strategy} shards hold the model together")
    elif prompts and val_rows:
        sampler = SampleCallback(
            tokenizer, system_prompt, prompts, train.samples.max_new_tokens, samples_path, ctx.log
        )
        stage_callbacks.append(sampler)
    if train.early_stopping_patience:
        stage_callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience)
        )

    main = rank() == 0
    tracking_dir = ctx.logs_dir / "tracking"
    if main:
        tracking_dir.mkdir(parents=True, exist_ok=True)
    with tracking_environment(trackers, tracking_dir, recipe.project.name):
        args = sft_config(
            train,
            checkpoints,
            device,
            precision,
            bool(val_rows),
            trackers,
            recipe.project.name,
            trainer_arguments(recipe, ctx.recipe_dir),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=to_dataset(train_rows, system_prompt),
            eval_dataset=to_dataset(val_rows[: train.eval_rows], system_prompt)
            if val_rows
            else None,
            processing_class=tokenizer,
            callbacks=[*stage_callbacks, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # our progress callback prints the logs
        if sampler is not None:
            sampler.log_metrics = trainer.log  # the parse rate reaches trackers and log history
        report_ranks(ctx, device)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            final_val_loss = _final_validation_loss(trainer, args, bool(val_rows))
        finally:
            finish_wandb()  # an offline run left open would hold its files after a crash

    adapter_dir = ctx.out_dir / "adapter"
    if sharded:  # every rank takes part in gathering the sharded adapter; rank 0 writes it
        trainer.save_model(str(adapter_dir))
        if main:
            (adapter_dir / "training_args.bin").unlink(missing_ok=True)
    elif main:
        trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    if not main:
        return {}
    from legalbuild.training.adapter import record_base_identity

    tokenizer.save_pretrained(adapter_dir)
    record_base_identity(adapter_dir, Path(ctx.inputs["base"]))
    if samples_path.exists():
        shutil.copyfile(samples_path, ctx.out_dir / "samples.jsonl")
    else:
        (ctx.out_dir / "samples.jsonl").write_text("")

    history = trainer.state.log_history
    (ctx.out_dir / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
    plot_losses(history, ctx.out_dir / "loss.png", title=f"{recipe.project.name}: LoRA r={lora.r}")
    best = best_evaluation(history)
    train_losses = [e["loss"] for e in history if "loss" in e]
    format_rates = loss_series(history, FORMAT_RATE_KEY)
    metrics = {
        "train_loss": train_losses[-1] if train_losses else None,
        "train_loss_mean": result.training_loss,
        "val_loss": final_val_loss,
        "best_step": best[0] if best else None,
        "best_val_loss": best[1] if best else None,
        "format_rate": format_rates[-1][1] if format_rates else None,
        "format_rate_history": format_rates,
        "overfitting": bool(overfit.events),
        "overfitting_events": overfit.events,
        "early_stopped": bool(train.early_stopping_patience)
        and trainer.state.global_step < trainer.state.max_steps,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "resumed_from": resume_from.name if resume_from else None,
        "truncated_rows": lengths["truncated"],
        "dropped_rows": lengths["dropped"],
        "truncated_val_rows": val_lengths["truncated"],
        "validation_rows_used": min(len(val_rows), train.eval_rows or len(val_rows)),
        "token_lengths": {"train": lengths, "val": val_lengths},
        "tokens_per_second": round(progress.tokens_per_second, 1),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_runtime": result.metrics.get("train_runtime"),
        "trainable_parameters": params["trainable_parameters"],
        "total_parameters": params["total_parameters"],
        "frozen_fraction": params["frozen_fraction"],
        "device": device,
        "precision": precision,
        "quantization": model_settings.quantization,
        "trackers": trackers,
        **({"world_size": args.world_size, "strategy": strategy} if strategy != "none" else {}),
    }
    (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    ctx.log(
        f"done: step {metrics['global_step']}, train loss {_fmt(metrics['train_loss'])}, val loss "
        f"{_fmt(final_val_loss)} (best {_fmt(metrics['best_val_loss'])} @ {metrics['best_step']}), "
        f"{metrics['tokens_per_second']:,} tok/s"
    )
    return metrics


def report_ranks(ctx: StageContext, device: str) -> None:
    """Rank 0 logs every rank that joined (pid, host): proof that all of them run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    me = {"rank": dist.get_rank(), "pid": os.getpid(), "host": os.uname().nodename}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    ctx.log(
        f"{len(everyone)} ranks ({dist.get_backend()}, {device}): "
        + ", ".join(f"rank {r['rank']} pid {r['pid']} on {r['host']}" for r in everyone)
    )


def _final_validation_loss(trainer: Any, args: Any, has_val: bool) -> float | None:
    """Validation loss of the adapter being saved (the best one with early stopping)."""
    if not has_val:
        return None
    if args.load_best_model_at_end and trainer.state.best_metric is not None:
        return trainer.state.best_metric
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------ one rank, launched
def rank_context(spec: dict[str, Any]) -> StageContext:
    """The stage context the builder wrote into the launch spec (see launch.write_spec)."""
    from legalbuild.recipe import Recipe
    from legalbuild.stages.context import StageContext

    me = rank()

    def log(message: str) -> None:
        # rank 0 speaks for the stage; the others' lines go to their own log files only
        print(f"{LOG_MARK if me == 0 else f'rank {me}: '}{message}", flush=True)

    return StageContext(
        name=spec["name"],
        key=spec["key"],
        recipe=Recipe.model_validate(spec["recipe"]),
        recipe_path=Path(spec["recipe_path"]),
        out_dir=Path(spec["out_dir"]),
        work_dir=Path(spec["work_dir"]),
        inputs={k: Path(v) for k, v in spec["inputs"].items()},
        log_fn=log,
    )


def main(argv: list[str]) -> int:
    from legalbuild.serve_process import die_with_parent

    die_with_parent()  # a launcher killed outright takes its ranks with it
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    (spec_path.parent / f"rank-{rank()}.pid").write_text(f"{os.getpid()}\n")
    ctx = rank_context(spec)
    ctx.log(f"rank {rank()} of {os.environ.get('WORLD_SIZE', '1')} started (pid {os.getpid()})")
    resume = Path(spec["resume_from"]) if spec.get("resume_from") else None
    try:
        train(ctx, resume)
    except LegalbuildError as exc:  # for the builder to raise again, with its exit code
        error = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        (spec_path.parent / f"error-rank-{rank()}.json").write_text(json.dumps(error))
        print(f"rank {rank()}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
