"""Faults a build must survive: SIGKILL at random moments, half-written checkpoints, torn JSONL
lines and bytes flipped in the cache with their mtime kept.

The fast tests check the checkpoint validator on files written by the real writers (safetensors,
torch.save). The slow ones run the CLI on the tests' tiny recipe (tiny Llama, 40 rows, 8 steps):
`LEGALBUILD_FAULT_SEED` replays a run (its seed is printed), `LEGALBUILD_FAULT_KILLS` sets the
number of kills (default 10).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import flip_byte_keeping_mtime, write_project
from helpers import legalbuild_cli as cli

from legalbuild.engine import maintenance, pipeline
from legalbuild.engine.cache import Store
from legalbuild.training.checkpoints import checkpoint_problems, resumable_checkpoint, trim_samples

STAGES = ("normalize", "base", "train", "merge", "eval")


# ------------------------------------------------------------------- checkpoint validation
def write_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint laid out as the Trainer writes one for a LoRA model, by the same writers."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file(
        {
            "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((8, 64), "float32"),
            "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros(
                (64, 8), "float32"
            ),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    torch.save({"state": {0: {"exp_avg": torch.zeros(512)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": [1, 2, 3]}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_each_kind_of_half_written_checkpoint_is_named(tmp_path):
    assert checkpoint_problems(write_checkpoint(tmp_path / "checkpoint-2", 2)) == []
    breakages = {
        "trainer_state.json is missing": lambda f: (f / "trainer_state.json").unlink(),
        "trainer_state.json is unreadable": lambda f: cut(f / "trainer_state.json", 10),
        "adapter_model.safetensors: 2,560 data bytes, the header describes 4,096": lambda f: cut(
            f / "adapter_model.safetensors", -1536
        ),
        "adapter_model.safetensors: truncated": lambda f: cut(f / "adapter_model.safetensors", 40),
        "no adapter_model.safetensors": lambda f: (f / "adapter_model.safetensors").unlink(),
        "optimizer.pt: not a whole torch file": lambda f: cut(f / "optimizer.pt", -100),
        "scheduler.pt is missing": lambda f: (f / "scheduler.pt").unlink(),
        "rng_state.pth: not a whole torch file": lambda f: cut(f / "rng_state.pth", 200),
        "adapter_config.json is missing": lambda f: (f / "adapter_config.json").unlink(),
    }
    for i, (expected, breakage) in enumerate(breakages.items()):
        folder = write_checkpoint(tmp_path / f"{i}" / "checkpoint-4", 4)
        breakage(folder)
        problems = checkpoint_problems(folder)
        assert len(problems) == 1 and problems[0].startswith(expected), (expected, problems)


def test_resume_takes_the_newest_complete_checkpoint_and_drops_the_broken(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints / "checkpoint-2", 2)
    cut(write_checkpoint(checkpoints / "checkpoint-4", 4) / "adapter_model.safetensors", 3000)
    (write_checkpoint(checkpoints / "checkpoint-6", 6) / "trainer_state.json").unlink()
    logs: list[str] = []
    assert resumable_checkpoint(checkpoints, logs.append) == checkpoints / "checkpoint-2"
    assert [line.split(" (")[0] for line in logs] == [
        "skipping checkpoint-6",
        "skipping checkpoint-4",
    ]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert resumable_checkpoint(tmp_path / "none", logs.append) is None


def test_samples_keep_whole_lines_up_to_the_resumed_step(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"step": s, "answer": "x"} for s in (2, 2, 4, 4, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "ans')  # torn
    assert trim_samples(path, 4) == 1
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 2, 4, 4]
    trim_samples(path, None)
    assert not path.exists()


# ------------------------------------------------------------------------ kills, end to end
@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """The tests' tiny recipe with checkpoints every 2 of 8 steps, and its own cache. Every step
    prints its `train step N/8` line (logging_steps 1): the kills anchored on a step need it."""
    root = tmp_path_factory.mktemp("faults")
    train = 'max_steps = 8\nsave_steps = 2\neval_steps = 2\nbatch_size = 2\nlogging_steps = 1\nreport_to = ["none"]'
    more = '[train.samples]\ncount = 1\nmax_new_tokens = 8\n[eval]\nmax_rows = 4\nmax_new_tokens = 16\nengine = "transformers"\n'
    return write_project(root, tiny_model_dir, train, more), root / "cache"


def start_build(cache: Path, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "legalbuild", "build", *args]
    with log.open("w") as out:  # its own session: the kill reaches every process it started
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stage_at_kill(log: str) -> str:
    """The stage that was running when the builder died (or where between stages it was)."""
    building = re.findall(r"^(\w+)\s+building", log, re.M)
    if not building:
        return "start-up"
    done = re.findall(r"^(\w+)\s+done", log, re.M)
    return building[-1] if building[-1] not in done else f"after {building[-1]}"


def wait_for_line(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 900) -> bool:
    """Wait until the build prints a line matching `pattern`; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text(errors="replace"), re.M):
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    return True


