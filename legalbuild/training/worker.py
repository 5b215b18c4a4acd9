"""What one training process runs, step by step: the rows read and checked, the tokenizer and the
rows' lengths, the base model loaded with LoRA attached, TRL's SFTTrainer run (fit.py), and (on
rank 0 only) the adapter and its reports written into the stage's output folder (outputs.py).

One process: the train stage calls `train` in the builder's process. Several: the launcher starts
`python -m legalbuild.training.worker SPEC` once per rank (legalbuild/training/launch.py); every
rank trains, rank 0 alone logs to the console and writes outputs, and a `LegalbuildError` raised
on a rank is written beside the spec for the builder to raise again. No heavy import at module
level.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legalbuild.errors import LegalbuildError, RecipeError, StageFailedError
from legalbuild.hardware import torch_device
from legalbuild.training.data import (
    length_report,
    read_rows,
    token_lengths,
)
from legalbuild.training.distributed import rank
from legalbuild.training.job import Setup, TrainJob
from legalbuild.training.model import (
    attach_lora,
    check_frozen,
    load_base_model,
    precision_reason,
    resolve_precision,
)

LOG_MARK = "legalbuild-log: "  # rank 0's stage log lines, told apart from library output


def train(job: TrainJob, resume_from: Path | None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the adapter; rank 0 writes the outputs and returns the metrics (other ranks: {})."""
    from datasets.utils import logging as datasets_logging

    # TRL's four dataset passes each draw a bar; the stage's own progress bar is the one to watch.
    bars_were_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return _train(job, resume_from, callbacks)
    finally:
        if bars_were_on:
            datasets_logging.enable_progress_bar()


def _train(job: TrainJob, resume_from: Path | None, callbacks: Sequence[Any]) -> dict[str, Any]:
    from legalbuild.training.fit import Monitors, fit
    from legalbuild.training.outputs import run_metrics, save_adapter, write_reports

    setup = _setup(job)
    _tokenize(job, setup)
    model, params = _model(job, setup)
    monitors = Monitors(job, setup)
    trainer, args, result, final_val_loss = fit(
        job, setup, model, [*monitors.callbacks, *callbacks], monitors, resume_from
    )
    if not save_adapter(job, setup, trainer):
        return {}
    metrics = {
        **run_metrics(job, setup, trainer, result, final_val_loss, monitors, resume_from),
        **params,
        **(
            {"world_size": args.world_size, "strategy": setup.strategy}
            if setup.strategy != "none"
            else {}
        ),
    }
    write_reports(job, trainer, metrics)
    return metrics


def _setup(job: TrainJob) -> Setup:
    """The rows read, the trackers, strategy, device and precision chosen; bad input refused."""
    from legalbuild.training.distributed import multi_process
    from legalbuild.training.tracking import selected_trackers

    recipe, train = job.recipe, job.recipe.train
    train_rows = read_rows(job.data_dir / "train.jsonl")
    val_rows = read_rows(job.data_dir / "val.jsonl")
    if not train_rows:
        raise StageFailedError("train.jsonl has no rows: nothing to train on")
    if train.early_stopping_patience and not val_rows:
        raise RecipeError(
            "[train.early_stopping_patience] needs validation rows, and val.jsonl is empty"
        )
    device = torch_device()
    setup = Setup(
        train_rows,
        val_rows,
        selected_trackers(train.report_to),
        recipe.train.distributed.strategy if multi_process(recipe) else "none",
        device,
        resolve_precision(train.precision, device),
    )
    job.log(
        f"device {device}, precision {setup.precision}{precision_reason(train.precision, device)}, "
        f"quantization {recipe.model.quantization}"
    )
    return setup


def _tokenize(job: TrainJob, setup: Setup) -> None:
    """The tokenizer, and how the rows fit in max_length (logged, kept for the metrics)."""
    from transformers import AutoTokenizer

    train, system_prompt = job.recipe.train, job.recipe.data.system_prompt
    setup.tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    lengths = length_report(
        token_lengths(setup.tokenizer, setup.train_rows, system_prompt), train.max_length
    )
    val_lengths = length_report(
        token_lengths(setup.tokenizer, setup.val_rows, system_prompt), train.max_length
    )
    setup.lengths, setup.val_lengths = lengths, val_lengths
    val_rows = setup.val_rows
    job.log(
        f"{lengths['rows']} train rows ({lengths['mean_tokens']} tokens mean, p95 {lengths['p95_tokens']}), "
        f"{lengths['truncated']} truncated at max_length {train.max_length}, {lengths['dropped']} dropped "
        f"(prompt alone too long); {len(val_rows)} validation rows ({val_lengths['truncated']} truncated), "
        f"{min(len(val_rows), train.eval_rows or len(val_rows))} used for validation loss"
    )


def _model(job: TrainJob, setup: Setup) -> tuple[Any, dict[str, Any]]:
    """The base model loaded for training, LoRA attached, and proof the base stays frozen."""
    recipe = job.recipe
    quantized = recipe.model.quantization != "none"
    model = load_base_model(
        job.model_dir, recipe.model, setup.device, setup.precision, fsdp=setup.strategy == "fsdp"
    )
    model = attach_lora(model, recipe.lora, recipe.train, quantized)
    params = check_frozen(model, recipe.lora.bias)
    job.log(
        f"trainable {params['trainable_parameters']:,} of {params['total_parameters']:,} parameters; "
        f"frozen {params['frozen_fraction']:.4%} (base weights frozen: {params['base_frozen_fraction']:.4%})"
    )
    return model, {
        k: params[k] for k in ("trainable_parameters", "total_parameters", "frozen_fraction")
    }


def rank_job(spec: dict[str, Any]) -> TrainJob:
    """The training job the builder wrote into the launch spec (see launch.write_spec)."""
    me = rank()

    def log(message: str) -> None:
        # rank 0 speaks for the stage; the others' lines go to their own log files only
        print(f"{LOG_MARK if me == 0 else f'rank {me}: '}{message}", flush=True)

    return TrainJob.from_spec(spec, log)


def main(argv: list[str]) -> int:
    from legalbuild.processes import die_with_parent

    die_with_parent()  # a launcher killed outright takes its ranks with it
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    (spec_path.parent / f"rank-{rank()}.pid").write_text(f"{os.getpid()}\n")
    job = rank_job(spec)
    job.log(f"rank {rank()} of {os.environ.get('WORLD_SIZE', '1')} started (pid {os.getpid()})")
    resume = Path(spec["resume_from"]) if spec.get("resume_from") else None
    try:
        train(job, resume)
    except LegalbuildError as exc:  # for the builder to raise again, with its exit code
        error = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        (spec_path.parent / f"error-rank-{rank()}.json").write_text(json.dumps(error))
        print(f"rank {rank()}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        close_process_group()
    return 0


def close_process_group() -> None:
    """Tear the rank's process group down before the interpreter exits: left to exit, gloo's
    threads were at times destroyed while joinable ("terminate called without an active
    exception", SIGABRT) after a finished training. No barrier: a rank that failed must not wait."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
