"""Federated training ([federated]): the recipe refuses bad input by key, the train key covers the
silos' data and never their paths, the aggregation arithmetic is exact, Flower's own strategies
aggregate (and resume) as computed by hand, and a real federation on loopback (SuperLink + three
SuperNodes, from the Flower venv) trains, survives a dead silo by failing cleanly and resuming,
leaves no process behind, is cached, and never lets a silo's row reach the coordinator.

The Flower tests need `.venv-flower` (scripts/setup-flower.sh, which scripts/setup.sh runs) and are
skipped, saying so, without it."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, flower_venv, silo_rows, write_federated_project, write_jsonl

from legalbuild.engine import pipeline
from legalbuild.engine.cache import Store
from legalbuild.errors import RecipeError
from legalbuild.federated import combine
from legalbuild.recipe.loading import load_recipe

FLOWER = flower_venv()
needs_flower = pytest.mark.skipif(
    FLOWER is None,
    reason="no Flower venv (flwr cannot share .venv with vLLM): `bash scripts/setup-flower.sh` "
    "makes .venv-flower, or set LEGALBUILD_FLOWER_VENV",
)
ROUNDS = "rounds = 2\nlocal_steps = 2\n"
SECURE = 'secure_aggregation = { enabled = true }\nfinal_adapter = "average"\n'


# ------------------------------------------------------------------------------------ recipe
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('sources = [{ name = "b", path = "b.jsonl" }]\n', ""),
         "[federated.silos[1]] Value error, silo 'b' has no data"),
        (lambda t: t.replace('name = "c"', 'name = "a"'),
         "[federated.silos] Value error, silo names must be unique, repeated: ['a']"),
        (lambda t: t.replace("rounds = 2", 'rounds = 2\nstrategy = "fedsgd"'),
         "[federated.strategy] Input should be 'fedavg', 'fedprox' or 'fedadam' (got 'fedsgd')"),
        (lambda t: t.replace("rounds = 2", "rounds = 0"),
         "[federated.rounds] Input should be greater than or equal to 1 (got 0)"),
        (lambda t: t.replace("rounds = 2", "rounds = -3"),
         "[federated.rounds] Input should be greater than or equal to 1 (got -3)"),
        (lambda t: t.replace("rounds = 2", 'rounds = 2\nstrategy = "fedadam"\nfinal_adapter = "exact"'),
         "needs a strategy that averages"),
        (lambda t: t.replace("rounds = 2", 'rounds = 2\nfinal_adapter = "best"\ndp = { mode = "server-fixed" }'),
         "which differential privacy keeps from the server"),
        (lambda t: t + "[train.distributed]\nnproc_per_node = 2\n",
         "[federated] and [train.distributed] exclude each other"),
        (lambda t: t.replace("rounds = 2", f'rounds = 2\n{SECURE}strategy = "fedadam"'),
         'secure_aggregation composes with strategy = "fedavg" or "fedprox"'),
        (lambda t: t.replace("rounds = 2", "rounds = 2\nsecure_aggregation = { enabled = true }"),
         "which secure aggregation hides from the server"),
        (lambda t: t.replace("rounds = 2", f'rounds = 2\n{SECURE}dp = {{ mode = "client-fixed" }}'),
         'dp.mode = "client-fixed" with secure_aggregation'),
        (lambda t: t.replace("rounds = 2", "rounds = 2\nsecure_aggregation = { reconstruction_threshold = 0 }"),
         "[federated.secure_aggregation.reconstruction_threshold] Input should be greater than 0"),
    ],
)  # fmt: skip
def test_bad_federated_recipes_are_refused_naming_the_key(tmp_path, edit, message):
    recipe = write_federated_project(tmp_path, tmp_path / "model", ROUNDS)
    load_recipe(recipe)  # the unedited recipe is valid
    recipe.write_text(edit(recipe.read_text()))
    with pytest.raises(RecipeError) as exc:
        load_recipe(recipe)
    assert message in str(exc.value), str(exc.value)
    assert f"{recipe}:" in str(exc.value)  # file (and line) named


def test_the_train_key_covers_each_silos_data_and_names_no_path(tmp_path, tiny_model_dir):
    recipe = write_federated_project(tmp_path, tiny_model_dir, ROUNDS)
    nodes = pipeline.Loaded.from_path(recipe).nodes
    assert list(nodes) == ["base", "train", "merge"]  # no data of the coordinator's own
    train = nodes["train"]
    assert train.deps == ("base",)
    silos = train.inputs["silos"]
    assert [s["name"] for s in silos] == ["a", "b", "c"]
    data = silos[0]["normalize"]["sources"][0]["data"]
    assert set(data) == {"digest", "files"} and len(data["digest"]) == 64
    text = json.dumps(train.inputs)
    assert str(tmp_path) not in text and "Qz" not in text and "a.jsonl" not in text

    def key_after(edit) -> str:
        recipe.write_text(edit(original))
        return pipeline.Loaded.from_path(recipe).nodes["train"].key

    original = recipe.read_text()
    assert (
        key_after(lambda t: t.replace("rounds = 2", "rounds = 2\nround_timeout_s = 60"))
        == train.key
    )
    assert key_after(lambda t: t.replace("rounds = 2", "rounds = 3")) != train.key
    assert (
        key_after(lambda t: t + "\n[[data.sources]]\nname = 'eval'\npath = 'a.jsonl'\n")
        == train.key
    )
    recipe.write_text(original)
    write_jsonl(tmp_path / "b.jsonl", silo_rows("b", 15))  # one silo's data changes
    assert pipeline.Loaded.from_path(recipe).nodes["train"].key != train.key


# ------------------------------------------------------------------------------------ arithmetic
def _updates(seed: int, n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    names = ["m.layers.0.q_proj.lora_A.weight", "m.layers.0.q_proj.lora_B.weight"]
    return [{names[0]: rng.normal(size=(4, 16)), names[1]: rng.normal(size=(12, 4))} for _ in range(n)]  # fmt: skip


def test_the_exact_combination_is_the_weighted_mean_of_the_products():
    updates, weights = _updates(0), [18.0, 13.0, 7.0]
    a, b = "m.layers.0.q_proj.lora_A.weight", "m.layers.0.q_proj.lora_B.weight"
    exact = combine.exact_combination(updates, weights)
    assert exact[a].shape == (12, 16) and exact[b].shape == (12, 12)  # rank 4 x 3 silos
    wanted = sum(w * (u[b] @ u[a]) for w, u in zip(weights, updates, strict=True)) / sum(weights)
    assert np.allclose(exact[b] @ exact[a], wanted, atol=1e-5)
    mean = combine.weighted_mean(updates, weights)
    naive = mean[b] @ mean[a]
    error = combine.product_error(updates, weights)["relative_error"]
    assert math.isclose(
        error, np.linalg.norm(naive - wanted) / np.linalg.norm(wanted), rel_tol=1e-5
    )
    assert error > 0.3  # independent random updates: averaging A and B apart is far off
    same = combine.product_error([updates[0]] * 3, weights)["relative_error"]
    assert same < 1e-7  # identical silos: both ways agree


# ------------------------------------------------------------------------------------ Flower
STRATEGY_SCRIPT = """
import json, sys
import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from legalbuild.federated import combine
from legalbuild.federated.coordinator import make_strategy, to_record, from_record

