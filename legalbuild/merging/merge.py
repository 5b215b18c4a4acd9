"""Fold a LoRA adapter into its base and prove the saved folder is the same model.

The base is reloaded in `[merge] dtype` (fp32, bf16 or fp16: never 4-bit, since merging into
quantized weights would round the adapter away), the adapter is attached with
`PeftModel.from_pretrained`, and `merge_and_unload` writes W + scale * B @ A into each adapted
layer. A QLoRA adapter was trained against nf4-rounded weights; merging it into the 16/32-bit base
is the standard practice and the report records that it happened. The checks on the saved folder
are in `legalbuild.merging.checks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.basemodel.tokenizer import stop_at_end_of_turn
from legalbuild.errors import StageFailedError
from legalbuild.hardware import torch_device
from legalbuild.merging.checks import (
    check_logit_parity,
    check_no_adapter_files,
    check_no_quantization_config,
    check_tied_embeddings,
    check_tokenizer,
)
from legalbuild.prompting import chat_messages

if TYPE_CHECKING:
    from legalbuild.recipe import MergeSection

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def merge_adapter(
    base_dir: Path,
    adapter_dir: Path,
    dest: Path,
    settings: MergeSection,
    *,
    system_prompt: str,
    trained_quantization: str = "none",
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Merge `adapter_dir` into `base_dir`, save the result in `dest`, run every check on the saved
    folder and return the report (written as merge.json by the stage). Does not raise on a failed
    check: `raise_on_failed_checks(report)` does, so the report can be kept either way."""
    import torch
    from peft import PeftModel

    started = time.monotonic()
    check_inputs(base_dir, adapter_dir)
    if not settings.probe_prompts:
        raise StageFailedError(
            "merge: [merge] probe_prompts is empty, so parity cannot be checked",
            hint='list at least one prompt, e.g. probe_prompts = ["Audit this clause: ..."]',
        )
    dtype = getattr(torch, settings.dtype)
    device = torch_device()
    tokenizer = load_tokenizer(base_dir, adapter_dir)
    prompts = render_probe_prompts(tokenizer, settings.probe_prompts, system_prompt)

    log(f"loading base {base_dir} in {settings.dtype} on {device}")
    base = load_full_precision(base_dir, dtype, device, trust_remote_code)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    reference = probe_logits(peft_model, tokenizer, prompts, device)
    weight_delta = largest_adapter_delta(peft_model)
    if weight_delta == 0.0:
        log("warning: the adapter's delta weights are all zero, the merged model equals the base")

    log("merging the adapter into the base weights")
    merged = peft_model.merge_and_unload()
    merged.generation_config = generation_config_for(tokenizer, base_dir)
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest, max_shard_size=settings.max_shard_size)
    tokenizer.save_pretrained(dest)
    parameters = sum(p.numel() for p in merged.parameters())  # tied weights are counted once
    del merged, peft_model, base

    report = check_merged(
        dest,
        dtype,
        device,
        trust_remote_code,
        tokenizer,
        prompts,
        reference,
        base_dir,
        settings,
        system_prompt,
        log,
    )
    return {
        **report,
        "device": device,
        "adapter_trained_against": trained_quantization,
        "note": quantization_note(trained_quantization),
        "max_adapter_weight_delta": weight_delta,
        "parameters": parameters,
        "size_bytes": folder_size(dest),
        "files": sorted(p.name for p in dest.iterdir()),
        "seconds": round(time.monotonic() - started, 2),
    }


def check_merged(
    dest: Path,
    dtype: Any,
    device: str,
    trust_remote_code: bool,
    tokenizer: Any,
    prompts: list[str],
    reference: list[Any],
    base_dir: Path,
    settings: Any,
    system_prompt: str,
    log: Any,
) -> dict[str, Any]:
    """Reload the merged folder and check it: the same logits as base + adapter on the probe
    prompts (within the dtype's tolerance), no adapter files, tied embeddings, no quantization
    config, the base's tokenizer and chat template."""
    log(f"reloading {dest} to check it")
    reloaded = load_full_precision(dest, dtype, device, trust_remote_code)
    after = probe_logits(reloaded, tokenizer, prompts, device)
    diffs = [float((a - b).abs().max()) for a, b in zip(reference, after, strict=True)]
    max_diff = max(diffs)
    checks = [
        check_logit_parity(max_diff, settings.logit_tolerance, settings.dtype),
        check_no_adapter_files(dest),
        check_tied_embeddings(reloaded),
        check_no_quantization_config(dest),
        *check_tokenizer(dest, base_dir, system_prompt, settings.probe_prompts[0]),
    ]
    del reloaded
    return {
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
        "max_logit_diff": max_diff,
        "logit_diff_per_prompt": diffs,
        "max_logit_diff_allowed": settings.logit_tolerance,
        "probe_prompts": settings.probe_prompts,
        "dtype": settings.dtype,
    }


