"""What a key covers: the legalbuild code a stage runs (found from the source, by module), the
files each data source reads, and nothing machine-specific in what a build caches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, write_federated_project, write_json, write_jsonl, write_recipe

from legalbuild.engine import pipeline
from legalbuild.engine.cache import Store
from legalbuild.engine.code_digest import code_files
from legalbuild.engine.lock import lock_path
from legalbuild.hashing import file_digest

ROWS = [
    {"instruction": f"Audit clause {i}: the term renews.", "output": f"Risk: low {i}"}
    for i in range(30)
]


def _project(root: Path, model_dir: Path, **sections) -> Path:
    write_jsonl(root / "data.jsonl", ROWS)
    return write_recipe(
        root / "recipe.toml",
        data={"sources": [{"name": "d", "path": "data.jsonl"}], "target_min_pairs": 1},
        model={"base": str(model_dir)},
        **sections,
    )


def _keys(recipe: Path) -> dict[str, str]:
    return {n: node.key for n, node in pipeline.Loaded.from_path(recipe).nodes.items()}


# ------------------------------------------------------------------------------------- code
def test_code_files_follow_every_runtime_import_and_only_those():
    merge = code_files("legalbuild.stages.merge")
    assert "legalbuild/training/adapter.py" in merge  # imported inside run()
    assert "legalbuild/basemodel/sources.py" in merge  # imported inside a helper of adapter.py
    assert "legalbuild/merging/checks.py" in merge and "legalbuild/stages/base.py" not in merge
    assert {"legalbuild/__init__.py", "legalbuild/stages/__init__.py"} <= merge.keys()
    assert "legalbuild/engine/context.py" not in merge  # under `if TYPE_CHECKING:` only
    evaluation = code_files("legalbuild.stages.eval")
    assert "legalbuild/curation/rulebook.py" in evaluation  # importlib.import_module("...")
    assert (
        "legalbuild/report/__init__.py" not in evaluation and "legalbuild/cli.py" not in evaluation
    )
    # a file's digest is its sha256, as `sha256sum` prints it on any machine
    assert merge["legalbuild/stages/merge.py"] == file_digest(REPO / "legalbuild/stages/merge.py")
    for stage in ("curate", "normalize", "base", "train", "merge", "eval"):
        files = code_files(f"legalbuild.stages.{stage}")
        assert f"legalbuild/stages/{stage}.py" in files
        assert (
            not {"legalbuild/cli.py", "legalbuild/report/__init__.py", "legalbuild/engine/graph.py"}
            & files.keys()
        )


def test_the_federated_code_is_in_a_federated_recipes_keys_alone(tmp_path, tiny_model_dir):
    plain = pipeline.Loaded.from_path(_project(tmp_path / "plain", tiny_model_dir)).nodes
    fed = write_federated_project(tmp_path / "fed", tiny_model_dir, "rounds = 1\n")
    federated = pipeline.Loaded.from_path(fed).nodes
    for name, node in plain.items():
        assert not [f for f in node.files["code"] if "federated" in f], name
    code = federated["train"].files["code"]
    assert {"legalbuild/federated/coordinator.py", "legalbuild/federated/silo.py",
            "legalbuild/recipe/federated.py"} <= code.keys()  # fmt: skip
    assert "legalbuild/recipe/federated.py" in federated["merge"].files["code"]


def _plan_json(pkg_root: Path, recipe: Path, cache: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(pkg_root), "LEGALBUILD_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "legalbuild", "plan", str(recipe), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=pkg_root,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_editing_a_module_rebuilds_exactly_the_stages_that_run_it(tmp_path, tiny_model_dir):
    """A copy of the package, imported through PYTHONPATH, is edited module by module."""
    pkg = tmp_path / "pkg"
    shutil.copytree(
        REPO / "legalbuild", pkg / "legalbuild", ignore=shutil.ignore_patterns("__pycache__")
    )
    recipe = _project(tmp_path / "project", tiny_model_dir)
    cache = tmp_path / "cache"
    before = _plan_json(pkg, recipe, cache)
    keys = {s: v["key"] for s, v in before.items()}
    assert list(keys) == ["normalize", "base", "train", "merge", "eval"]

    # the report, the sweep, the CLI and its commands run in no stage; the federated code runs in
    # none of a recipe without [federated]
    edited = ("report/__init__.py", "report/model.py", "sweep/runner.py", "sweep/trial.py",
              "federated/coordinator.py", "recipe/federated.py")  # fmt: skip
    for module in (*edited, "cli.py", "commands/deploy.py", "commands/sweep.py"):
        path = pkg / "legalbuild" / module
        path.write_text(path.read_text() + "\n\ndef _probe():\n    return 1\n")
    assert {s: v["key"] for s, v in _plan_json(pkg, recipe, cache).items()} == keys

    # metrics.py is run by eval alone
    _edit(pkg / "legalbuild/metrics.py", "import math", "import math\n\nPROBE = 1")
    after = {s: v["key"] for s, v in _plan_json(pkg, recipe, cache).items()}
    assert [s for s in keys if after[s] != keys[s]] == ["eval"]

    # data/readers.py is run by normalize: normalize and everything reading it, and plan says why
    env = {**os.environ, "PYTHONPATH": str(pkg), "LEGALBUILD_CACHE": str(cache)}
    subprocess.run(
        [sys.executable, "-m", "legalbuild", "build", str(recipe), "--until", "normalize"],
        env=env, cwd=pkg, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    _edit(pkg / "legalbuild/data/readers.py", "import csv", "import csv\n\nPROBE = 1")
    plan = _plan_json(pkg, recipe, cache)
    changed = [s for s in keys if plan[s]["key"] != after[s]]
    assert changed == ["normalize", "train", "merge", "eval"]
    assert plan["normalize"]["reasons"] == ["code: legalbuild/data/readers.py changed"]


# ------------------------------------------------------------------------------------- data
def test_each_source_keys_its_own_files_wherever_the_project_lies(tmp_path, tiny_model_dir):
    recipe = _project(tmp_path / "a", tiny_model_dir)
    write_jsonl(tmp_path / "a" / "other.jsonl", ROWS[:10])
    sources = [{"name": "d", "path": "data.jsonl"}, {"name": "o", "path": "other.jsonl"}]
    swapped = [{"name": "d", "path": "other.jsonl"}, {"name": "o", "path": "data.jsonl"}]
    data = {"target_min_pairs": 1}
    write_recipe(recipe, data={**data, "sources": sources}, model={"base": str(tiny_model_dir)})
    keys = _keys(recipe)
    node = pipeline.Loaded.from_path(recipe).nodes["normalize"]
    assert node.files["sources[0].data"].keys() == {"data.jsonl"}  # names, never machine paths
    assert node.inputs["sources"][1]["data"]["files"] == 1

    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere")
    assert _keys(tmp_path / "elsewhere" / "recipe.toml") == keys  # the location is not hashed
    write_recipe(recipe, data={**data, "sources": swapped}, model={"base": str(tiny_model_dir)})
    assert _keys(recipe)["normalize"] != keys["normalize"]  # rows now carry the other names


# ------------------------------------------------------------------------- no machine path
@pytest.mark.slow
def test_no_cached_output_holds_a_machine_path(tmp_path, tiny_model_dir):
    """A whole small build (tiny model, one step): nothing under any entry's out/ names the cache,
    the project or the model folder; the adapter names its base by identity."""
    recipe = _project(
        tmp_path / "project",
        tiny_model_dir,
        train={"max_steps": 1, "report_to": ["tensorboard"]},
        eval={"max_rows": 4, "max_new_tokens": 8, "compare_base": False},
    )
    store = Store(tmp_path / "cache")
    result = pipeline.build(pipeline.Loaded.from_path(recipe), store, log=lambda _m: None)
    assert result.built == ["normalize", "base", "train", "merge", "eval"]
    needles = [str(tmp_path).encode(), str(tiny_model_dir).encode(), str(Path.home()).encode()]
    scanned = 0
    for path in (store.root / "entries").rglob("*"):
        if path.is_file() and "out" in path.relative_to(store.root).parts:
            data = path.read_bytes()
            assert not [n for n in needles if n in data], path
            scanned += 1
    assert scanned > 20
    # TensorBoard's copy of the trainer arguments names the work dir: a run log beside out/
    logs = result.outputs["train"].parent / "logs" / "tracking" / "tensorboard"
    assert list(logs.glob("events.out.tfevents.*"))
    assert not [n for n in needles if n in lock_path(recipe).read_bytes()]
    adapter = json.loads((result.outputs["train"] / "adapter" / "adapter_config.json").read_text())
    base = json.loads((result.outputs["base"] / "base.json").read_text())
    assert adapter["base_model_name_or_path"] == base["identity"]
    assert base["identity"].startswith("folder@sha256:")


def test_the_adapter_records_its_base_by_identity(tmp_path):
    from legalbuild.training.adapter import record_base_identity

    base_entry = tmp_path / "entries" / "base" / "k" / "out"
    write_json(base_entry / "base.json", {"kind": "folder", "sha256": "b" * 64})
    model_dir = str(base_entry / "model")
    adapter = tmp_path / "adapter"
    write_json(adapter / "adapter_config.json", {"base_model_name_or_path": model_dir, "r": 8})
    (adapter / "README.md").write_text(f"---\nbase_model: {model_dir}\n---\n# Model Card\n")
    (adapter / "adapter_model.safetensors").write_bytes(model_dir.encode())  # binary: untouched
    assert record_base_identity(adapter, base_entry) == ["README.md", "adapter_config.json"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": f"folder@sha256:{'b' * 64}", "r": 8}
    assert model_dir not in (adapter / "README.md").read_text()
