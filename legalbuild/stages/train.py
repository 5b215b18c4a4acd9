"""Stage `train`: a LoRA (or QLoRA) adapter trained with TRL's SFTTrainer, monitored like a real run.

Reads `normalize/train.jsonl` + `val.jsonl` and the base stage's `model/` folder. Each row becomes a
conversational prompt-completion example (`legalbuild.prompting`), so the loss falls on the answer
only and the prompt is exactly what eval and serving send.

Monitoring: validation loss every `eval_steps`, an overfitting warning, optional early stopping that
keeps the best checkpoint, greedy samples at each evaluation, W&B (offline without an API key) /
TensorBoard / trackio under out/tracking, and a rich progress bar with tokens/s and ETA.

Checkpoints live in `ctx.work_dir` (stable for the stage key), so a build killed mid-training
resumes from its last checkpoint. Writes `adapter/`, `metrics.json`, `log_history.json`,
`samples.jsonl`, `loss.png` and `tracking/` into `ctx.out_dir`.

The module top stays light: the stage graph reads `DEPENDS_ON` and calls `key_inputs`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import DataError, RecipeError, StageFailedError
from legalbuild.hardware import NATIVE_BF16_FLAGS, auto_precision, cpu_flags, torch_device
from legalbuild.prompting import AUDIT_INSTRUCTION, prompt_completion_row

if TYPE_CHECKING:
    from legalbuild.recipe import LoraSection, ModelSection, Recipe, TrainSection
    from legalbuild.stages.context import StageContext

DEPENDS_ON = ("normalize", "base")

# At least 99.9% of the base model's own weights stay frozen: only the LoRA matrices train, plus
# bias vectors when [lora] bias allows them (a fraction of a percent of any model).
MIN_BASE_FROZEN_FRACTION = 0.999


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.keys import accelerator_kind, library_versions
    from legalbuild.recipe import key_settings

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


# ------------------------------------------------------------------------------------------ data
def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a normalized split (`id`, `instruction`, `output`, ...)."""
    from legalbuild.data.readers import read_jsonl

    if not path.exists():
        raise DataError(f"{path}: missing (the normalize stage writes it)")
    rows = []
    for line_no, row in read_jsonl(path):
        if not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise DataError(f"{path}:{line_no}: not a normalized row (instruction and output)")
        rows.append(row)
    return rows


def to_dataset(rows: list[dict[str, Any]], system_prompt: str) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [prompt_completion_row(system_prompt, r["instruction"], r["output"]) for r in rows]
    )


def token_lengths(
    tokenizer: Any, rows: list[dict[str, Any]], system_prompt: str
) -> list[tuple[int, int]]:
    """(prompt tokens, prompt+answer tokens) of each row, tokenized with the chat template as TRL does."""
    prompts, fulls = [], []
    for r in rows:
        example = prompt_completion_row(system_prompt, r["instruction"], r["output"])
        prompts.append(
            tokenizer.apply_chat_template(
                example["prompt"], tokenize=False, add_generation_prompt=True
            )
        )
        fulls.append(
            tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
        )
    if not rows:
        return []
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    return [(len(p), len(f)) for p, f in zip(prompt_ids, full_ids, strict=True)]


def length_report(lengths: list[tuple[int, int]], max_length: int) -> dict[str, Any]:
    """How many rows max_length cuts (answer shortened) or empties (prompt alone fills it: TRL drops those)."""
    full = sorted(f for _, f in lengths)
    return {
        "rows": len(lengths),
        "truncated": sum(f > max_length for _, f in lengths),
        "dropped": sum(p >= max_length for p, _ in lengths),
        "tokens": sum(min(f, max_length) for f in full),
        "mean_tokens": round(sum(full) / len(full), 1) if full else 0,
        "p95_tokens": full[int(0.95 * (len(full) - 1))] if full else 0,
        "max_tokens": full[-1] if full else 0,
    }


# ---------------------------------------------------------------------------- hardware, precision
def resolve_precision(precision: str, device: str) -> str:
    """`auto`: bf16 on GPUs that support it, else fp16 on GPU; on a CPU bf16 autocast when the CPU
    has native bf16 (AVX512-BF16 or AMX), else fp32 (emulated bf16 is ~2x slower than fp32)."""
    import torch

    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return auto_precision("cpu")
    if precision == "fp16" and device == "cpu":
        raise RecipeError(
            "[train.precision] fp16 needs a GPU; this host has none",
            hint='use precision = "bf16" (autocast on CPU), "fp32" or "auto"',
        )
    return precision


