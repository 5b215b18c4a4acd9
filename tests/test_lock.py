"""The lock a reviewer reads: file sets as a digest and a count, changed files named by `plan`,
written only when its content changes, kept when another machine's numerics differ, and a clear
error (never a traceback) when it is malformed. Also `plan --json` / `status --json`."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import REPO, write_jsonl, write_recipe

from legalbuild import cli
from legalbuild.engine import pipeline
from legalbuild.engine.cache import Store
from legalbuild.engine.lock import lock_path, read_lock, write_lock
from legalbuild.engine.reasons import diff_inputs

ROWS = [
    {"instruction": f"Audit clause {i}: fees may rise.", "output": f"Risk: low {i}"}
    for i in range(40)
]


def _recipe(root: Path, model_dir: Path, path: str) -> Path:
    return write_recipe(
        root / "recipe.toml",
        data={"sources": [{"name": "d", "path": path}], "target_min_pairs": 1},
        model={"base": str(model_dir)},
    )


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    return _recipe(tmp_path, tiny_model_dir, "data.jsonl")


def _build(recipe: Path, store: Store, **kw) -> list[str]:
    logs: list[str] = []
    pipeline.build(
        pipeline.Loaded.from_path(recipe), store, log=logs.append, until="normalize", **kw
    )
    return logs


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["legalbuild", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------- readable
def test_curate_inputs_are_a_digest_and_a_count_per_source(tmp_path):
    recipe = write_recipe(
        tmp_path / "recipe.toml",
        curate={"corpora": [{"kind": "licensedcode"}, {"kind": "nda_review"}]},
    )
    node = pipeline.Loaded.from_path(recipe).nodes["curate"]
    from legalbuild.engine.lock import flatten

    flat = flatten(node.inputs)
    assert flat["corpora[0].files"] > 600 and flat["corpora[1].files"] >= 3
    assert flat["rulebooks.files"] > 10 and flat["code.files"] > 5
    assert max(len(repr(v)) for v in flat.values()) < 100  # no 45,000-character line
    names = list(node.files["corpora[0]"])
    assert "cc-by-4.0.LICENSE" in names and not any(n.startswith("/") for n in names)
    assert all(not Path(n).is_absolute() for files in node.files.values() for n in files)


def test_reasons_name_the_first_changed_files_then_a_count():
    old = {"x.digest": "a" * 64, "x.files": 6, "lr": 0.1}
    new = {"x.digest": "b" * 64, "x.files": 6, "lr": 0.2}
    before = {f"f{i}": str(i) for i in range(6)}
    after = {**before, "f1": "x", "f2": "x", "f3": "x", "f4": "x"}
    assert diff_inputs(old, new, {"x": before}, {"x": after}) == [
        "x: f1, f2, f3 and 1 more changed",
        "lr: 0.1 -> 0.2",
    ]
    renamed = {k: v for k, v in after.items() if k != "f0"} | {"g": "0"}
    reasons = diff_inputs(old, new, {"x": before}, {"x": renamed})
    assert reasons[0] == "x: f1, f2, f3 and 1 more changed; g added; f0 removed"
    assert diff_inputs(old, new, None, {"x": after})[0].startswith(
        "x: files changed (6 -> 6 files;"
    )


def test_plan_names_the_data_files_that_changed(tmp_path, tiny_model_dir):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    for i in range(4):  # every file of a folder source counts, read or not
        (folder / f"notes-{i}.txt").write_text("v1")
    recipe = _recipe(tmp_path, tiny_model_dir, "hf")
    store = Store(tmp_path / "store")
    _build(recipe, store)
    for i in (1, 3):
        (folder / f"notes-{i}.txt").write_text("v2")
    (folder / "notes-0.txt").unlink()
    plans = {p.name: p for p in pipeline.plan(pipeline.Loaded.from_path(recipe), store)}
    assert plans["normalize"].reasons == [
        "sources[0].data: notes-1.txt, notes-3.txt changed; notes-0.txt removed"
    ]


def test_the_lock_is_written_only_when_its_content_changes(project, tmp_path):
    store = Store(tmp_path / "store")
    _build(project, store)
    path = lock_path(project)
    text, stamp = path.read_text(), path.stat().st_mtime_ns
    assert "[stages.normalize]" in text and max(map(len, text.splitlines())) < 120
    _build(project, store)  # all cached
    _build(project, Store(tmp_path / "store2"))  # rebuilt, same key, same outputs
    assert path.stat().st_mtime_ns == stamp and path.read_text() == text
    write_jsonl(project.parent / "data.jsonl", ROWS[:20])
    _build(project, store)
    assert path.read_text() != text


def test_a_lock_writer_killed_before_its_rename_leaves_no_temp_behind(tmp_path):
    import subprocess

    recipe = tmp_path / "r.toml"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True)  # fmt: skip
    stale = tmp_path / f".r.lock.tmp{int(gone.stdout)}"  # what a writer killed mid-write left
    stale.write_text("half a lock")
    live = tmp_path / f".r.lock.tmp{os.getppid()}"  # a writer still running: not ours to remove
    live.write_text("being written")
    assert write_lock(recipe, {"version": 1, "stages": {}})
    assert not stale.exists() and live.exists()
    assert lock_path(recipe).read_text().count("[stages]") == 1


def test_other_numerics_keep_the_locked_digests_with_a_note(project, tmp_path):
    _build(project, Store(tmp_path / "store1"))
    path = lock_path(project)
    lock = tomllib.loads(path.read_text())
    lock["stages"]["normalize"]["outputs"]["train.jsonl"] = "0" * 64  # "another CPU's" digest
    import tomli_w

    path.write_text(tomli_w.dumps(lock))
    logs = _build(project, Store(tmp_path / "store2"))
    note = [line for line in logs if "note:" in line]
    assert note and "train.jsonl differ from the locked digests" in note[0], logs
    assert read_lock(project)["stages"]["normalize"]["outputs"]["train.jsonl"] == "0" * 64


# --------------------------------------------------------------------------------- malformed
VALID = (
    'version = 1\nlegalbuild = "0.1.0"\n[stages.normalize]\nkey = "' + "a" * 64 + '"\n'
    '[stages.normalize.inputs]\nstage = "normalize"\n[stages.normalize.outputs]\n'
)
MALFORMED = {
    "stages not a table": "version = 1\nstages = 3\n",
    "stage not a table": 'version = 1\nstages = { normalize = "x" }\n',
    "missing key": "version = 1\n[stages.normalize]\n[stages.normalize.inputs]\n",
    "key of the wrong type": "version = 1\n[stages.normalize]\nkey = 5\n",
    "inputs not a table": VALID.replace(
        '[stages.normalize.inputs]\nstage = "normalize"\n', 'inputs = "x"\n'
    ),
    "an input that is a table": VALID + "[stages.normalize.inputs.deep]\nx = 1\n",
    "version of the wrong type": 'version = "1"\n',
    "not TOML": "version = 1\n[stages\n",
}


@pytest.mark.parametrize(
    "content", [*MALFORMED.values(), b"version = 1\n\xff\xfe\n"], ids=[*MALFORMED, "invalid UTF-8"]
)
def test_a_malformed_lock_is_a_clear_error(project, tmp_path, capsys, content):
    path = lock_path(project)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cache = ["--cache-dir", str(tmp_path / "store")]
    for command in (
        ["plan", str(project)],
        ["status", str(project)],
        ["build", str(project), "--locked"],
    ):
        code, _out, err = _cli(capsys, *command, *cache)
        assert code == 4, (command, err)
        assert "unreadable lock file" in err and "delete it" in err and "Traceback" not in err
    # a build without --locked replaces it, saying so
    code, out, err = _cli(capsys, "build", str(project), "--until", "normalize", *cache)
    assert code == 0, err
    assert "unreadable lock file" in out and "writes a new one" in out
    assert read_lock(project)["stages"]["normalize"]["key"]


def test_a_folder_in_place_of_the_lock_is_a_clear_error(project, tmp_path, capsys):
    lock_path(project).mkdir()
    for command in (["plan", str(project)], ["build", str(project), "--until", "normalize"]):
        code, _out, err = _cli(capsys, *command, "--cache-dir", str(tmp_path / "store"))
        assert code == 4 and "is a folder, not a lock file" in err and "delete it" in err, err


# ----------------------------------------------------------------------------- plan --locked
def test_plan_locked_compares_every_key_with_the_lock_and_names_what_differs(
    project, tmp_path, capsys
):
    fresh = ["--cache-dir", str(tmp_path / "fresh")]  # a new machine: nothing in its cache
    args = ["plan", str(project), "--locked", "--until", "normalize", *fresh]
    code, _out, err = _cli(capsys, *args)
    assert code == 4 and "no lock file beside recipe.toml" in err, err
    _build(project, Store(tmp_path / "store"))  # writes the lock
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert out.split("\n")[0].split() == ["stage", "action", "key", "lock", "why"]
    assert out.split("\n")[1].split()[:4] == ["normalize", "build", _key(project)[:12], "same"]
    assert not (tmp_path / "fresh" / "normalize").exists()  # nothing built
    write_jsonl(project.parent / "data.jsonl", ROWS[:20])
    code, out, err = _cli(capsys, *args)
    assert code == 4 and "normalize" in out, err
    assert "normalize: lock" in err and "sources[0].data: files changed" in err, err
    code, out, _ = _cli(capsys, *args, "--json")
    assert code == 4 and json.loads(out)["stages"][0]["locked"] is False


def _key(recipe: Path) -> str:
    return pipeline.Loaded.from_path(recipe).nodes["normalize"].key


# ------------------------------------------------------------------------------------- JSON
def test_status_and_plan_json_share_one_shape(project, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "store")]
    assert _cli(capsys, "build", str(project), "--until", "normalize", *cache)[0] == 0
    code, out, _ = _cli(capsys, "status", str(project), "--json", *cache)
    status = {s["stage"]: s for s in json.loads(out)["stages"]}
    assert code == 0 and list(status) == ["normalize", "base", "train", "merge", "eval"]
    normalize, train = status["normalize"], status["train"]
    assert normalize["cached"] and normalize["locked"] and normalize["reasons"] == []
    assert (Path(normalize["output"]) / "train.jsonl").is_file()
    assert normalize["metrics"]["train"] + normalize["metrics"]["val"] == 40
    assert not train["cached"] and train["output"] is None and train["reasons"]
    code, out, _ = _cli(capsys, "plan", str(project), "--json", "--until", "normalize", *cache)
    plan = json.loads(out)
    assert code == 0 and [s["stage"] for s in plan["stages"]] == ["normalize"]
    assert plan["stages"][0] == normalize and plan["cache"] == str((tmp_path / "store").resolve())


def test_the_linter_bans_the_heavy_modules_the_tests_list():
    from helpers import HEAVY_MODULES

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "TID253" in config["select"]
    assert config["flake8-tidy-imports"]["banned-module-level-imports"] == list(HEAVY_MODULES)
