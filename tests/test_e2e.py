"""End to end on the CI recipe (real SmolLM2-135M, real curated legal data): build every stage
through the CLI, rebuild from cache without importing torch, reproduce with --locked, report, export,
then serve the merged model with a real vLLM process and audit clauses through the real openai client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HEAVY_MODULES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_cli(
    *args: str, cache: Path, timeout: int = 1500, check: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "legalbuild", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"legalbuild {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The CI recipe, copied to a temp folder (its lock is written there), built once for the module."""
    root = tmp_path_factory.mktemp("e2e")
    recipe = root / "ci.toml"
    shutil.copy(REPO / "recipes" / "ci-smollm2.toml", recipe)
    cache = Path(os.environ.get("LEGALBUILD_CACHE", root / "cache"))
    started = time.time()
    proc = run_cli("build", str(recipe), cache=cache)
    return {"recipe": recipe, "cache": cache, "build": proc, "seconds": time.time() - started}


def test_full_build_produces_every_stage_and_a_lock(built):
    out = built["build"].stdout
    lock_text = built["recipe"].with_name("ci.lock").read_text()
    for stage in ("curate", "normalize", "base", "train", "merge", "eval"):
        assert f"[stages.{stage}]" in lock_text, stage
    assert "merged model:" in out
    assert "label accuracy" in out.lower() or "label_accuracy" in out.lower(), out[-3000:]


def test_cached_rebuild_imports_no_heavy_library_and_locked_reproduces(built):
    code = (
        "import sys, json\nfrom legalbuild.cli import main\n"
        f"sys.argv = ['legalbuild', 'build', {str(built['recipe'])!r}, '--locked']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print('HEAVY=' + json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "LEGALBUILD_CACHE": str(built["cache"])}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built: nothing (all cached)" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=[]"


def test_status_plan_and_verify_agree(built):
    plan = run_cli("plan", str(built["recipe"]), cache=built["cache"]).stdout
    assert "build" not in plan.replace("cached", "")
    status = run_cli("status", str(built["recipe"]), cache=built["cache"]).stdout
    assert status.count(" yes ") >= 6
    verify = run_cli("verify", str(built["recipe"]), cache=built["cache"]).stdout
    assert "6 entries verified" in verify


def test_serve_refuses_a_corrupted_merged_model(built):
    import tomllib

    from helpers import flip_byte_keeping_mtime

    key = tomllib.loads(built["recipe"].with_name("ci.lock").read_text())["stages"]["merge"]["key"]
    weights = built["cache"] / "entries" / "merge" / key / "out" / "model" / "model.safetensors"
    flip_byte_keeping_mtime(weights, 4096)
    try:
        refused = run_cli("serve", str(built["recipe"]), cache=built["cache"], check=False)
    finally:
        flip_byte_keeping_mtime(weights, 4096)  # the same flip again restores the byte
    assert refused.returncode == 8, refused.stdout + refused.stderr
    assert "model/model.safetensors" in refused.stdout + refused.stderr
    assert "vllm" not in (refused.stdout + refused.stderr).lower()  # refused before any start


def test_report_and_export(built, tmp_path):
    run_cli("report", str(built["recipe"]), "--out", str(tmp_path / "report"), cache=built["cache"])
    html = (tmp_path / "report" / "report.html").read_text()
    for section in ("Recipe", "Data", "Training", "Evaluation", "Provenance"):
        assert section in html, section
    run_cli("export", str(built["recipe"]), str(tmp_path / "artifact"), cache=built["cache"])
    manifest = json.loads((tmp_path / "artifact" / "legalbuild-manifest.json").read_text())
    assert manifest["licences"]["base_model"] == "Apache-2.0"
    assert set(manifest["stages"]) >= {"curate", "normalize", "base", "train", "merge", "eval"}
    assert list((tmp_path / "artifact").glob("*.safetensors"))


def test_serve_the_merged_model_and_audit_through_the_cli(built, tmp_path):
    """`legalbuild serve` starts vLLM on the merged model; `legalbuild audit` and the openai client
    query it; Ctrl-C (SIGINT) stops it and leaves no vLLM process behind."""
    from openai import OpenAI

    from legalbuild.processes import free_port

    port = free_port()
    env = {**os.environ, "LEGALBUILD_CACHE": str(built["cache"]), "PYTHONUNBUFFERED": "1"}
    env.pop("LEGALBUILD_API_KEY", None)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [sys.executable, "-m", "legalbuild", "serve", str(built["recipe"]), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while "serving; Ctrl-C stops the server" not in (tmp_path / "serve.log").read_text():
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            assert time.time() < deadline, "server not ready in 600 s"
            time.sleep(2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["legal-audit-ci"]
        clauses = tmp_path / "clauses.txt"
        clauses.write_text(
            "The Supplier's total liability under this Agreement shall be unlimited.\n\n"
            "This Agreement renews automatically for successive one-year terms.\n"
        )
        proc = run_cli(
            "audit",
            str(clauses),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--recipe",
            str(built["recipe"]),
            "--json",
            "--max-tokens",
            "48",
            cache=built["cache"],
            timeout=600,
        )
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert [r["text"][:15] for r in results] == ["The Supplier's ", "This Agreement "]
        assert all(
            r["answer"] and r["completion_tokens"] > 0 and r["error"] is None for r in results
        )
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
        log.close()
    time.sleep(1)
    leftover = subprocess.run(
        ["pgrep", "-f", f"--port {port}"], capture_output=True, text=True
    ).stdout.split()
    assert leftover == [], leftover
