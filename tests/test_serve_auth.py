"""The API-key middleware on a real ASGI app (starlette, as vLLM builds it), the `[serve]
extra_args` refusals checked against vLLM's own argument parser, and the kernel signal that takes
a server down with a SIGKILLed parent. The route-by-route check on a real vLLM server is in
test_serve.py (it shares that module's server)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legalbuild.errors import RecipeError, ServeError
from legalbuild.processes import StoppedBySignal, stop_signals
from legalbuild.recipe import ServeSection
from legalbuild.recipe.loading import validate_recipe
from legalbuild.recipe.vllm_flags import CODE_OPTIONS, MANAGED_FLAGS, managed_flag, option_of
from legalbuild.recipe.vllm_parse import CODE_DESTS
from legalbuild.serve.auth import KEY_ENV, PUBLIC_PATHS_ENV, KeyMiddleware, public_paths
from legalbuild.serve.server import server_command

REPO = Path(__file__).resolve().parents[1]
KEY = "s3cret-key"


# ----------------------------------------------------------------------------- the middleware
def guarded_app(monkeypatch, key: str | None = KEY, public_metrics: bool = False):
    """A starlette app shaped like vLLM's (a /health route, a /metrics mount, API routes, a
    websocket) with KeyMiddleware added the way vLLM's --middleware adds it; a real HTTP client."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.testclient import TestClient

    async def ok(request):
        return PlainTextResponse("ok")

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    metrics = Mount("/metrics", PlainTextResponse("# metrics"))
    metrics.path_regex = re.compile("^/metrics(?P<path>.*)$")  # as vLLM mounts it: no redirect
    routes = [
        Route("/health", ok),
        Route("/invocations", ok, methods=["POST"]),
        Route("/v1/models", ok),
        Route("/openapi.json", ok),
        metrics,
        WebSocketRoute("/v1/realtime", echo),
    ]
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(PUBLIC_PATHS_ENV, ",".join(public_paths(public_metrics)))
    app = Starlette(routes=routes)
    app.add_middleware(KeyMiddleware)
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(KEY + "x"), bearer(""), {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong", "longer", "empty", "basic-scheme"],
)
def test_every_path_but_health_needs_the_key(monkeypatch, headers):
    client = guarded_app(monkeypatch)
    for method, path in [
        ("POST", "/invocations"),
        ("GET", "/v1/models"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/metrics/"),
        ("GET", "/health/"),  # allowlisted paths match exactly
        ("GET", "/no-such-path"),  # an unknown path says nothing about what exists
        ("OPTIONS", "/invocations"),
    ]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"error": "Unauthorized"}  # vLLM's own body
    assert client.get("/health", headers=headers).status_code == 200


def test_the_right_key_passes(monkeypatch):
    client = guarded_app(monkeypatch)
    for method, path in [("POST", "/invocations"), ("GET", "/v1/models"), ("GET", "/metrics")]:
        assert client.request(method, path, headers=bearer(KEY)).status_code == 200, path
    assert client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_public_metrics_opens_metrics_only(monkeypatch):
    client = guarded_app(monkeypatch, public_metrics=True)
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics/x").status_code == 401
    assert client.get("/v1/models").status_code == 401


def test_without_a_key_in_the_environment_it_fails_closed(monkeypatch):
    client = guarded_app(monkeypatch, key=None)
    assert client.get("/v1/models", headers=bearer("")).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert client.get("/health").status_code == 200


def test_websockets_need_the_key(monkeypatch):
    from starlette.websockets import WebSocketDisconnect

    client = guarded_app(monkeypatch)
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/v1/realtime"):
        pass
    assert info.value.code == 1008
    with client.websocket_connect("/v1/realtime", headers=bearer(KEY)) as ws:
        assert ws.receive_text() == "hello"


