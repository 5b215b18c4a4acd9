"""The sweep file: a base recipe, a search space over its dotted keys, the objective, and how the
trials run. Strict like a recipe (unknown keys refused, errors name the key and the value).

    recipe = "legal-audit-smollm2.toml"        # the base recipe, relative to this file
    trials = 8
    objective = "metrics.merged.macro_f1"      # a path into each trial's eval.json (validation)
    direction = "maximize"
    [space]
    "train.learning_rate" = { log = [3e-4, 3e-3] }
    "train.weight_decay" = [0.0, 0.01, 0.1]
    "lora.r" = [8, 16, 32]
    [fixed]            # set in every trial and written by `sweep apply` (what the trials train)
    "train.samples.count" = 0
    [validation]       # [eval] keys of the trials' scoring on the validation split
    "eval.max_rows" = 32
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from legalbuild.errors import DataError, RecipeError
from legalbuild.files import decode_utf8, display_path, read_regular_bytes
from legalbuild.recipe import PathText, Recipe, Strict
from legalbuild.recipe.loading import find_key_line, load_recipe

Scalar = bool | int | float | str


class PrunerSettings(Strict):
    kind: Literal["median", "halving", "none"] = Field(
        "median",
        description="`median`: stop a trial whose validation loss at a step is worse than the "
        "median of the other trials at that step; `halving`: successive halving; `none`.",
    )
    startup_trials: int = Field(
        2, ge=0, description="Trials that must finish before any trial is pruned (median)."
    )
    warmup_steps: int = Field(
        0, ge=0, description="Training steps of a trial before it may be pruned (median)."
    )


class SweepFile(Strict):
    recipe: PathText = Field(description="The base recipe, relative to the sweep file.")
    study: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Name of the Optuna study (default: the sweep file's name).",
    )
    trials: int = Field(8, ge=1, le=10_000, description="Trials to finish (complete or pruned).")
    jobs: int = Field(
        1, ge=1, description="Trials run at once on this host (the CPU threads are divided)."
    )
    budget_minutes: float | None = Field(
        None,
        gt=0,
        description="No trial starts after this many minutes of this run (running ones finish).",
    )
    objective: str = Field(
        "metrics.merged.macro_f1",
        min_length=1,
        description="A dotted path into each trial's eval.json, scored on the validation split, "
        "e.g. metrics.merged.label_accuracy, metrics.merged.val_loss, headline.merged_macro_f1.",
    )
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Of the objective.")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna sampler (`grid` needs every [space] entry to be a list)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the sampler.")
    baseline: bool = Field(
        True,
        description="The first trial uses the base recipe's own values (where they lie in the "
        "space): the sweep then says whether the recipe's values move.",
    )
    test: bool = Field(
        True,
        description="After the last trial, build the winner with the base recipe's own [eval] "
        "(the test split): scored once, for the winner, never used to choose.",
    )
    storage: str | None = Field(
        None,
        description="postgresql://user@host:port/db for workers on several hosts (--storage "
        "overrides it); absent: a journal file in the study folder (one host).",
    )
    pruner: PrunerSettings = Field(
        default_factory=PrunerSettings,
        description="Pruning on the validation loss the train stage reports every eval_steps.",
    )
    space: dict[str, list[Scalar] | dict[str, Any]] = Field(
        description="Searched settings: a list of values, {log = [low, high]} or "
        "{range = [low, high], step = s} (integers when both ends are)."
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of every trial (not [eval]): what the trials train, written by "
        "`sweep apply` with the trial's values.",
    )
    validation: dict[str, Any] = Field(
        default_factory=dict,
        description="[eval] settings of the trials' scoring on the validation split "
        "(e.g. eval.max_rows, eval.compare_base = false); eval.split is always val.",
    )


@dataclass(frozen=True)
class Param:
    """One searched setting: a list of choices, or a range (log-scaled, stepped, integer)."""

    key: str
    choices: tuple[Scalar, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    @property
    def probes(self) -> list[Scalar]:
        """Values that span the parameter: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return any(type(value) is type(c) and value == c for c in self.choices)
        return isinstance(value, int | float) and self.low <= value <= self.high

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.integer:
            step = int(self.step or 1)
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