def precision_reason(setting: str, device: str) -> str:
    """Why `auto` chose what it chose, for the log ("" when the recipe names a precision)."""
    if setting != "auto":
        return " (set in the recipe)"
    if device == "cuda":
        return " (auto: what this GPU supports)"
    flags = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    if flags:
        return f" (auto: the CPU has native bf16: {', '.join(flags)})"
    return " (auto: the CPU has no native bf16 (no avx512_bf16/amx_bf16), bf16 would be emulated)"


def weights_dtype(dtype: str, device: str, precision: str) -> Any:
    """dtype the base weights load in. `auto`: bf16 on bf16 GPUs (unless fp16 mixed precision needs
    fp32 masters), else float32."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda" and precision == "bf16":
        return torch.bfloat16
    return torch.float32


# ----------------------------------------------------------------------------------------- model
def load_base_model(model_dir: Path, settings: ModelSection, device: str, precision: str) -> Any:
    """The base model, plain or quantized through bitsandbytes (4-bit nf4 = QLoRA, or 8-bit)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": weights_dtype(settings.dtype, device, precision),
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.quantization == "4bit-nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=settings.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    elif settings.quantization == "8bit":
        # LLM.int8 trains on CPU too with bitsandbytes 0.50 (measured: LoRA gradients flow, also after eval).
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if settings.quantization != "none":
        kwargs["device_map"] = {"": 0} if device == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if settings.quantization == "4bit-nf4" and device == "cpu":
        disable_cpu_4bit_repacking(model)
    return model


def disable_cpu_4bit_repacking(model: Any) -> int:
    """Guard against a bitsandbytes trap on CPUs with AVX512-BF16: a forward without gradients (the
    Trainer's evaluation) repacks Linear4bit weights for gemv_4bit, which has no autograd, and from
    then on LoRA gradients are exactly zero while the loss looks like it trains. Turning the fast
    path off before the first forward keeps the weights in the layout the backward pass uses."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        if not hasattr(layer, "support_avx512bf16_for_cpu"):
            raise StageFailedError(
                "this bitsandbytes has no Linear4bit.support_avx512bf16_for_cpu: the CPU QLoRA guard needs re-checking",
                hint="pin bitsandbytes==0.50.2 or train QLoRA on a GPU",
            )
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def lora_config(settings: LoraSection) -> Any:
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if targets == "all-linear" else list(targets),
        bias=settings.bias,
        task_type="CAUSAL_LM",
    )


def attach_lora(model: Any, lora: LoraSection, train: TrainSection, quantized: bool) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    if quantized:
        # Casts norms/embeddings to fp32 and enables input gradients (needed with checkpointing).
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing
        )
    set_seed(train.seed)  # LoRA A matrices are initialised randomly
    try:
        return get_peft_model(model, lora_config(lora))
    except ValueError as exc:  # e.g. a target module name the model does not have
        raise RecipeError(
            f"[lora.target_modules] {exc}", hint="check the module names of the base model"
        ) from None


def _stored_numel(param: Any) -> int:
    # bitsandbytes packs two 4-bit values per byte; count the weights, not the bytes.
    return param.numel() * 2 if type(param).__name__ == "Params4bit" else param.numel()


def parameter_report(model: Any, bias: str = "none") -> dict[str, Any]:
    """Trainable vs frozen parameters, and base parameters that train although they should not
    (anything outside the LoRA matrices, except biases when `bias` allows them)."""
    trainable = total = base_total = base_trainable = 0
    offenders: list[str] = []
    for name, param in model.named_parameters():
        n = _stored_numel(param)
        total += n
        is_lora = "lora_" in name
        if not is_lora:
            base_total += n
        if not param.requires_grad:
            continue
        trainable += n
        if is_lora:
            continue
        base_trainable += n
        if not (bias != "none" and name.endswith(".bias")):
            offenders.append(name)
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "frozen_fraction": 1 - trainable / total if total else 1.0,
        "base_frozen_fraction": 1 - base_trainable / base_total if base_total else 1.0,
        "unexpected_trainable": offenders,
    }


def check_frozen(model: Any, bias: str = "none") -> dict[str, Any]:
    """Fail loudly when base weights would train by mistake; otherwise return the parameter report."""
    report = parameter_report(model, bias)
    offenders = report["unexpected_trainable"]
    if offenders:
        raise StageFailedError(
            f"{len(offenders)} base parameter tensor(s) would be trained, not only the LoRA adapter: "
            f"{', '.join(offenders[:5])}{' ...' if len(offenders) > 5 else ''}",
            hint="only LoRA matrices (and biases with [lora] bias) may train; check target_modules and the model loading",
        )
    if report["base_frozen_fraction"] < MIN_BASE_FROZEN_FRACTION:
        raise StageFailedError(
            f"only {report['base_frozen_fraction']:.4%} of the base weights are frozen "
            f"(required: {MIN_BASE_FROZEN_FRACTION:.1%})",
            hint='set [lora] bias = "none"',
        )
    return report


# --------------------------------------------------------------------------------------- trainer
def sft_config(
    train: TrainSection,
    checkpoints: Path,
    device: str,
    precision: str,
    has_val: bool,
    trackers: list[str],
    project: str,
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
    )


def sample_prompts(val_rows: list[dict[str, Any]], samples: Any) -> list[dict[str, str]]:
    """The first `count` held-out rows (stable across runs) plus the recipe's extra clauses."""
    prompts = [
        {
            "kind": "val",
            "id": str(r.get("id", "")),
            "instruction": r["instruction"],
            "reference": r["output"],
        }
        for r in val_rows[: samples.count]
    ]
    prompts += [
        {
            "kind": "clause",
            "id": f"clause-{i}",
            "instruction": AUDIT_INSTRUCTION.format(clause=c),
            "reference": "",
        }
        for i, c in enumerate(samples.clauses, 1)
    ]
    return prompts