def replies(updates, weights):
    out = []
    for i, (u, w) in enumerate(zip(updates, weights)):
        content = RecordDict({"arrays": to_record(u), "metrics": MetricRecord({"num-examples": w})})
        msg = Message(content=content, dst_node_id=i + 1, message_type="train")
        out.append(Message(content, reply_to=msg))
    return out

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in a ServerApp

class Grid:
    def get_node_ids(self):
        return [1, 2, 3]

rng = np.random.default_rng(1)
start = {"a.lora_A.weight": rng.normal(size=(2, 5)).astype("float32"), "a.lora_B.weight": np.zeros((3, 2), "float32")}
rounds = [[{k: (v + rng.normal(size=v.shape)).astype("float32") for k, v in start.items()} for _ in range(3)] for _ in range(2)]
weights = [18, 13, 7]
spec = {"strategy": "fedavg", "on_silo_failure": "fail", "min_silos": 2, "proximal_mu": 0.0,
        "server_learning_rate": 0.1, "learning_rate": 0.01, "dp": {"mode": "off"}}
fedavg = make_strategy(spec, 3)
list(fedavg.configure_train(1, to_record(start), ConfigRecord({}), Grid()))
got, _ = fedavg.aggregate_train(1, replies(rounds[0], weights))
want = combine.weighted_mean(rounds[0], weights)
fedavg_diff = max(float(np.abs(from_record(got)[k] - want[k]).max()) for k in want)

