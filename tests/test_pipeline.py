"""The pipeline: chained keys, cache hits, the lock file, --locked, plan's WHY, concurrent builders,
and no heavy import on light commands. Runs the real normalize stage on small JSONL data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HEAVY_MODULES, data_rows, write_recipe

from legalbuild.engine import pipeline
from legalbuild.engine.cache import Store
from legalbuild.engine.lock import lock_path, read_lock
from legalbuild.errors import LockMismatchError


def sections(model_dir: Path, **overrides) -> dict:
    """The test project: 40 rows of data.jsonl, the tiny model, one training step."""
    return {
        "data": {"sources": [{"name": "d", "path": "data.jsonl"}], "target_min_pairs": 1},
        "model": {"base": str(model_dir)},
        "train": {"max_steps": 1, "report_to": ["none"]},
        **overrides,
    }


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    (tmp_path / "data.jsonl").write_text(data_rows(40))
    return write_recipe(tmp_path / "recipe.toml", **sections(tiny_model_dir))


def _keys(recipe: Path) -> dict[str, str]:
    return {n: node.key for n, node in pipeline.Loaded.from_path(recipe).nodes.items()}


def _build(recipe, store, **kw):
    logs: list[str] = []
    result = pipeline.build(pipeline.Loaded.from_path(recipe), store, log=logs.append, **kw)
    return result, logs


def test_build_then_cache_hit_and_lock(project, tmp_path):
    store = Store(tmp_path / "store")
    result, _ = _build(project, store, until="normalize")
    assert result.built == ["normalize"]
    assert (result.outputs["normalize"] / "train.jsonl").exists()
    lock = read_lock(project)
    assert lock_path(project).name == "legalbuild.engine.lock"
    assert lock["stages"]["normalize"]["key"] == _keys(project)["normalize"]
    assert "train.jsonl" in lock["stages"]["normalize"]["outputs"]
    again, logs = _build(project, store, until="normalize")
    assert again.built == [] and any("cached" in line for line in logs)


def test_one_data_byte_invalidates_normalize_and_everything_downstream(project):
    before = _keys(project)
    data = project.parent / "data.jsonl"
    data.write_text(data.read_text().replace("case 3", "case 4"))
    after = _keys(project)
    assert before["base"] == after["base"]
    for stage in ("normalize", "train", "merge", "eval"):
        assert before[stage] != after[stage], stage


def test_tracking_and_serving_edits_invalidate_nothing(project, tiny_model_dir):
    before = _keys(project)
    train = {"max_steps": 1, "report_to": ["tensorboard", "wandb"], "logging_steps": 3}
    serve = {"port": 9001, "host": "127.0.0.1"}
    write_recipe(project, **sections(tiny_model_dir, train=train, serve=serve))
    assert _keys(project) == before


def test_lora_rank_rebuilds_train_but_not_normalize(project, tiny_model_dir):
    before = _keys(project)
    write_recipe(project, **sections(tiny_model_dir, lora={"r": 16}))
    after = _keys(project)
    assert before["normalize"] == after["normalize"] and before["base"] == after["base"]
    assert before["train"] != after["train"] and before["merge"] != after["merge"]


def test_plan_says_why_and_locked_refuses_changes(project, tmp_path):
    store = Store(tmp_path / "store")
    _build(project, store, until="normalize")
    data = project.parent / "data.jsonl"
    data.write_text(data.read_text() + data_rows(1, offset=100))
    plans = {p.name: p for p in pipeline.plan(pipeline.Loaded.from_path(project), store)}
    assert not plans["normalize"].cached
    assert plans["normalize"].reasons == ["sources[0].data: data.jsonl changed"]
    with pytest.raises(LockMismatchError, match="normalize"):
        _build(project, store, until="normalize", locked=True)


def test_locked_build_reproduces_from_the_lock_on_a_fresh_cache(project, tmp_path):
    _build(project, Store(tmp_path / "store1"), until="normalize")
    digests = read_lock(project)["stages"]["normalize"]["outputs"]
    result, _ = _build(project, Store(tmp_path / "store2"), until="normalize", locked=True)
    assert result.built == ["normalize"]
    assert (
        Store(tmp_path / "store2").manifest("normalize", _keys(project)["normalize"])["outputs"]
        == digests
    )


def test_force_rebuilds_a_cached_stage(project, tmp_path):
    store = Store(tmp_path / "store")
    _build(project, store, until="normalize")
    result, _ = _build(project, store, until="normalize", force=["normalize"])
    assert result.built == ["normalize"]


def _cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter and report which heavy modules it imported."""
    code = (
        "import sys, json\n"
        "from legalbuild.cli import main\n"
        f"sys.argv = ['legalbuild', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        f"print('HEAVY=' + json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
        "sys.exit(code or 0)\n"
    )
    import os

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "LEGALBUILD_CACHE": str(env_cache)},
    )


