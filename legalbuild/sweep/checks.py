"""Every refusal of a sweep, made before any trial runs: keys the recipe does not have, values it
refuses, a searched key that changes no stage key, an objective eval.json does not hold, a storage
URL that is not PostgreSQL, more jobs than cores. Each error names the key or value."""

from __future__ import annotations

import os
import re
from typing import Any

from legalbuild.engine.graph import build_graph
from legalbuild.errors import RecipeError
from legalbuild.recipe import Recipe
from legalbuild.sweep.overrides import recipe_with, resolve_key
from legalbuild.sweep.spec import Sweep


def check_sweep(sweep: Sweep, storage: str | None, jobs: int) -> str | None:
    """Check the sweep; returns the storage URL to open (None: the journal file)."""
    _check_tables(sweep)
    _, plain = _trial(sweep, {}, "[fixed] and [validation]")
    for param in sweep.params:
        keys = []
        for value in param.probes:
            _, recipe = _trial(sweep, {param.key: value}, f'[space] "{param.key}" = {value!r}')
            keys.append(_keys(sweep, recipe))
        if len(param.probes) == 1:
            raise RecipeError(
                f'{sweep.path.name}: [space] "{param.key}" has one value: nothing to search',
                hint=f'set it in [fixed]: "{param.key}" = {param.probes[0]!r}',
            )
        if all(k == keys[0] for k in keys):
            raise RecipeError(
                f'{sweep.path.name}: [space] "{param.key}" changes no stage key between its values '
                f"{param.probes!r}: every trial would be the same build",
                hint="search a setting that changes what is built (not serving, logging or "
                "tracking options); `legalbuild plan` shows which settings a stage's key covers",
            )
    check_objective(sweep.settings.objective, plain, sweep.path.name)
    if sweep.settings.sampler == "grid" and any(p.choices is None for p in sweep.params):
        ranges = ", ".join(p.key for p in sweep.params if p.choices is None)
        raise RecipeError(
            f"{sweep.path.name}: sampler grid needs a list of values for every key; {ranges} "
            "is a range",
            hint="give those keys lists, or use sampler = tpe",
        )
    check_jobs(jobs)
    return storage_url(storage if storage is not None else sweep.settings.storage)


def _check_tables(sweep: Sweep) -> None:
    s, name = sweep.settings, sweep.path.name
    for table, keys in (("space", s.space), ("fixed", s.fixed), ("validation", s.validation)):
        for key in keys:
            path = resolve_key(key, f"{name}: [{table}]")
            is_eval = path.section == "eval"
            if table == "validation" and not is_eval:
                raise RecipeError(
                    f'{name}: [validation] "{key}": only [eval] settings score a trial',
                    hint="settings that change what is trained go in [fixed] or [space]",
                )
            if table != "validation" and is_eval:
                raise RecipeError(
                    f'{name}: [{table}] "{key}": [eval] settings go in [validation] (how trials '
                    "are scored on the validation split), never in what is searched or trained",
                    hint=f'move it: [validation] "{key}" = ...',
                )
    if "eval.split" in s.validation and s.validation["eval.split"] != "val":
        raise RecipeError(
            f'{name}: [validation] "eval.split" = {s.validation["eval.split"]!r}: trials are '
            "scored on the validation split; the test split is scored once, for the winner",
            hint='drop the key (trials always use "val")',
        )
    if twice := sorted(set(s.space) & (set(s.fixed) | set(s.validation))):
        raise RecipeError(f"{name}: {', '.join(twice)}: both searched and fixed; keep one")
    if sweep.recipe.eval.enabled is False and s.validation.get("eval.enabled") is not True:
        raise RecipeError(
            f"{name}: the base recipe has [eval] enabled = false: trials have nothing to score",
            hint='set [validation] "eval.enabled" = true',
        )


def _trial(sweep: Sweep, values: dict[str, Any], where: str) -> tuple[str, Recipe]:
    try:
        return recipe_with(
            sweep.recipe_text,
            sweep.recipe,
            sweep.trial_overrides(values),
            f"{sweep.recipe_path.name} with {where}",
        )
    except RecipeError as exc:
        raise RecipeError(
            f"{sweep.path.name}: {where} is refused by the recipe:\n{exc.message}"
        ) from None


def _keys(sweep: Sweep, recipe: Recipe) -> dict[str, str]:
    return {name: node.key for name, node in build_graph(recipe, sweep.recipe_path).items()}


# -------------------------------------------------------------------------------- objective
def eval_skeleton(recipe: Recipe) -> dict[str, Any]:
    """eval.json as the eval stage would write it for this recipe, with no rows: every key there."""
    from legalbuild.evaluation.scoring import summarise

    models = ["merged"]
    if recipe.eval.compare_base:
        models.append("base")
    if recipe.eval.constrained:
        models.append("merged+constrained")
    if recipe.curate is not None:
        models.append("regex")
    empty: dict[str, list] = {m: [] for m in models}
    return summarise([], empty, engine="", available=0, baseline_note="", split="val")


def objective_value(eval_json: dict[str, Any], path: str) -> Any:
    found: Any = eval_json
    for part in path.split("."):
        if not isinstance(found, dict) or part not in found:
            raise KeyError(part)
        found = found[part]
    return found


def check_objective(objective: str, recipe: Recipe, name: str) -> None:
    skeleton = eval_skeleton(recipe)
    try:
        value = objective_value(skeleton, objective)
    except KeyError as missing:
        known = [f"metrics.merged.{k}" for k in skeleton["metrics"]["merged"] if k != "intervals"]
        raise RecipeError(
            f'{name}: objective "{objective}": eval.json has no {missing} there (the trials '
            f"score {', '.join(skeleton['models'])})",
            hint=f"e.g. {', '.join(known[:6])}; or headline.<key>",
        ) from None
    if isinstance(value, dict | list | str | bool):
        raise RecipeError(f'{name}: objective "{objective}" is not a number in eval.json')


# ---------------------------------------------------------------------------------- storage
def storage_url(raw: str | None) -> str | None:
    """None (the journal file) or a PostgreSQL URL for SQLAlchemy with psycopg 3."""
    if raw is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = hide_password(raw)
    hint = "give postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or leave it out for the journal file"
    try:
        url = make_url(raw)
        url.port  # noqa: B018  (a port that is not a number raises here)
    except (ArgumentError, ValueError) as exc:
        raise RecipeError(f"storage {shown!r}: not a database URL ({exc})", hint=hint) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        raise RecipeError(
            f"storage {shown!r}: SQLite is not safe for parallel trials (optuna #820)",
            hint="leave --storage out (a journal file, one host) or use PostgreSQL (several hosts)",
        )
    if backend != "postgresql":
        raise RecipeError(f"storage {shown!r}: only PostgreSQL is supported", hint=hint)
    if not url.database or not (url.host or url.query.get("host")):
        raise RecipeError(f"storage {shown!r}: name the host and the database", hint=hint)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # SQLAlchemy's default is psycopg2
    return url.render_as_string(hide_password=False)


def hide_password(url: str) -> str:
    """The URL as errors may print it: its password as ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


# ------------------------------------------------------------------------------------- jobs
def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_jobs(jobs: int) -> None:
    cores = usable_cores()
    if jobs > cores:
        raise RecipeError(
            f"--jobs {jobs}: this host has {cores} core(s); {jobs} trials at once would "
            "oversubscribe them",
            hint=f"use --jobs {cores} or fewer here, or run workers on more hosts (--storage)",
        )


def threads_per_job(jobs: int) -> int:
    return max(1, usable_cores() // jobs)