def test_middleware_module_imports_nothing_heavy():
    code = (
        "import sys, legalbuild.serve.auth\n"
        "print(sorted(m for m in ('torch', 'vllm', 'starlette', 'fastapi', 'pydantic') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------- [serve] extra_args
@pytest.mark.parametrize(
    ("arg", "flag"),
    [
        ("--host", "--host"),
        ("--host=0.0.0.0", "--host"),
        ("--hos", "--host"),  # argparse expands unambiguous abbreviations
        ("--api_key=k", "--api-key"),  # vLLM turns underscores into dashes
        ("--served_model", "--served-model-name"),
        ("--model.revision", "--model"),  # vLLM's dotted JSON form
        ("-tp", "-tp"),
        ("-tp=2", "-tp"),
        ("-t", "-tp"),
        ("--trust-remote-code", "--trust-remote-code"),
        ("--middleware=x.Y", "--middleware"),
        ("--config", "--config"),
        ("--device-memory-utilization", "--device-memory-utilization"),
        ("--no-enforce-eager", "--no-enforce-eager"),
    ],
)
def test_managed_flags_are_recognised_in_every_form(arg, flag):
    found = managed_flag(arg)
    assert found is not None and found[0] == flag


@pytest.mark.parametrize("arg", ["--seed", "--max-num-seqs=4", "--", "-1", "7", "--enable-lora"])
def test_other_arguments_pass(arg):
    assert managed_flag(arg) is None


def test_recipe_with_a_managed_flag_is_a_recipe_error(tmp_path):
    (tmp_path / "data.jsonl").write_text("")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[project]\nname = "t"\n[[data.sources]]\nname = "d"\npath = "data.jsonl"\n\n'
        '[serve]\nport = 8001\nextra_args = ["--seed", "1", "--host", "0.0.0.0", "--api_key=sk-SECRET-9f3a"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "legalbuild", "validate", str(recipe)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert f"{recipe}:9: [serve.extra_args]" in message
    assert "--host is managed by legalbuild: set [serve] host" in message
    assert "--api_key (read by vLLM as --api-key)" in message
    assert "[serve] api_key_env" in message and "Traceback" not in done.stderr
    assert "sk-SECRET-9f3a" not in done.stderr + done.stdout  # a key put there is never echoed


def test_server_command_puts_managed_flags_last(tmp_path):
    # Defence in depth: an entry that escaped validation could not override what legalbuild sets.
    settings = ServeSection()
    settings.extra_args.append("--seed")  # mutating the list skips validation
    argv = server_command(tmp_path, settings, "m", "127.0.0.1", 8123, "cpu", 1024, guarded=True)
    assert argv.index("--seed") < argv.index("--host") and argv[-2:] == [
        "--middleware",
        "legalbuild.serve.auth.KeyMiddleware",
    ]
    settings.extra_args.append("--port=1")
    with pytest.raises(RecipeError, match="--port is managed by legalbuild"):
        server_command(tmp_path, settings, "m", "127.0.0.1", 8123, "cpu", 1024)


VLLM_PARSER_PROBE = """
import json
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
actions = [[a.dest, a.option_strings] for a in parser._actions]
parsed = parser.parse_args(["--hos", "0.0.0.0", "--api_key=k", "--served_model", "m", "-t", "2",
                            "--trust-remote", "--middleware=a.B"])
print(json.dumps({"actions": actions, "parsed": {k: getattr(parsed, k) for k in
      ("host", "api_key", "served_model_name", "tensor_parallel_size", "trust_remote_code", "middleware")}}))
"""
MANAGED_DESTS = {
    "model", "served_model_name", "host", "port", "uds", "api_key", "middleware",
    "trust_remote_code", "config", "grpc", "grpc_port", "max_model_len", "dtype",
    "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager",
    "pipeline_parallel_size", "data_parallel_size", "help",
}  # fmt: skip


@pytest.fixture(scope="module")
def vllm_probe() -> dict:
    """vLLM's server parser, asked once in a process of its own: its actions and a parse."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    done = subprocess.run(
        [sys.executable, "-c", VLLM_PARSER_PROBE], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_refusals_match_vllms_own_parser(vllm_probe):
    """Every option string vLLM 0.32 has for a setting legalbuild manages is refused (aliases
    such as --device-memory-utilization and -tp included), no other option is, and the forms
    refused (abbreviation, underscores, `=`) are ones vLLM's parser really reads that way."""
    probe = vllm_probe
    assert probe["parsed"] == {
        "host": "0.0.0.0",
        "api_key": ["k"],
        "served_model_name": ["m"],
        "tensor_parallel_size": 2,
        "trust_remote_code": True,
        "middleware": ["a.B"],
    }
    seen_managed = set()
    for dest, options in probe["actions"]:
        for option in options:
            refused = managed_flag(option) is not None
            assert refused == (dest in MANAGED_DESTS), (dest, option)
            if refused:
                seen_managed.add(option)
                if option.startswith("--"):  # vLLM reads --max_model_len as --max-model-len
                    assert managed_flag("--" + option[2:].replace("-", "_")) is not None
    ours = {flag for flags, _ in MANAGED_FLAGS for flag in flags}
    assert ours == seen_managed  # no stale entry in our table either


# ------------------------------------------------------------------------------- code loading
@pytest.mark.parametrize(
    "args",
    [
        ["--tool-parser-plugin", "plugins/tool_parser.py"],
        [
            "--tool_parser_plug=plugins/tool_parser.py"
        ],  # underscores and an abbreviation, as vLLM reads them
        ["--logits-processors", "pkg.Processor"],
        ["--worker-extension-cls", "pkg.Ext"],
        ["--worker-cls=pkg.Worker"],
        ["--scheduler-cls", "pkg.Scheduler"],
        ["--reasoning-parser-plugin", "plugins/reasoning.py"],
        ["--model-class-overrides", '{"LlamaForCausalLM": "pkg:Model"}'],
        ["--log-config-file", "logging.json"],
        ["--distributed-executor-backend", "pkg.Executor"],
        ["-cc", '{"inductor_passes": {"p": "pkg.fn"}}'],
        ["-cc.inductor_passes.p", "pkg.fn"],  # vLLM's dotted form
        ["-c", '{"backend": "pkg.backend"}'],  # -c is read as -cc
        ["--compilation-config.backend=pkg.backend"],
        ["--kv-transfer-config", '{"kv_connector": "X", "kv_connector_module_path": "pkg"}'],
        ["--kv-transfer-config", '{"kv_connector_extra_config": {"spec_module_path": "pkg"}}'],
        ["--kv-transfer-config", "not json"],  # cannot be checked: refused
        ["--ec-manager-config", '{"encoder_cache_manager_cls": "pkg.M"}'],
        ["--logging-config.pylogging_config_file", "logging.json"],
        ["--structured-outputs-config", '{"reasoning_parser_plugin": "plugins/reasoning.py"}'],
        ["-sc", '{"model": "pkg.Proposer", "num_speculative_tokens": 2}'],
        ["--spec-method", "custom_class"],
        ["--spec-model", "pkg.Proposer"],
    ],
)
def test_options_that_import_code_need_the_recipe_to_opt_in(args):
    with pytest.raises(ValueError, match="allow_code_loading_flags = true") as info:
        ServeSection(extra_args=args)
    message = info.value.errors()[0]["msg"]
    assert "a recipe is data" in message
    assert not any(a in message for a in args[1:])  # values are never echoed
    assert ServeSection(allow_code_loading_flags=True, extra_args=args).extra_args == args


@pytest.mark.parametrize(
    "args",
    [["--seed", "7"], ["--compilation-config", '{"mode": 0}'], ["-cc.backend", "eager"],
     ["--distributed-executor-backend", "mp"], ["-sc", '{"model": "org/draft"}'],
     ["--spec-model", "org/draft-model"], ["--max-num-seqs=4"]],
)  # fmt: skip
def test_options_that_import_no_code_pass(args):
    assert ServeSection(extra_args=args).extra_args == args


def test_code_loading_options_match_vllms_own_parser(vllm_probe):
    """Every option string of a vLLM setting that imports code (CODE_DESTS, read from vLLM
    0.32's code) is one CODE_OPTIONS recognises, no other option is, and none is stale."""
    dests = {dest for dest, _ in vllm_probe["actions"]}
    assert set(CODE_DESTS) <= dests
    seen = set()
    for dest, options in vllm_probe["actions"]:
        for option in options:
            found = option_of(option, CODE_OPTIONS)
            assert (found is not None) == (dest in CODE_DESTS), (dest, option)
            seen.add(option)
    assert {flag for flags, _ in CODE_OPTIONS for flag in flags} <= seen


@pytest.fixture(scope="module")
def parsed_by_vllm():
    """validate_recipe for a recipe with these extra_args (vLLM imported once, in this process)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")

    def validate(folder: Path, args: list[str]):
        recipe = folder / "r.toml"
        recipe.write_text(
            '[project]\nname = "t"\n[[data.sources]]\nname = "d"\npath = "d.jsonl"\n\n'
            f"[serve]\nextra_args = {json.dumps(args)}\n"
        )
        return recipe, validate_recipe(recipe)

    return validate


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--HOST", "0.0.0.0"], "unrecognized arguments: --HOST"),
        (["--"], "unrecognized arguments"),  # what follows a bare -- is positional
        (["--max-num-seqs"], "--max-num-seqs: expected one argument"),  # dangling: no value
        (["--no-such-option", "1"], "unrecognized arguments: --no-such-option"),
        (["--max-num-seqs", "sk-secret-value"], "invalid"),
    ],
)
def test_validate_reads_extra_args_with_vllms_parser(tmp_path, parsed_by_vllm, args, message):
    with pytest.raises(RecipeError) as info:
        parsed_by_vllm(tmp_path, args)
    text = str(info.value)
    assert f"{tmp_path / 'r.toml'}:8: [serve.extra_args] vLLM's parser refuses them" in text
    assert message in text and "sk-secret-value" not in text


def test_validate_says_what_it_checked(tmp_path, parsed_by_vllm):
    _, validated = parsed_by_vllm(tmp_path, ["--seed", "7", "--max-num-seqs=4"])
    assert validated.notes == ["[serve] extra_args parsed by vLLM 0.32.0's own argument parser"]


def test_validate_without_vllm_says_the_check_was_skipped(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[project]\nname = "t"\n[[data.sources]]\nname = "d"\npath = "d.jsonl"\n'
        '[serve]\nextra_args = ["--seed", "7"]\n'
    )
    hide_vllm = (
        "import sys; sys.modules['vllm'] = None; sys.argv[0] = 'legalbuild'\n"
        "from legalbuild.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_vllm, "validate", str(recipe)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "not checked against vLLM's parser: vLLM is not installed here" in done.stdout


# ---------------------------------------------------------------------------- process fate
def test_a_stop_signal_is_recorded_and_becomes_exit_128_plus_signum():
    with stop_signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)  # without the handler this would end pytest
        signals.wait(5)
        assert signals.received == [signal.SIGTERM]
        with pytest.raises(StoppedBySignal) as info:
            signals.raise_if_received()
    assert isinstance(info.value, ServeError) and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_a_foreground_child_stopped_by_a_signal_ends_this_process_as_that_signal_would():
    from legalbuild.processes import exit_if_stopped

    exit_if_stopped([])  # no signal: nothing happens
    with pytest.raises(KeyboardInterrupt):
        exit_if_stopped([signal.SIGINT, signal.SIGTERM])
    with pytest.raises(SystemExit) as info:
        exit_if_stopped([signal.SIGHUP])
    assert info.value.code == 129


def test_a_sigkilled_parent_takes_the_group_leader_down():
    """spawn_group's leader gets SIGTERM from the kernel when its parent dies, even by SIGKILL,
    which no handler of ours can catch (vLLM then shuts its engine down)."""
    code = (
        "import os, time\nfrom legalbuild.processes import spawn_group\n"
        "child = spawn_group(['sleep', '300'], dict(os.environ))\n"
        "print(child.pid, flush=True)\ntime.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