def _heavy(proc) -> list[str]:
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")][-1]
    return json.loads(line[6:])


def test_light_commands_never_import_heavy_libraries(project, tmp_path):
    cache = tmp_path / "store"
    for args in (
        ["--help"],
        ["validate", str(project)],
        ["plan", str(project)],
        ["plan", str(project), "--json"],
        ["status", str(project)],
        ["status", str(project), "--json"],
        ["schema"],
        ["sweep", "--help"],
        ["sweep", "report", "--help"],
        ["eval", "--help"],
    ):
        proc = _cli(*args, env_cache=cache)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert _heavy(proc) == [], (args, _heavy(proc))
    build = _cli("build", str(project), "--until", "normalize", env_cache=cache)
    assert build.returncode == 0, build.stderr[-2000:]
    cached = _cli("build", str(project), "--until", "normalize", env_cache=cache)
    assert "cached" in cached.stdout and _heavy(cached) == []
    locked = _cli("plan", str(project), "--locked", env_cache=tmp_path / "fresh")
    assert locked.returncode == 4, locked.stderr[-2000:]
    assert "train: not in the lock (never built" in locked.stderr
    assert _heavy(locked) == []


def test_two_builders_at_once_build_once(project, tmp_path):
    import os

    env = {**os.environ, "LEGALBUILD_CACHE": str(tmp_path / "store")}
    cmd = [sys.executable, "-m", "legalbuild", "build", str(project), "--until", "normalize"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    built = sum("normalize  done" in out for out, _ in outs)
    waited = sum(("built meanwhile" in out) or ("normalize  cached" in out) for out, _ in outs)
    assert (built, waited) == (1, 1), outs


def test_verify_gc_and_clean_through_the_cli(project, tmp_path):
    cache = tmp_path / "store"
    assert _cli("build", str(project), "--until", "normalize", env_cache=cache).returncode == 0
    store = Store(cache)
    key = _keys(project)["normalize"]
    assert _cli("verify", str(project), env_cache=cache).returncode == 0
    (store.out_dir("normalize", key) / "train.jsonl").write_text("tampered\n")
    bad = _cli("verify", str(project), env_cache=cache)
    assert bad.returncode == 8 and "changed: train.jsonl" in bad.stdout
    # a new data version leaves the old entry stale: gc keeps only the current one
    (project.parent / "data.jsonl").write_text(data_rows(41))
    assert _cli("build", str(project), "--until", "normalize", env_cache=cache).returncode == 0
    assert len(list(store.entries())) == 2
    current = _keys(project)["normalize"]
    for leftover in (
        store.work_dir("normalize", "f" * 64),
        store.failed_dir("normalize", "f" * 64),
    ):
        leftover.mkdir(parents=True)
    store.work_dir("normalize", current).mkdir(parents=True)
    assert _cli("gc", str(project), env_cache=cache).returncode == 0
    assert [e.key for e in store.entries()] == [current]
    assert not store.work_dir("normalize", "f" * 64).exists()
    assert not store.failed_dir("normalize", "f" * 64).exists()
    assert store.work_dir("normalize", current).exists()
    assert _cli("clean", str(project), env_cache=cache).returncode == 0
    assert list(store.entries()) == []


def test_a_folder_that_is_not_a_cache_is_refused_by_build_gc_and_clean(project, tmp_path):
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "work" / "thesis.tex").write_text("user data")
    (home / "notes.txt").write_text("user data")
    for args in (
        ["build", str(project), "--until", "normalize"],
        ["gc", str(project)],
        ["clean", str(project)],
    ):
        proc = _cli(*args, "--cache-dir", str(home), env_cache=tmp_path / "unused")
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "is not a legalbuild cache" in proc.stderr and "notes.txt" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in home.rglob("*")) == ["notes.txt", "thesis.tex", "work"]


def test_the_next_build_removes_what_killed_builders_left_in_tmp(project, tmp_path):
    store = Store(tmp_path / "store")
    code = (
        "import time\n"
        "from legalbuild.engine.cache import Store\n"
        f"t = Store({str(store.root)!r}).new_tmp('normalize', {'e' * 64!r})\n"
        "(t / 'out' / 'half-written.jsonl').write_text('{')\n"
        "print(t, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    left = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    assert left.is_dir()
    _, logs = _build(project, store, until="normalize")
    assert "removed 1 temp folder(s) left by builds that were killed" in logs
    assert not left.exists() and list((store.root / "tmp").iterdir()) == []
