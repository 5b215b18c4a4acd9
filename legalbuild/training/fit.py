"""TRL's SFTTrainer for one training run: its configuration from the recipe, the stage's callbacks
(progress, overfitting, LoRA histograms, samples, early stopping), the run itself (resumed from a
checkpoint when there is one) and the validation loss of the adapter it ends with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.training.data import sample_prompts, to_dataset
from legalbuild.training.distributed import rank
from legalbuild.training.job import Setup, TrainJob

if TYPE_CHECKING:
    from legalbuild.recipe import TrainSection


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


class Monitors:
    """The stage's callbacks: progress, overfitting, LoRA histograms, samples, early stopping."""

    def __init__(self, job: TrainJob, setup: Setup):
        from transformers import EarlyStoppingCallback

        from legalbuild.training.callbacks import (
            LoraHistogramCallback,
            OverfitMonitor,
            ProgressCallback,
            SampleCallback,
        )

        train, system_prompt = job.recipe.train, job.recipe.data.system_prompt
        self.samples_path = job.work_dir / "samples.jsonl"
        self.progress = ProgressCallback(job.log, job.console)
        self.overfit = OverfitMonitor(train.overfit_patience, job.log)
        self.callbacks: list[Any] = [self.progress, self.overfit, LoraHistogramCallback()]
        prompts = sample_prompts(setup.val_rows, train.samples)
        self.sampler = None
        if prompts and setup.val_rows and setup.sharded:
            job.log(
                f"no samples during training: the {setup.strategy} shards hold the model together"
            )
        elif prompts and setup.val_rows:
            self.sampler = SampleCallback(
                setup.tokenizer,
                system_prompt,
                prompts,
                train.samples.max_new_tokens,
                self.samples_path,
                job.log,
            )
            self.callbacks.append(self.sampler)
        if train.early_stopping_patience:
            stopper = EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience)
            self.callbacks.append(stopper)


def fit(
    job: TrainJob,
    setup: Setup,
    model: Any,
    callbacks: list[Any],
    monitors: Monitors,
    resume_from: Path | None,
) -> tuple[Any, Any, Any, float | None]:
    """TRL's SFTTrainer run to the end (or resumed): (trainer, args, result, final val loss)."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from legalbuild.training.distributed import trainer_arguments
    from legalbuild.training.tracking import finish_wandb, tracking_environment

    recipe, train = job.recipe, job.recipe.train
    system_prompt, val_rows = recipe.data.system_prompt, setup.val_rows
    tracking_dir = job.logs_dir / "tracking"
    if rank() == 0:
        tracking_dir.mkdir(parents=True, exist_ok=True)
    with tracking_environment(setup.trackers, tracking_dir, recipe.project.name):
        args = sft_config(
            train,
            job.work_dir / "checkpoints",
            setup.device,
            setup.precision,
            bool(val_rows),
            setup.trackers,
            recipe.project.name,
            trainer_arguments(recipe, job.recipe_dir),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=to_dataset(setup.train_rows, system_prompt),
            eval_dataset=to_dataset(val_rows[: train.eval_rows], system_prompt)
            if val_rows
            else None,
            processing_class=setup.tokenizer,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # our progress callback prints the logs
        if monitors.sampler is not None:
            monitors.sampler.log_metrics = (
                trainer.log
            )  # the parse rate reaches trackers and history
        report_ranks(job, setup.device)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            final_val_loss = _final_validation_loss(trainer, args, bool(val_rows))
        finally:
            finish_wandb()  # an offline run left open would hold its files after a crash
    return trainer, args, result, final_val_loss


def report_ranks(job: TrainJob, device: str) -> None:
    """Rank 0 logs every rank that joined (pid, host): proof that all of them run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    me = {"rank": dist.get_rank(), "pid": os.getpid(), "host": os.uname().nodename}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    job.log(
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