def parse_param(key: str, raw: list[Any] | dict[str, Any]) -> Param:
    where = f'[space] "{key}"'
    if isinstance(raw, list):
        if not raw or len(set(map(repr, raw))) != len(raw):
            raise RecipeError(f"{where}: give at least one value, each once (got {raw!r})")
        return Param(key, choices=tuple(raw))
    kinds = set(raw) & {"log", "range"}
    if len(kinds) != 1 or set(raw) - {"log", "range", "step"}:
        raise RecipeError(
            f"{where}: a range is {{log = [low, high]}} or {{range = [low, high], step = s}} "
            f"(got {raw!r})"
        )
    kind = kinds.pop()
    ends, step = raw[kind], raw.get("step")
    numbers = (int, float)
    if (
        not isinstance(ends, list)
        or len(ends) != 2
        or not all(isinstance(v, numbers) and not isinstance(v, bool) for v in ends)
        or not all(math.isfinite(v) for v in ends)
        or not ends[0] < ends[1]
    ):
        raise RecipeError(f"{where}: {kind} takes two finite numbers, low < high (got {ends!r})")
    if kind == "log" and (ends[0] <= 0 or step is not None):
        raise RecipeError(f"{where}: a log range needs low > 0 and no step (got {raw!r})")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers) or step <= 0):
        raise RecipeError(f"{where}: step must be a number above 0 (got {step!r})")
    integer = all(type(v) is int for v in ends) and (step is None or type(step) is int)
    return Param(key, low=ends[0], high=ends[1], log=kind == "log", step=step, integer=integer)


@dataclass
class Sweep:
    """A read sweep file: its settings, its parameters and its base recipe."""

    path: Path
    settings: SweepFile
    params: list[Param]
    recipe_path: Path
    recipe_text: str
    recipe: Recipe

    @property
    def study_name(self) -> str:
        return self.settings.study or self.path.stem

    def trial_overrides(self, values: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
        """What a trial sets in the base recipe: [fixed], its values, its CPU threads, and its
        validation scoring."""
        applied = self.applied_overrides(values, threads)
        return {**applied, **self.settings.validation, "eval.split": "val"}

    def applied_overrides(
        self, values: dict[str, Any], threads: int | None = None
    ) -> dict[str, Any]:
        """What `sweep apply` and the winner's test build set: [fixed], the trial's values, and
        `train.cpu_threads = threads`, the CPU threads the trial trained with (a CPU training's
        bytes, so its train key, depend on them; --jobs divides the cores), unless [fixed] or the
        space names that key."""
        named = THREADS_KEY in self.settings.fixed or THREADS_KEY in values
        pinned = {} if threads is None or named else {THREADS_KEY: threads}
        return {**self.settings.fixed, **pinned, **values}

    @property
    def study_dir(self) -> Path:
        """Journal, trial folders, the winner's build and the report: beside the sweep file."""
        return self.path.with_name(f"{self.path.stem}-study")


THREADS_KEY = "train.cpu_threads"


def load_sweep(path: str | Path) -> Sweep:
    """Read the sweep file and its base recipe; RecipeError (exit 2) names the file, key and value."""
    path = Path(path).resolve()
    shown = display_path(path)
    try:
        text = decode_utf8(read_regular_bytes(path), shown, RecipeError, what="sweep file")
        raw = tomllib.loads(text)
    except DataError as exc:
        raise RecipeError(exc.message, hint=exc.hint) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{shown}: not valid TOML: {exc}") from None
    try:
        settings = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_sweep_errors(shown, text, exc), hint=SCHEMA_HINT) from None
    params = [parse_param(key, value) for key, value in settings.space.items()]
    if not params:
        raise RecipeError(f"{shown}: [space] is empty", hint="name at least one setting to search")
    recipe_path = (path.parent / settings.recipe).resolve()
    recipe = load_recipe(recipe_path)  # its own errors name it; once it loads, its text decodes
    recipe_text = decode_utf8(read_regular_bytes(recipe_path), str(recipe_path), RecipeError)
    return Sweep(path, settings, params, recipe_path, recipe_text, recipe)


SCHEMA_HINT = "the sweep file's keys are documented in legalbuild/sweep/spec.py and the README"


def _sweep_errors(shown: str, text: str, exc: ValidationError) -> str:
    lines = [f"{shown}: {exc.error_count()} problem(s) in the sweep file"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        line = find_key_line(text, loc)
        where = f"{shown}:{line}" if line else shown
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.200})"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: [{'.'.join(loc)}] {msg}{got}")
    return "\n".join(lines)
