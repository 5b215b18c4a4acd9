"""Same key, same host, same bytes: two trainings of the tests' tiny model in separate processes,
run at the same time (each is the other's load), with different hash seeds and different torch
thread counts set in the process beforehand, write identical files, adapter and reports alike.

What made them differ before (measured with this model, 8 steps, bf16 on a 2-core AVX-512 CPU):
PEFT wrote `target_modules` in the order of a set (Python's per-process string hashing),
metrics.json and log_history.json held run times and rates, and the adapter's weights follow the
torch thread count (1 and 2 threads: other bytes; 2 threads twice, idle or under load: the same).
The train stage now sorts the set, keeps times in logs/timings.json, and pins the threads to the
count its key holds (legalbuild.hardware.training_threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from legalbuild.hardware import accelerator_kind
from legalbuild.recipe import Recipe
from legalbuild.stages import train

TRAIN = """
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(int(sys.argv[2]))  # whatever the building process happened to be set to
from helpers import audit_split, base_output, tiny_model, train_context
from legalbuild.stages import train
root = Path(sys.argv[1])
base = base_output(root, tiny_model())
(base / "base.json").write_text(json.dumps({"identity": "tiny-llama@test"}))
ctx = train_context(root, base, audit_split(root / "normalize"),
                    {"max_steps": 4, "eval_steps": 2, "eval_rows": 2})
train.run(ctx)
print(json.dumps({str(p.relative_to(ctx.out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(ctx.out_dir.rglob("*")) if p.is_file()}))
"""


@pytest.mark.slow
def test_two_trainings_with_the_same_key_write_the_same_bytes(tmp_path, tiny_model_dir):
    runs = []
    for name, threads, seed in (("a", 1, "1"), ("b", 2, "2")):
        (tmp_path / name).mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        env.pop("OMP_NUM_THREADS", None)
        command = [
            sys.executable,
            "-c",
            TRAIN,
            str(tmp_path / name),
            str(threads),
            str(REPO / "tests"),
        ]
        runs.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert "adapter/adapter_model.safetensors" in outputs[0]
    assert outputs[0] == outputs[1]  # every file of out/: adapter, metrics, history, samples, plot


@pytest.mark.skipif(accelerator_kind() != "cpu", reason="the thread count is a CPU run's")
def test_the_thread_count_enters_the_key_of_a_cpu_training(tmp_path, monkeypatch):
    recipe = Recipe.model_validate(
        {"project": {"name": "t"}, "data": {"sources": [{"name": "d", "path": "d.jsonl"}]}}
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = train.key_inputs(recipe, tmp_path / "r.toml")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    three = train.key_inputs(recipe, tmp_path / "r.toml")
    assert (one["cpu_threads"], three["cpu_threads"]) == (1, 3)
    assert train.reproducibility(recipe) is None  # one CPU process: pinned, the same bytes


@pytest.mark.skipif(accelerator_kind() != "cpu", reason="the thread count is a CPU run's")
def test_a_pinned_thread_count_gives_the_same_key_on_every_host(tmp_path, monkeypatch):
    recipe = Recipe.model_validate(
        {
            "project": {"name": "t"},
            "data": {"sources": [{"name": "d", "path": "d.jsonl"}]},
            "train": {"cpu_threads": 2},
        }
    )
    keys = []
    for threads in ("1", "3"):  # another host's default
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        keys.append(train.key_inputs(recipe, tmp_path / "r.toml"))
    assert keys[0] == keys[1] and keys[0]["cpu_threads"] == 2
    assert "cpu_threads" not in keys[0]["train"]  # the setting itself is not hashed twice
