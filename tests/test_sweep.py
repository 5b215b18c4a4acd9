"""`legalbuild sweep` on the tests' tiny model, with real Optuna and real trial processes: bad
input refused before any trial; 2 parameters x 4 trials x --jobs 2 on one shared cache (base and
normalize built once, the report renders, `sweep apply` gives a recipe whose build is all cache
hits); Ctrl-C, a trial process killed (as by the out-of-memory killer), kill -9 of the sweep in
the middle of a trial, then the same command resumes with no duplicate trial and no orphan
process; two workers sharing one PostgreSQL study."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from helpers import REPO, chromium, processes_mentioning, render_in_chromium, write_project
from rich.console import Console

from legalbuild.errors import LegalbuildError, RecipeError
from legalbuild.recipe.loading import load_recipe
from legalbuild.sweep.apply import apply_trial
from legalbuild.sweep.runner import run_sweep
from legalbuild.sweep.spec import load_sweep

TRAIN = """max_steps = {steps}
eval_steps = {eval_steps}
logging_steps = 1
save_steps = 4
report_to = ["none"]
[train.samples]
count = 0"""
EVAL = """[data.split]
test_fraction = 0.2
[eval]
max_rows = 2
max_new_tokens = 4
engine = "transformers"
compare_base = false
"""
SWEEP = """recipe = "recipe.toml"
trials = {trials}
objective = "{objective}"
direction = "minimize"
{more}
[space]
"train.learning_rate" = {{ log = [1e-4, 1e-2] }}
{space}
[validation]
"eval.max_rows" = 2
"""


def project(
    folder: Path, model: Path, steps=4, trials=4, more="", space="", objective=None
) -> Path:
    """The tiny recipe (a test split, eval on 2 rows with transformers) and a sweep file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_project(folder, model, TRAIN.format(steps=steps, eval_steps=max(2, steps // 2)), EVAL)
    sweep = folder / "sweep.toml"
    objective = objective or "metrics.merged.val_loss"
    sweep.write_text(SWEEP.format(trials=trials, more=more, space=space, objective=objective))
    return sweep


def legalbuild(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "legalbuild", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw,
    )  # fmt: skip


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "legalbuild", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def trials_of(sweep: Path, storage: str | None = None) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is None:
        journal = sweep.with_name(f"{sweep.stem}-study") / "journal.log"
        storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=sweep.stem, storage=storage).trials


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def built(trials: list, stage: str) -> int:
    return sum(
        1 for t in trials if not (t.user_attrs.get("stages") or {}).get(stage, {}).get("hit", True)
    )


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_sweeps_pass_every_check(path):
    from legalbuild.sweep.checks import check_sweep

    sweep = load_sweep(path)
    assert check_sweep(sweep, None, 1) is None  # the journal file: one host
    assert sweep.study_dir == REPO / "sweeps" / f"{path.stem}-study"  # git ignores it


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"space": '"train.learnin_rate" = [0.1, 0.2]'}, '"train.learnin_rate": unknown recipe key'),
        ({"space": '"serve.port" = [8000, 8001]'}, '"serve.port" changes no stage key'),
        ({"space": '"train.logging_steps" = [1, 5]'}, '"train.logging_steps" changes no stage key'),
        ({"space": '"lora.r" = [0, 8]'}, '"lora.r" = 0 is refused'),
        ({"objective": "metrics.base.val_loss"}, 'objective "metrics.base.val_loss"'),
        ({"more": 'storage = "postgresql://u@h:port/db"'}, "storage 'postgresql://u@h:port/db'"),
        ({"more": 'storage = "sqlite:///s.db"'}, "SQLite is not safe"),
        ({"more": "[fixed]\n\"eval.max_rows\" = 3"}, '[fixed] "eval.max_rows"'),
    ],
)  # fmt: skip
def test_bad_sweeps_are_refused_before_any_trial(tmp_path, tiny_model_dir, edit, named):
    sweep_file = project(tmp_path, tiny_model_dir, **edit)
    out = io.StringIO()
    with pytest.raises(RecipeError) as caught:
        run_sweep(load_sweep(sweep_file), tmp_path / "cache", console=Console(file=out))
    assert named in caught.value.message
    assert not (tmp_path / "sweep-study").exists() and not (tmp_path / "cache").exists()


