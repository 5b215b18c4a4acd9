"""`legalbuild sweep apply`: a trial's values written into the recipe, like `dvc exp apply`.

The recipe's own text is edited (comments and layout stay) with the trial's values and the sweep's
[fixed] settings, never its validation scoring. By default a copy is written beside the recipe
(`<name>.trial-<N>.toml`: relative paths keep working there); `--in-place` edits the recipe after
copying it to `<name>.toml.before-trial-<N>`. Nothing existing is ever overwritten: an existing
copy or backup is refused. Its build is then a cache hit of the trial's train and merge (and, for
the winner, of the test build the sweep made)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legalbuild.engine.cache import Store
from legalbuild.engine.graph import build_graph
from legalbuild.errors import LegalbuildError, RecipeError
from legalbuild.files import check_output_file, display_path, write_replacing
from legalbuild.sweep.overrides import recipe_with
from legalbuild.sweep.spec import Sweep
from legalbuild.sweep.study import CPU_THREADS, load_study


@dataclass
class Applied:
    trial: int
    values: dict[str, Any]
    path: Path
    backup: Path | None
    same_keys: list[str]  # stages whose key equals the trial's (its build is a cache hit there)
    changed_keys: list[str]  # stages whose key differs (the recipe or legalbuild changed since)


def chosen_trial(study: Any, number: int | None) -> Any:
    """Trial `number` (default: the best one); it must have completed."""
    from optuna.trial import TrialState

    if number is None:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise LegalbuildError("no trial has completed yet", hint="run the sweep first")
        return study.best_trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise LegalbuildError(
            f"no trial {number} in study {study.study_name!r}",
            hint=f"trials: 0..{max(trials)}" if trials else "run the sweep first",
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise LegalbuildError(
            f"trial {number} is {trial.state.name.lower()}, not complete: it has no model to reuse",
            hint="apply a complete trial (`legalbuild sweep report` lists them)",
        )
    return trial


def apply_trial(
    sweep: Sweep,
    number: int | None,
    *,
    in_place: bool = False,
    out: Path | None = None,
    storage: str | None = None,
    cache_dir: Path | None = None,
) -> Applied:
    from legalbuild.sweep.checks import storage_url

    trial = chosen_trial(load_study(sweep, storage_url(storage or sweep.settings.storage)), number)
    values = {p.key: trial.params[p.key] for p in sweep.params}
    overrides = sweep.applied_overrides(values, trial.user_attrs.get(CPU_THREADS))
    text, recipe = recipe_with(sweep.recipe_text, sweep.recipe, overrides, f"trial {trial.number}")
    header = (
        f"# values of trial {trial.number} of sweep {sweep.study_name} (legalbuild sweep apply)\n"
    )
    path, backup = _write(sweep, trial.number, header + text, in_place, out)
    Store.open(cache_dir)  # its digest memos make the keys cheap
    keys = {n: node.key for n, node in build_graph(recipe, sweep.recipe_path).items()}
    stages = trial.user_attrs.get("stages") or {}
    compared = [s for s in ("train", "merge") if s in stages]
    same = [s for s in compared if stages[s]["key"] == keys.get(s)]
    return Applied(trial.number, values, path, backup, same, [s for s in compared if s not in same])


def _write(
    sweep: Sweep, number: int, text: str, in_place: bool, out: Path | None
) -> tuple[Path, Path | None]:
    recipe = sweep.recipe_path
    if in_place:
        if out is not None:
            raise LegalbuildError("--in-place and --out: choose one")
        backup = recipe.with_name(f"{recipe.name}.before-trial-{number}")
        _refuse_existing(backup, "backup")
        shutil.copy2(recipe, backup)
        write_replacing(recipe, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return recipe, backup
    dest = (out or recipe.with_name(f"{recipe.stem}.trial-{number}.toml")).resolve()
    if dest.parent != recipe.parent:
        raise RecipeError(
            f"--out {display_path(dest)}: the recipe's relative paths resolve beside it, so the "
            f"copy goes in its folder ({display_path(recipe.parent)})",
            hint="give a file name in that folder, or copy the result and fix its paths yourself",
        )
    _refuse_existing(dest, "file")
    check_output_file(dest, [recipe])
    write_replacing(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return dest, None


def _refuse_existing(path: Path, what: str) -> None:
    if path.exists() or path.is_symlink():
        raise LegalbuildError(
            f"{display_path(path)} exists: sweep apply never overwrites a {what}",
            hint="move it away first, or give another --out",
        )