def check_inputs(base_dir: Path, adapter_dir: Path) -> None:
    if not (base_dir / "config.json").is_file():
        raise StageFailedError(
            f"merge: no base model at {base_dir} (config.json missing)",
            hint="the `base` stage writes out/model/; rebuild it",
        )
    missing = [
        n
        for n in ("adapter_config.json", "adapter_model.safetensors")
        if not (adapter_dir / n).is_file()
    ]
    if missing:
        raise StageFailedError(
            f"merge: the adapter folder {adapter_dir} lacks {', '.join(missing)}",
            hint="the `train` stage writes out/adapter/ with PEFT's save_pretrained; rebuild it",
        )


def load_tokenizer(base_dir: Path, adapter_dir: Path) -> Any:
    """The base's tokenizer (prompts are built with the base's chat template). An adapter folder
    that carries a tokenizer with a different vocabulary means training added tokens that the
    merged embeddings cannot have: refuse rather than ship a mismatched pair."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if any((adapter_dir / n).is_file() for n in TOKENIZER_FILES):
        trained = AutoTokenizer.from_pretrained(adapter_dir)
        if len(trained) != len(tokenizer):
            raise StageFailedError(
                f"merge: the adapter's tokenizer has {len(trained)} tokens, the base's {len(tokenizer)}",
                hint="training must not add tokens; keep the base tokenizer unchanged",
            )
    if not tokenizer.chat_template:
        raise StageFailedError(f"merge: the tokenizer in {base_dir} has no chat template")
    return tokenizer


def load_full_precision(model_dir: Path, dtype: Any, device: str, trust_remote_code: bool) -> Any:
    """Load a causal LM in a 16/32-bit dtype. A folder whose config declares a quantization
    (bitsandbytes, GPTQ...) is refused: merging into quantized weights loses the adapter."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if getattr(config, "quantization_config", None):
        raise StageFailedError(
            f"merge: {model_dir} holds quantized weights ({config.quantization_config!r:.80}); "
            "the adapter must be merged into 16/32-bit weights",
            hint="the `base` stage must save full-precision weights; QLoRA quantizes only at training time",
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()


def render_probe_prompts(tokenizer: Any, probes: list[str], system_prompt: str) -> list[str]:
    """Probe prompts as the server will see them: chat template + system prompt + generation prompt."""
    return [
        tokenizer.apply_chat_template(
            chat_messages(system_prompt, p), tokenize=False, add_generation_prompt=True
        )
        for p in probes
    ]


def probe_logits(model: Any, tokenizer: Any, prompts: list[str], device: str) -> list[Any]:
    """Logits of every position of each prompt, one prompt at a time (no padding to blur them)."""
    import torch

    out = []
    with torch.inference_mode():
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(
                device
            )
            out.append(model(input_ids=ids).logits.float().cpu())
    return out


def largest_adapter_delta(peft_model: Any) -> float:
    """max |scale * B @ A| over the adapted layers: 0 means the adapter changes nothing."""
    from peft.tuners.lora import LoraLayer

    largest = 0.0
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name in module.active_adapters:
                if name in module.lora_A:
                    largest = max(largest, float(module.get_delta_weight(name).abs().max()))
    return largest


def generation_config_for(tokenizer: Any, base_dir: Path) -> Any:
    """The base's generation config, stopping at the template's end-of-turn token."""
    from transformers import GenerationConfig

    config = (
        GenerationConfig.from_pretrained(base_dir)
        if (base_dir / "generation_config.json").is_file()
        else GenerationConfig()
    )
    return stop_at_end_of_turn(config, tokenizer)


def quantization_note(trained_quantization: str) -> str:
    if trained_quantization == "none":
        return "adapter trained against the full-precision base"
    return (
        f"adapter trained against {trained_quantization} weights (QLoRA) and merged into the "
        "full-precision base reloaded in the merge dtype, never into quantized weights"
    )


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