def adam(resume):
    s = make_strategy({**spec, "strategy": "fedadam"}, 3)
    arrays = start
    for rnd, ups in enumerate(rounds, 1):
        if resume and rnd == 2:  # a new ServerApp: the moments come back from the checkpoint
            m, v = s.m_t, s.v_t
            s = make_strategy({**spec, "strategy": "fedadam"}, 3)
            s.m_t, s.v_t = m, v
        list(s.configure_train(rnd, to_record(arrays), ConfigRecord({}), Grid()))
        new, _ = s.aggregate_train(rnd, replies(ups, weights))
        arrays = from_record(new)
    return arrays

a, b = adam(False), adam(True)
print(json.dumps({"fedavg_diff": fedavg_diff, "adam_resume_diff": max(float(np.abs(a[k] - b[k]).max()) for k in a),
                  "adam_moved": max(float(np.abs(a[k] - start[k]).max()) for k in a)}))
"""


@needs_flower
def test_flowers_strategies_aggregate_as_computed_by_hand_and_fedadam_resumes():
    out = subprocess.run(
        [str(FLOWER / "bin" / "python"), "-c", STRATEGY_SCRIPT],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fedavg_diff"] < 1e-6  # Flower's FedAvg = sum n_i x_i / sum n_i
    assert result["adam_resume_diff"] < 1e-6 and result["adam_moved"] > 1e-3


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line or environment names `text` (a test's tmp folder)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if text.encode() in blob and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _files_containing(root: Path, markers: list[bytes], skip: str = "silos") -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if skip in path.relative_to(root).parts or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        hits += [f"{path}: {m.decode()}" for m in markers if m in data]
    return hits


@needs_flower
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_three_silos_two_rounds_a_dead_silo_fails_cleanly_and_the_next_build_resumes(
    tmp_path, tiny_model_dir
):
    recipe = write_federated_project(tmp_path, tiny_model_dir, ROUNDS + 'final_adapter = "best"')
    cache = tmp_path / "cache"
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache), "LEGALBUILD_FLOWER_VENV": str(FLOWER)}
    argv = [sys.executable, "-m", "legalbuild", "build", str(recipe)]
    store, key = Store(cache), pipeline.Loaded.from_path(recipe).nodes["train"].key
    work = store.work_dir("train", key)
    markers = [
        f"Qz{n}x{i}Wv".encode() for n, k in (("a", 24), ("b", 16), ("c", 8)) for i in range(k)
    ]

    # 1. silo b dies in round 2 (its SuperNode and ClientApp SIGKILLed): the build fails cleanly
    first = tmp_path / "first.log"
    started = time.monotonic()
    with first.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        silo_log = work / "silos" / "b" / "supernode.log"
        while "round 2: received" not in (silo_log.read_text() if silo_log.exists() else ""):
            assert proc.poll() is None, first.read_text()
            assert time.monotonic() - started < 900, first.read_text()
            time.sleep(0.05)
        os.killpg(int((work / "silos" / "b" / "supernode.pid").read_text()), signal.SIGKILL)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = first.read_text()
    assert code == 6, text
    assert "round 2 of 2 failed (silo b:" in text and "resumes after round 1" in text, text
    assert not store.has("train", key)
    assert _processes_naming(str(tmp_path)) == []  # SuperLink, SuperNodes, apps: all gone

    # 2. round 1's global adapter is FedAvg of what the silos sent, computed by hand
    from safetensors.numpy import load_file

    sent = {n: load_file(str(work / "silos" / n / "sent" / "round-1.safetensors")) for n in "abc"}
    counts = {n: json.loads((work / "silos" / n / "sent" / "round-1.json").read_text())["num-examples"] for n in "abc"}  # fmt: skip
    assert sorted(counts.values()) != [counts["a"]] * 3  # unequal weights: the weighting matters
    total = sum(counts.values())
    global_1 = load_file(str(work / "coordinator" / "rounds" / "round-1.safetensors"))
    for name, value in global_1.items():
        by_hand = sum(counts[n] * sent[n][name].astype(np.float64) for n in "abc") / total
        assert np.allclose(value, by_hand, atol=1e-6), name
    assert any(np.abs(v).max() > 0 for k, v in global_1.items() if "lora_B" in k)  # it trained

    # 3. no silo's row reached the coordinator: its folder, its logs, the build log
    assert (
        "Qzbx0Wv"
        in (work / "silos" / "b" / "data" / "train.jsonl").read_text()
        + (work / "silos" / "b" / "data" / "val.jsonl").read_text()
    )  # the silo does hold them (so the scan can fail)
    assert _files_containing(work, markers) == []
    assert not any(m in text.encode() for m in markers)

    # 4. the next build resumes after round 1 and completes; a third is a cache hit
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after round 1 of 2" in again.stdout
    metrics = store.manifest("train", key)["metrics"]
    fed = metrics["federated"]
    assert fed["rounds"] == 2 and fed["silos"] == 3 and fed["final_adapter"] in ("average", "exact")
    assert set(fed["final_val_loss"]) == {"average", "exact"}
    assert fed["bytes_per_round"][0] == fed["bytes_per_round"][1] > 0
    entry = store.entry_dir("train", key)
    assert (
        _files_containing(entry, markers) == []
        and _files_containing(cache / "entries", markers) == []
    )
    assert not any(m in again.stdout.encode() for m in markers)
    assert _processes_naming(str(tmp_path)) == []
    adapter = json.loads((entry / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == (4 if fed["final_adapter"] == "average" else 12)
    third = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and "built: nothing (all cached)" in third.stdout, third.stdout
    lock = next(recipe.parent.glob("*.lock")).read_text()
    inputs = tomllib.loads(lock)["stages"]["train"]["inputs"]
    assert str(tmp_path) not in lock and "Qz" not in lock
    assert not any(f"{n}.jsonl" in lock for n in "abc")  # no silo file is named
    assert [inputs[f"silos[{i}].name"] for i in range(3)] == ["a", "b", "c"]
    assert all(len(inputs[f"silos[{i}].normalize.sources[0].data.digest"]) == 64 for i in range(3))


@needs_flower
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_with_on_silo_failure_continue_the_rounds_complete_without_the_dead_silo(
    tmp_path, tiny_model_dir
):
    fed = ROUNDS + 'on_silo_failure = "continue"\nmin_silos = 2\nstrategy = "fedprox"'
    recipe = write_federated_project(tmp_path, tiny_model_dir, fed)
    cache = tmp_path / "cache"
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache), "LEGALBUILD_FLOWER_VENV": str(FLOWER)}
    argv = [sys.executable, "-m", "legalbuild", "build", str(recipe), "--until", "train"]
    store, key = Store(cache), pipeline.Loaded.from_path(recipe).nodes["train"].key
    work = store.work_dir("train", key)
    log = tmp_path / "build.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        silo_log = work / "silos" / "c" / "supernode.log"
        deadline = time.monotonic() + 600
        while "round 1: received" not in (silo_log.read_text() if silo_log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.killpg(int((work / "silos" / "c" / "supernode.pid").read_text()), signal.SIGKILL)
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text
    assert "round 1: left out silo c: Error: Node Unavailable" in text, text
    fed_metrics = store.manifest("train", key)["metrics"]["federated"]
    assert fed_metrics["left_out"]["1"] == ["c"] and fed_metrics["strategy"] == "fedprox"
    assert _processes_naming(str(tmp_path)) == []


@needs_flower
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_secure_aggregation_unmasks_only_the_weighted_mean(tmp_path, tiny_model_dir):
    """SecAgg+ (Flower's workflow and mod) over loopback, FedProx, 3 silos x 2 rounds: each round's
    global adapter is the example-weighted mean of what the silos trained, to the protocol's
    quantization; no plain array reached the coordinator; no row either; no process is left."""
    recipe = write_federated_project(
        tmp_path, tiny_model_dir, ROUNDS + SECURE + 'strategy = "fedprox"'
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache), "LEGALBUILD_FLOWER_VENV": str(FLOWER)}
    argv = [sys.executable, "-m", "legalbuild", "build", str(recipe), "--until", "train"]
    store, key = Store(cache), pipeline.Loaded.from_path(recipe).nodes["train"].key
    work, seen = store.work_dir("train", key), tmp_path / "seen"
    log = tmp_path / "build.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:  # what the silos sent and the coordinator holds, copied before the entry's commit
        deadline = time.monotonic() + 900  # removes the work folder
        while not (work / "coordinator" / "rounds" / "round-2.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        shutil.copytree(work / "coordinator", seen / "coordinator")
        for name in "abc":
            shutil.copytree(work / "silos" / name / "sent", seen / name)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert text.count("(SecAgg+)") == 2, text
    from safetensors.numpy import load_file

    bound = 3 * 2 * 8.0 / 2**22  # silos x 2 x clipping_range / 2**22 levels: 1.1e-5 per value
    for rnd in (1, 2):
        sent = {n: load_file(str(seen / n / f"round-{rnd}.safetensors")) for n in "abc"}
        counts = {n: json.loads((seen / n / f"round-{rnd}.json").read_text())["num-examples"] for n in "abc"}  # fmt: skip
        total = sum(counts.values())
        global_r = load_file(str(seen / "coordinator" / "rounds" / f"round-{rnd}.safetensors"))
        assert global_r.keys() == sent["a"].keys()
        worst = 0.0
        for name, value in global_r.items():
            by_hand = sum(counts[n] * sent[n][name].astype(np.float64) for n in "abc") / total
            worst = max(worst, float(np.abs(value - by_hand).max()))
            assert value.dtype == sent["a"][name].dtype  # float32, as sent: not Flower's float64
            assert not np.allclose(sent["a"][name], by_hand, atol=1e-4) or "lora_A" in name
        assert worst <= bound, (rnd, worst, bound)
        record = json.loads((seen / "coordinator" / "rounds" / f"round-{rnd}.json").read_text())
        assert record["secure"] is True and record["array_bytes_received"] == 0
        assert record["bytes_received"] > 0 and set(record["silos"]) == {"a", "b", "c"}
    assert not (seen / "coordinator" / "last").exists()  # no silo's own adapter is kept
    fed = store.manifest("train", key)["metrics"]["federated"]
    assert fed["secure_aggregation"]["enabled"] and fed["array_bytes_received"] == [0, 0]
    markers = [f"Qz{n}x{i}Wv".encode() for n, k in (("a", 24), ("b", 16), ("c", 8)) for i in range(k)]  # fmt: skip
    assert _files_containing(seen / "coordinator", markers) == [] and not any(m in text.encode() for m in markers)  # fmt: skip
    assert _files_containing(store.entry_dir("train", key), markers) == []
    assert _processes_naming(str(tmp_path)) == []
