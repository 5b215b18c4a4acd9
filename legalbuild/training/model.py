"""The model a rank trains: precision chosen for the host, the base loaded (plain, 4-bit or 8-bit
through bitsandbytes), LoRA attached, and the check that only the adapter trains.
No heavy import at module level."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import RecipeError, StageFailedError
from legalbuild.hardware import NATIVE_BF16_FLAGS, auto_precision, cpu_flags

if TYPE_CHECKING:
    from legalbuild.recipe import LoraSection, ModelSection, TrainSection

# At least 99.9% of the base model's own weights stay frozen: only the LoRA matrices train, plus
# bias vectors when [lora] bias allows them (a fraction of a percent of any model).
MIN_BASE_FROZEN_FRACTION = 0.999


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
def load_base_model(
    model_dir: Path, settings: ModelSection, device: str, precision: str, fsdp: bool = False
) -> Any:
    """The base model, plain or quantized through bitsandbytes (4-bit nf4 = QLoRA, or 8-bit).
    `fsdp`: QLoRA under FSDP stores the packed 4-bit weights in the compute dtype, so FSDP can
    shard them with the other (bf16) parameters."""
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
            **({"bnb_4bit_quant_storage": torch.bfloat16} if fsdp else {}),
        )
    elif settings.quantization == "8bit":
        # LLM.int8 trains on CPU too with bitsandbytes 0.50 (measured: LoRA gradients flow, also after eval).
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if settings.quantization != "none":
        # each rank of a multi-process run loads onto its own GPU (LOCAL_RANK, set by the launcher)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if device == "cuda" else "cpu"
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