def assert_sound(store: Store, recipe: Path) -> None:
    """Every entry verifies byte for byte, and no lock is left held by the dead builder."""
    problems = {ref: p for ref, p in maintenance.verify(store).items() if p}
    assert not problems, problems
    for name, node in pipeline.Loaded.from_path(recipe).nodes.items():
        assert not store.busy(name, node.key), name


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_lying_cache(project, tmp_path):
    """Each round picks a moment at random: start-up or a stage (weighted by its measured
    duration), and a delay after it starts (up to a little past that duration, so commits and lock
    updates are hit too). A cached target stage is rebuilt with --force, so every stage keeps being
    killed, and a killed training resumes from its checkpoints in a later round."""
    recipe, cache = project
    seed = int(os.environ.get("LEGALBUILD_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    wanted = int(os.environ.get("LEGALBUILD_FAULT_KILLS", "10"))
    print(f"fault injection seed {seed} (LEGALBUILD_FAULT_SEED={seed} replays it), {wanted} kills")
    rng = random.Random(seed)
    store = Store(cache)
    seconds = {
        "start-up": 3.0,
        "normalize": 2.0,
        "base": 4.0,
        "train": 12.0,
        "merge": 4.0,
        "eval": 4.0,
    }
    kills, ended, leftovers, resumed = [], 0, 0, 0
    nodes = pipeline.Loaded.from_path(recipe).nodes
    for attempt in range(3 * wanted):
        if len(kills) >= wanted:
            break
        # weighted by how long each part takes: a moment drawn uniformly over a build's time
        stage = rng.choices(list(seconds), weights=list(seconds.values()))[0]
        target, anchor = stage, rf"^{stage}\s+building"
        delay = rng.uniform(0, 1.2 * seconds[stage])
        if stage == "train" and (step := rng.randint(0, 8)):  # a moment of training itself,
            target, anchor = f"train step {step}", rf"^train\s+step {step}/"  # at any speed
            delay = rng.uniform(0, 1.0)
        cached = stage in nodes and store.has(stage, nodes[stage].key)
        log = tmp_path / f"build-{attempt}.log"
        proc = start_build(cache, log, str(recipe), *(["--force", stage] if cached else []))
        try:
            if stage == "start-up" or wait_for_line(proc, log, anchor):
                proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                kill(proc)
        text = log.read_text(errors="replace")
        resumed += len(re.findall(r"^train\s+resuming from checkpoint", text, re.M))
        for done, took in re.findall(r"^(\w+)\s+done\s+\w+\s+in ([\d.]+) s", text, re.M):
            seconds[done] = max(seconds[done], float(took))
        if proc.returncode == -signal.SIGKILL:
            kills.append((target, round(delay, 2), stage_at_kill(text)))
            leftovers += len(list((cache / "tmp").iterdir())) if (cache / "tmp").is_dir() else 0
        else:
            assert proc.returncode == 0, text[-3000:]
            ended += 1
        assert_sound(store, recipe)
    assert len(kills) >= wanted
    final = cli(cache, "build", str(recipe))
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    resumed += len(re.findall(r"^train\s+resuming from checkpoint", final.stdout, re.M))
    print("kills (target, delay s, stage running):", *kills, sep="\n  ")
    print(
        f"{len(kills)} kills, {ended} builds ended before their kill, {resumed} training resumes, "
        f"{leftovers} temp folders left by kills, all gone after the next build"
    )
    assert_sound(store, recipe)
    assert list((cache / "tmp").iterdir()) == [], "temp folders survived the next build"
    assert cli(cache, "verify").returncode == 0


@pytest.mark.slow
def test_a_torn_checkpoint_is_skipped_and_training_resumes(project, tmp_path):
    recipe, cache = project
    store = Store(cache)
    key = pipeline.Loaded.from_path(recipe).nodes["train"].key
    checkpoints = store.work_dir("train", key) / "checkpoints"
    proc = start_build(cache, tmp_path / "killed.log", str(recipe), "--force", "train")
    deadline = time.monotonic() + 900
    try:
        while not (checkpoints / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        kill(proc)
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    newest, previous = steps[-1], steps[-2]
    # the newest checkpoint torn mid-write, and a later one killed before its trainer_state.json
    adapter = checkpoints / f"checkpoint-{newest}" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    later = checkpoints / f"checkpoint-{newest + 2}"
    later.mkdir()
    (later / "adapter_model.safetensors").write_bytes(adapter.read_bytes())
    samples = store.work_dir("train", key) / "samples.jsonl"
    with samples.open("a") as f:
        f.write('{"step": 99, "kind": "va')  # a line torn by the kill

    resumed = cli(cache, "build", str(recipe), "--force", "train")
    out = resumed.stdout
    assert resumed.returncode == 0, out[-3000:] + resumed.stderr[-3000:]
    assert (
        f"skipping checkpoint-{newest + 2} (incomplete, removed): trainer_state.json is missing"
        in out
    )
    assert f"skipping checkpoint-{newest} (incomplete, removed): adapter_model.safetensors:" in out
    assert f"resuming from checkpoint-{previous}" in out
    metrics = store.manifest("train", key)["metrics"]
    assert (metrics["resumed_from"], metrics["global_step"]) == (f"checkpoint-{previous}", 8)
    kept = (store.out_dir("train", key) / "samples.jsonl").read_text().splitlines()
    assert sorted({json.loads(line)["step"] for line in kept}) == [2, 4, 6, 8]
    assert_sound(store, recipe)
    assert list((cache / "tmp").iterdir()) == []


@pytest.mark.slow
def test_flipped_bytes_with_their_mtime_kept_stop_verify_builds_and_export(project, tmp_path):
    recipe, cache = project
    built = cli(cache, "build", str(recipe))
    assert built.returncode == 0, built.stderr[-3000:]
    store = Store(cache)
    nodes = pipeline.Loaded.from_path(recipe).nodes
    rng = random.Random(0)
    # (entry, file) flipped -> the command that reads it must refuse with exit 8
    cases = [
        ("train", "adapter/adapter_model.safetensors", ["build", str(recipe), "--force", "merge"]),
        ("base", "model/model.safetensors", ["build", str(recipe), "--force", "train"]),
        ("normalize", "train.jsonl", ["build", str(recipe), "--force", "train"]),
        ("merge", "model/model.safetensors", ["build", str(recipe), "--force", "eval"]),
        ("merge", "model/model.safetensors", ["export", str(recipe), str(tmp_path / "export")]),
    ]
    caught = 0
    for stage, rel, command in cases:
        path = store.out_dir(stage, nodes[stage].key) / rel
        offset = rng.randrange(path.stat().st_size)
        flip_byte_keeping_mtime(path, offset)
        try:
            verify = cli(cache, "verify", str(recipe))
            assert verify.returncode == 8 and f"changed: {rel}" in verify.stdout, verify.stdout
            refused = cli(cache, *command)
            assert refused.returncode == 8, (
                command,
                refused.stdout[-2000:],
                refused.stderr[-2000:],
            )
            assert "corrupted" in refused.stderr or "differs from what" in refused.stderr
            caught += 1
        finally:
            flip_byte_keeping_mtime(path, offset)
    print(f"bit flips: {len(cases)} tried, {caught} caught by verify and by the reading command")
    assert not (tmp_path / "export").exists()
    assert cli(cache, "verify", str(recipe)).returncode == 0
    exported = cli(cache, "export", str(recipe), str(tmp_path / "export"))  # the sound bytes ship
    assert exported.returncode == 0 and (tmp_path / "export" / "model.safetensors").is_file()
