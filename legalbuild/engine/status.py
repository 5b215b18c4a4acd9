"""What `plan` and `status` report, as data: each stage's key, whether it is cached and locked,
its output folder, why it would be built, and its headline metrics. The CLI prints it as a table
or, with `--json`, as JSON (`as_json`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from legalbuild.engine.lock import read_lock
from legalbuild.engine.pipeline import StagePlan, lock_mismatch, plan

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded
    from legalbuild.errors import LockMismatchError


@dataclass
class StageState:
    stage: str
    key: str
    cached: bool  # in the cache, and not forced
    locked: bool  # the lock records this very key
    locked_key: str | None
    output: str | None  # the entry's output folder, when it is in the cache
    reasons: list[str] = field(default_factory=list)  # why it would be built
    built: str | None = None  # when (local time)
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the scalar metrics of its manifest


def stage_states(
    loaded: Loaded, store: Store, until: str | None = None, force: Iterable[str] = ()
) -> list[StageState]:
    return states_of(loaded, store, plan(loaded, store, until, force))


def locked_states(
    loaded: Loaded, store: Store, until: str | None = None, force: Iterable[str] = ()
) -> tuple[list[StageState], LockMismatchError | None]:
    """`plan --locked`: every stage's state, and the error naming each stage whose key differs
    from the lock beside the recipe (None when all match). Nothing is built or imported."""
    lock = read_lock(loaded.recipe_path)
    plans = plan(loaded, store, until, force, lock)
    return states_of(loaded, store, plans), lock_mismatch(loaded, plans, lock)


def states_of(loaded: Loaded, store: Store, plans: list[StagePlan]) -> list[StageState]:
    states = []
    for p in plans:
        output = loaded.output(store, p.name)
        manifest = store.manifest(p.name, p.key) if output is not None else None
        timings = (manifest or {}).get("timings", {})
        states.append(
            StageState(
                stage=p.name,
                key=p.key,
                cached=p.cached,
                locked=p.locked_key == p.key,
                locked_key=p.locked_key,
                output=str(output) if manifest is not None else None,
                reasons=p.reasons,
                built=timings.get("started"),
                seconds=timings.get("seconds"),
                metrics=headline_metrics((manifest or {}).get("metrics", {})),
            )
        )
    return states


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics (numbers, strings, flags); tables and lists stay in the manifest."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


def as_json(loaded: Loaded, store: Store, states: list[StageState]) -> dict[str, Any]:
    return {
        "recipe": str(loaded.recipe_path),
        "cache": str(store.root),
        "stages": [asdict(s) for s in states],
    }
