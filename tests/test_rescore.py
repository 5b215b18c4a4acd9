"""`legalbuild eval RECIPE --model M`: the recipe's own eval on a model it did not build (another
recipe's merged model, a merged folder, a LoRA adapter), as a user runs it: real tiny models,
real transformers generation, real files, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from helpers import (
    legalbuild_cli,
    random_adapter,
    recipe_with_merged_model,
    teach_tiny_model,
    write_project,
)

from legalbuild.answer_format import Audit, Finding, render_audit

ANSWER = render_audit(Audit(risk="none", note="The clause is balanced."))
FLAGGED = render_audit(
    Audit(risk="high", findings=[Finding("Unlimited liability", "t.unlimited", "high", why="x")])
)
EVAL = '[eval]\nmax_rows = 8\nmax_new_tokens = 24\nengine = "transformers"\ncompare_base = false\n'
RECIPE_FILES = ("recipe.toml", "data.jsonl")


def instructions() -> list[str]:
    return [
        f"Audit this clause: clause {i}, the supplier's liability is set out here."
        for i in range(40)
    ]


def write_rows(folder: Path) -> None:
    """40 audit rows, every other one flagged: a model answering ANSWER to all scores the clean
    share of the held-out rows."""
    rows = [
        {"instruction": text, "output": FLAGGED if i % 2 else ANSWER}
        for i, text in enumerate(instructions())
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """The tests' tiny recipe with its normalize and base stages built in a fresh cache."""
    root = tmp_path_factory.mktemp("rescore")
    recipe = write_project(root, tiny_model_dir, more=EVAL)
    write_rows(root)
    cache = root / "cache"
    proc = legalbuild_cli(cache, "build", str(recipe), "--until", "base")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, cache


@pytest.fixture(scope="module")
def other_recipe(project, tiny_model_dir, tmp_path_factory) -> Path:
    """Another recipe whose merge entry (in the same cache) is the tiny model taught to answer
    every clause of the data with ANSWER."""
    _, cache = project
    taught = teach_tiny_model(
        tiny_model_dir,
        tmp_path_factory.mktemp("taught") / "model",
        [(text, ANSWER) for text in instructions()],
        steps=120,
    )
    root = tmp_path_factory.mktemp("other")
    recipe, _ = recipe_with_merged_model(taught, root, tiny_model_dir, "taught", cache=cache)
    return recipe


def entries(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in (cache / "entries").glob("*/*"))


def test_another_recipes_model_on_this_recipes_rows(project, other_recipe, tmp_path):
    recipe, cache = project
    before = entries(cache)
    out = tmp_path / "scores"
    proc = legalbuild_cli(
        cache, "eval", str(recipe), "--model", str(other_recipe), "--out", str(out), "--json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert json.loads((out / "eval.json").read_text()) == result
    # every held-out row of the recipe, answered by the other recipe's model and by the regexes
    assert len(answers) == result["rows"] > 0
    assert {a["answers"]["merged"]["text"] for a in answers} == {ANSWER}
    assert {"merged", "regex", "regex-unscoped"} <= set(result["metrics"])
    merged = result["metrics"]["merged"]
    assert merged["unparseable_rate"] == 0.0
    clean = sum(a["reference_labels"] == ["(none)"] for a in answers)
    assert 0 < clean < len(answers)  # both kinds of rows held out
    assert merged["label_accuracy"] == pytest.approx(clean / len(answers))
    # nothing added to the cache, no work folder left behind
    assert entries(cache) == before
    assert not list((cache / "tmp").glob("rescore-*"))


@pytest.mark.slow  # a merge with its parity checks, and the base model answering too
def test_an_adapter_is_merged_into_the_recipes_base(project, tiny_model_dir, tmp_path):
    recipe, cache = project
    adapter = random_adapter(tiny_model_dir, tmp_path / "checkpoint-2")
    proc = legalbuild_cli(
        cache, "eval", str(recipe), "--model", str(adapter), "--compare-base", "--max-rows", "4"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(adapter)" in proc.stdout and "merge" in proc.stdout
    assert "merged" in proc.stdout and "base" in proc.stdout  # the comparison table
    assert not list((cache / "tmp").glob("rescore-*"))


def test_the_merged_folder_and_the_table(project, other_recipe, tmp_path):
    """A merged model folder (here the other recipe's, named by path) prints the eval table."""
    recipe, cache = project
    folder = next((cache / "entries" / "merge").glob("*/out/model"))
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(merged)" in proc.stdout and "label accuracy" in proc.stdout.lower()


def test_what_is_refused_is_named_and_left_alone(project, other_recipe, tiny_model_dir, tmp_path):
    recipe, cache = project
    no_config = tmp_path / "empty"
    no_config.mkdir()
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(no_config))
    assert proc.returncode != 0 and "neither config.json" in proc.stderr
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(tmp_path / "nope"))
    assert proc.returncode != 0 and "no such file or folder" in proc.stderr

    (tmp_path / "unbuilt").mkdir()
    unbuilt = write_project(tmp_path / "unbuilt", tiny_model_dir, train="max_steps = 3")
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(unbuilt))
    assert proc.returncode == 5 and "not built" in proc.stderr and "legalbuild build" in proc.stderr

    model = next((cache / "entries" / "merge").glob("*/out/model"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(model), "--out", str(fifo))
    assert proc.returncode != 0 and "not a folder" in proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    out = tmp_path / "out"
    out.mkdir()
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    (out / "eval.json").symlink_to(mine)
    proc = legalbuild_cli(cache, "eval", str(recipe), "--model", str(model), "--out", str(out))
    assert proc.returncode != 0 and "symbolic link" in proc.stderr
    assert (out / "eval.json").is_symlink() and mine.read_text() == "{}"
    assert not (out / "answers.jsonl").exists()
