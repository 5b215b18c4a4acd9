"""What rank 0 writes when training ends: the adapter (named by the base's identity, never a
path; set-valued fields sorted), samples.jsonl, log_history.json, loss.png and metrics.json, all
without the run's times and rates, which go to the entry's logs/timings.json: a rebuild with the
same key on the same host writes the same bytes (legalbuild/stages/train.py pins the threads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.training.distributed import rank
from legalbuild.training.job import Setup, TrainJob

if TYPE_CHECKING:
    from legalbuild.training.fit import Monitors


def save_adapter(job: TrainJob, setup: Setup, trainer: Any) -> bool:
    """Write the adapter (every rank takes part when it is sharded); True on rank 0, which writes
    the rest."""
    adapter_dir = job.out_dir / "adapter"
    main = rank() == 0
    if setup.sharded:  # every rank takes part in gathering the sharded adapter; rank 0 writes it
        trainer.save_model(str(adapter_dir))
        if main:
            (adapter_dir / "training_args.bin").unlink(missing_ok=True)
    elif main:
        trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    if not main:
        return False
    from legalbuild.training.adapter import record_base_identity, sort_set_fields

    setup.tokenizer.save_pretrained(adapter_dir)
    sort_set_fields(adapter_dir)
    record_base_identity(adapter_dir, job.base_dir)
    return True


def run_metrics(
    job: TrainJob,
    setup: Setup,
    trainer: Any,
    result: Any,
    final_val_loss: float | None,
    monitors: Monitors,
    resume_from: Path | None,
) -> dict[str, Any]:
    from legalbuild.training.monitoring import FORMAT_RATE_KEY, best_evaluation, loss_series

    train, history, state = job.recipe.train, trainer.state.log_history, trainer.state
    best = best_evaluation(history)
    train_losses = [e["loss"] for e in history if "loss" in e]
    format_rates = loss_series(history, FORMAT_RATE_KEY)
    lengths, val_lengths, val_rows = setup.lengths, setup.val_lengths, setup.val_rows
    return {
        "train_loss": train_losses[-1] if train_losses else None,
        "train_loss_mean": result.training_loss,
        "val_loss": final_val_loss,
        "best_step": best[0] if best else None,
        "best_val_loss": best[1] if best else None,
        "format_rate": format_rates[-1][1] if format_rates else None,
        "format_rate_history": format_rates,
        "overfitting": bool(monitors.overfit.events),
        "overfitting_events": monitors.overfit.events,
        "early_stopped": bool(train.early_stopping_patience)
        and state.global_step < state.max_steps,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": resume_from.name if resume_from else None,
        "truncated_rows": lengths["truncated"],
        "dropped_rows": lengths["dropped"],
        "truncated_val_rows": val_lengths["truncated"],
        "validation_rows_used": min(len(val_rows), train.eval_rows or len(val_rows)),
        "token_lengths": {"train": lengths, "val": val_lengths},
        "tokens_per_second": round(monitors.progress.tokens_per_second, 1),
        "tokens_seen": state.num_input_tokens_seen,
        "train_runtime": result.metrics.get("train_runtime"),
        "device": setup.device,
        "precision": setup.precision,
        "quantization": job.recipe.model.quantization,
        "trackers": setup.trackers,
    }


def write_reports(job: TrainJob, trainer: Any, metrics: dict[str, Any]) -> None:
    """samples.jsonl, log_history.json, loss.png and metrics.json beside the adapter."""
    from legalbuild.training.monitoring import plot_losses

    samples = job.work_dir / "samples.jsonl"
    if samples.exists():
        shutil.copyfile(samples, job.out_dir / "samples.jsonl")
    else:
        (job.out_dir / "samples.jsonl").write_text("")
    history = trainer.state.log_history
    # times and rates differ on every run: they go beside out/ (logs/timings.json), not into it
    timings = {
        "metrics": {k: v for k, v in metrics.items() if timed(k)},
        "log_history": [{k: v for k, v in e.items() if timed(k) or k == "step"} for e in history],
    }
    job.logs_dir.mkdir(parents=True, exist_ok=True)
    (job.logs_dir / TIMINGS).write_text(json.dumps(timings, indent=1) + "\n")
    untimed = [{k: v for k, v in e.items() if not timed(k)} for e in history]
    (job.out_dir / "log_history.json").write_text(json.dumps(untimed, indent=1) + "\n")
    title = f"{job.recipe.project.name}: LoRA r={job.recipe.lora.r}"
    plot_losses(history, job.out_dir / "loss.png", title=title)
    untimed_metrics = {k: v for k, v in metrics.items() if not timed(k)}
    (job.out_dir / "metrics.json").write_text(json.dumps(untimed_metrics, indent=2) + "\n")
    job.log(
        f"done: step {metrics['global_step']}, train loss {_fmt(metrics['train_loss'])}, val loss "
        f"{_fmt(metrics['val_loss'])} (best {_fmt(metrics['best_val_loss'])} @ {metrics['best_step']}), "
        f"{metrics['tokens_per_second']:,} tok/s"
    )


TIMINGS = "timings.json"  # in the entry's logs/: train_runtime, tokens_per_second and the like


def timed(key: str) -> bool:
    """A value that measures time (the trainer's *_runtime, *_per_second): never the same twice."""
    return key.endswith(("_runtime", "_per_second"))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------ one rank, launched