def test_bad_sweep_on_the_command_line_exits_2_naming_the_key(tmp_path, tiny_model_dir):
    sweep_file = project(tmp_path, tiny_model_dir, space='"lora.rank" = [4, 8]')
    result = legalbuild("sweep", str(sweep_file), "--cache-dir", "cache", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert '"lora.rank": unknown recipe key' in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_two_params_four_trials_two_jobs_share_the_cache(tmp_path, tiny_model_dir):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("--jobs 2 needs 2 cores")
    sweep_file = project(tmp_path, tiny_model_dir, space='"lora.r" = [4, 8]')
    run = legalbuild("sweep", "sweep.toml", "--jobs", "2", "--cache-dir", "cache", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = trials_of(sweep_file)
    states = [t.state.name for t in trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert states.count("COMPLETE") >= 2  # the median pruner prunes nothing before 2 complete
    # trials 0 and 1 started together: normalize and base were built once, then cache hits
    assert built(trials, "normalize") == 1 and built(trials, "base") == 1
    hits = [t.user_attrs["stages"]["base"]["hit"] for t in trials]
    assert hits.count(True) == 3
    assert len(list((tmp_path / "cache/entries/base").iterdir())) == 1
    assert (
        trials[0].params["lora.r"] == 8 and trials[0].user_attrs["baseline"]
    )  # the recipe's values
    assert any(t.intermediate_values for t in trials)  # validation losses reached the pruner

    report = legalbuild("sweep", "report", "sweep.toml", "--json", cwd=tmp_path)
    summary = json.loads(report.stdout)
    assert summary["counts"].get("COMPLETE", 0) + summary["counts"].get("PRUNED", 0) == 4
    assert summary["cache"]["hits"]["base"] == 3 and summary["test"]["split"] == "test"
    html = tmp_path / "sweep-study/report/sweep.html"
    assert "data:image/png;base64" in html.read_text() and "http" not in html.read_text()
    if (browser := chromium()) is not None:
        shot = tmp_path / "shot.png"
        assert render_in_chromium(browser, html, shot, tmp_path / "profile") == []
        assert shot.stat().st_size > 10_000

    recipe_text = (tmp_path / "recipe.toml").read_text()
    applied = legalbuild("sweep", "apply", "sweep.toml", "--cache-dir", "cache", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    best = summary["best"]["trial"]
    copy = tmp_path / f"recipe.trial-{best}.toml"
    assert "cache hit of the trial: train, merge" in applied.stdout
    assert "cpu_threads = " in copy.read_text()  # the threads the trial trained with (its key)
    plan = legalbuild("plan", copy.name, "--cache-dir", "cache", "--json", cwd=tmp_path)
    stages = {s["stage"]: s for s in json.loads(plan.stdout)["stages"]}
    assert all(s["cached"] for s in stages.values()), stages  # eval too: the winner's test build
    assert stages["train"]["key"] == trials[best].user_attrs["stages"]["train"]["key"]
    assert (tmp_path / "recipe.toml").read_text() == recipe_text  # a copy: the recipe is untouched
    again = legalbuild("sweep", "apply", "sweep.toml", cwd=tmp_path)
    assert again.returncode == 1 and "never overwrites" in again.stderr


# ----------------------------------------------------------------------- stop, kill, resume
@pytest.mark.slow
def test_ctrl_c_a_killed_trial_and_kill_9_then_the_same_command_resumes(tmp_path, tiny_model_dir):
    sweep_file = project(tmp_path, tiny_model_dir, steps=8, trials=2, more="test = false")
    command = ("sweep", "sweep.toml", "--cache-dir", "cache")
    logs = tmp_path / "sweep-study/trials"

    def training(number: int) -> bool:  # a re-run resumes from a checkpoint: any step counts
        log = logs / f"{number:04d}/build.log"
        return log.exists() and re.search(r"train +step \d+/8 +loss", log.read_text())

    first = start(*command, cwd=tmp_path)
    wait_for(lambda: training(0), 300, "trial 0 to train")
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(60) == 130, first.stdout.read()
    assert processes_mentioning(str(tmp_path)) == []
    trials = trials_of(sweep_file)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # consistent: nothing RUNNING
    assert trials[1].params == trials[0].params

    second = start(*command, cwd=tmp_path)
    wait_for(lambda: training(1), 300, "trial 1 (the re-run) to train")
    trial_process = processes_mentioning(str(logs / "0001/spec.json"))[0].split(":")[0]
    os.kill(int(trial_process), signal.SIGKILL)  # what the out-of-memory killer does
    wait_for(lambda: training(2), 300, "trial 2 (its values again) to train")
    os.kill(second.pid, signal.SIGKILL)  # kill -9 of the sweep itself
    second.wait(10)
    wait_for(lambda: processes_mentioning(str(tmp_path)) == [], 60, "the trial process to stop")
    trials = trials_of(sweep_file)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "RUNNING"]  # as the sweep left it
    assert "killed by SIGKILL" in trials[1].user_attrs["note"]

    third = legalbuild(*command, cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "trials [2] were interrupted" in third.stdout
    trials = trials_of(sweep_file)
    states = [t.state.name for t in trials]
    assert states == ["FAIL", "FAIL", "FAIL", "COMPLETE", "COMPLETE"], states
    assert trials[3].params == trials[0].params  # the interrupted values ran again, once
    assert trials[3].system_attrs["retry_history"] == [0, 1, 2]
    assert processes_mentioning(str(tmp_path)) == []


# ---------------------------------------------------------------------------- PostgreSQL
@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, tiny_model_dir, postgres_url):
    sweep_file = project(tmp_path, tiny_model_dir, trials=2, more="test = false")
    command = ("sweep", "sweep.toml", "--worker", "--storage", postgres_url, "--cache-dir", "cache")
    workers = [start(*command, cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        assert worker.wait(600) == 0, worker.stdout.read()
    trials = trials_of(sweep_file, postgres_url)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["owner"]["pid"] for t in trials} == {w.pid for w in workers}
    assert built(trials, "base") == 1  # one built it, the other waited for it: a cache hit


# ------------------------------------------------------------------------- apply and overrides
def _finished_study(sweep_file: Path, values: dict) -> None:
    """A study holding one complete trial with these values (what a sweep leaves behind)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from legalbuild.sweep.study import claim_study_dir

    sweep = load_sweep(sweep_file)
    claim_study_dir(sweep)
    storage = JournalStorage(JournalFileBackend(str(sweep.study_dir / "journal.log")))
    study = optuna.create_study(study_name=sweep.study_name, storage=storage)
    distributions = {p.key: p.distribution() for p in sweep.params}
    study.add_trial(optuna.create_trial(params=values, distributions=distributions, value=1.0))


def test_apply_in_place_keeps_a_backup_and_the_comments(tmp_path, tiny_model_dir):
    sweep_file = project(tmp_path, tiny_model_dir, space='"lora.r" = [4, 8]')
    sweep_file.write_text(sweep_file.read_text() + '[fixed]\n"train.seed" = 7\n')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("# my notes\n" + recipe.read_text())
    original = recipe.read_text()
    _finished_study(sweep_file, {"train.learning_rate": 0.002, "lora.r": 4})

    applied = apply_trial(load_sweep(sweep_file), 0, in_place=True, cache_dir=tmp_path / "c")
    backup = tmp_path / "recipe.toml.before-trial-0"
    assert applied.path == recipe and applied.backup == backup
    assert backup.read_text() == original
    text = recipe.read_text()
    assert "# my notes" in text and "learning_rate = 0.002" in text and "seed = 7" in text
    assert load_recipe(recipe).lora.r == 4
    assert (
        "split" not in tomllib.loads(text)["eval"]
    )  # the trials' validation scoring is not written
    with pytest.raises(LegalbuildError, match="never overwrites a backup"):
        apply_trial(load_sweep(sweep_file), 0, in_place=True)
    with pytest.raises(RecipeError, match="relative paths resolve beside it"):
        apply_trial(load_sweep(sweep_file), 0, out=tmp_path / "elsewhere" / "r.toml")
    with pytest.raises(LegalbuildError, match="no trial 5"):
        apply_trial(load_sweep(sweep_file), 5)


def test_a_key_into_a_dict_keeps_its_other_entries(tmp_path, tiny_model_dir):
    from legalbuild.sweep.overrides import recipe_with

    recipe = write_project(
        tmp_path, tiny_model_dir, more='[curate]\n[[curate.corpora]]\nkind = "nda_review"\n'
    )
    base = load_recipe(recipe)
    text, changed = recipe_with(recipe.read_text(), base, {"curate.task_mix.audit": 0.9}, "t")
    assert changed.curate.task_mix == {**base.curate.task_mix, "audit": 0.9}
    assert "[[data.sources]]" in text  # the rest of the recipe as it was