# ---------------------------------------------------------------------------------------- the stage
def run(ctx: StageContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the adapter. `callbacks` are extra TrainerCallbacks (tests use one to simulate a crash)."""
    from datasets.utils import logging as datasets_logging

    # TRL's four dataset passes each draw a bar; the stage's own progress bar is the one to watch.
    bars_were_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return _train(ctx, callbacks)
    finally:
        if bars_were_on:
            datasets_logging.enable_progress_bar()


def _train(ctx: StageContext, callbacks: Sequence[Any]) -> dict[str, Any]:
    from legalbuild.training.adapter import record_base_identity
    from legalbuild.training.callbacks import (
        LoraHistogramCallback,
        OverfitMonitor,
        ProgressCallback,
        SampleCallback,
    )
    from legalbuild.training.checkpoints import resumable_checkpoint, trim_samples
    from legalbuild.training.monitoring import (
        FORMAT_RATE_KEY,
        best_evaluation,
        loss_series,
        plot_losses,
    )
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
    model = load_base_model(model_dir, model_settings, device, precision)
    model = attach_lora(model, lora, train, quantized)
    params = check_frozen(model, lora.bias)
    ctx.log(
        f"trainable {params['trainable_parameters']:,} of {params['total_parameters']:,} parameters; "
        f"frozen {params['frozen_fraction']:.4%} (base weights frozen: {params['base_frozen_fraction']:.4%})"
    )

    checkpoints = ctx.work_dir / "checkpoints"
    # the newest complete checkpoint: half-written ones (a kill while saving) are skipped and removed
    checkpoint = resumable_checkpoint(checkpoints, ctx.log)
    resume_from = str(checkpoint) if checkpoint else None
    samples_path = ctx.work_dir / "samples.jsonl"
    trim_samples(samples_path, int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else None)
    if resume_from:
        ctx.log(f"resuming from {Path(resume_from).name}")

    progress = ProgressCallback(ctx.log, ctx.console)
    overfit = OverfitMonitor(train.overfit_patience, ctx.log)
    stage_callbacks: list[Any] = [progress, overfit, LoraHistogramCallback()]
    prompts = sample_prompts(val_rows, train.samples)
    sampler = None
    if prompts and val_rows:
        sampler = SampleCallback(
            tokenizer, system_prompt, prompts, train.samples.max_new_tokens, samples_path, ctx.log
        )
        stage_callbacks.append(sampler)
    if train.early_stopping_patience:
        stage_callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience)
        )

    tracking_dir = ctx.out_dir / "tracking"
    tracking_dir.mkdir(parents=True, exist_ok=True)
    with tracking_environment(trackers, tracking_dir, recipe.project.name):
        args = sft_config(
            train, checkpoints, device, precision, bool(val_rows), trackers, recipe.project.name
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
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
            final_val_loss = _final_validation_loss(trainer, args, bool(val_rows))
        finally:
            finish_wandb()  # an offline run left open would hold its files after a crash

    adapter_dir = ctx.out_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
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
        "resumed_from": Path(resume_from).name if resume_from else None,
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
    }
    (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    ctx.log(
        f"done: step {metrics['global_step']}, train loss {_fmt(metrics['train_loss'])}, val loss "
        f"{_fmt(final_val_loss)} (best {_fmt(metrics['best_val_loss'])} @ {metrics['best_step']}), "
        f"{metrics['tokens_per_second']:,} tok/s"
    )
    return metrics


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
