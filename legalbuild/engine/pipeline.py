"""Plan and build a recipe: walk the stage graph, reuse cached entries, build the rest atomically.

The CLI is a thin layer over the functions here (`plan`, `build`, `locate_output`, `verify`, ...).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild.engine.cache import Store, entry_manifest
from legalbuild.engine.context import StageContext, VerifiedInputs
from legalbuild.engine.graph import StageNode, build_graph, downstream_of
from legalbuild.engine.lock import (
    lock_path,
    locked_stage,
    read_lock,
    record_stage,
    write_lock,
)
from legalbuild.engine.reasons import numerics_note, rebuild_reasons
from legalbuild.errors import (
    LegalbuildError,
    LockFileError,
    LockMismatchError,
    NotBuiltError,
    StageFailedError,
)
from legalbuild.recipe import Recipe
from legalbuild.recipe.loading import load_recipe


@dataclass
class StagePlan:
    name: str
    key: str
    cached: bool
    locked_key: str | None
    reasons: list[str] = field(default_factory=list)
    forced: bool = False  # --force named it or a stage it reads


@dataclass
class Loaded:
    """A recipe with its graph: what every command starts from."""

    recipe: Recipe
    recipe_path: Path
    nodes: dict[str, StageNode]

    @classmethod
    def from_path(cls, recipe_path: str | Path) -> Loaded:
        path = Path(recipe_path).resolve()
        recipe = load_recipe(path)
        return cls(recipe, path, build_graph(recipe, path))

    def output(self, store: Store, stage: str) -> Path | None:
        """The cached output folder of the stage's current key; None when the recipe has no such
        stage or it is not built. The one answer to "is this stage built"."""
        node = self.nodes.get(stage)
        if node is None or not store.has(stage, node.key):
            return None
        return store.out_dir(stage, node.key)

    def select(self, until: str | None) -> list[str]:
        names = list(self.nodes)
        if until is None:
            return names
        if until not in self.nodes:
            raise LegalbuildError(
                f"unknown stage {until!r}", hint=f"this recipe's stages: {', '.join(names)}"
            )
        return names[: names.index(until) + 1]


# ------------------------------------------------------------------------------------ plan
def plan(
    loaded: Loaded,
    store: Store,
    until: str | None = None,
    force: Iterable[str] = (),
    lock: dict[str, Any] | None = None,
) -> list[StagePlan]:
    """Each stage as cached or to-build, and why (compared with the lock file, read from beside
    the recipe unless given)."""
    lock = read_lock(loaded.recipe_path) if lock is None else lock
    forced = _forced(loaded, force)
    plans = []
    for name in loaded.select(until):
        node = loaded.nodes[name]
        locked = locked_stage(lock, name)
        cached = store.has(name, node.key) and name not in forced
        reasons = rebuild_reasons(node, locked, cached, name in forced, store)
        plans.append(
            StagePlan(name, node.key, cached, locked and locked["key"], reasons, name in forced)
        )
    return plans


def _forced(loaded: Loaded, force: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for stage in force:
        if stage not in loaded.nodes:
            raise LegalbuildError(
                f"--force {stage!r}: no such stage", hint=f"stages: {', '.join(loaded.nodes)}"
            )
        out.update(downstream_of(loaded.nodes, stage))
    return out


# ----------------------------------------------------------------------------------- build
@dataclass
class BuildResult:
    stages: list[StagePlan]
    built: list[str]
    outputs: dict[str, Path]
    seconds: dict[str, float]


def build(
    loaded: Loaded,
    store: Store,
    *,
    until: str | None = None,
    force: Iterable[str] = (),
    locked: bool = False,
    log: Callable[[str], None] = print,
    console: Any = None,
) -> BuildResult:
    """Build every stage up to `until` that is not cached. `locked`: refuse keys the lock does not
    have. Without it, the lock records every stage built or found (an unreadable lock is replaced)."""
    lock = _lock_for_build(loaded, locked, log)
    plans = plan(loaded, store, until, force, lock)
    if locked and (mismatch := lock_mismatch(loaded, plans, lock)):
        raise mismatch
    store.claim()  # refuses a folder that is not a legalbuild cache before anything is written
    if stale := store.clean_tmp():
        log(f"removed {len(stale)} temp folder(s) left by builds that were killed")
    built, seconds, outputs = [], {}, {}
    for p in plans:
        node = loaded.nodes[p.name]
        if p.cached:
            log(f"{p.name:<10} cached    {p.key[:12]}")
        else:
            log(f"{p.name:<10} building  {p.key[:12]}  ({'; '.join(p.reasons) or 'not cached'})")
            elapsed = _build_stage(loaded, store, node, force=p.forced, log=log, console=console)
            if elapsed is not None:
                seconds[p.name] = elapsed
                built.append(p.name)
                log(f"{p.name:<10} done      {p.key[:12]}  in {elapsed:.1f} s")
        outputs[p.name] = store.out_dir(p.name, node.key)
        produced = (store.manifest(p.name, node.key) or {}).get("outputs", {})
        previous = locked_stage(lock, p.name) or {}
        if (
            previous.get("key") == node.key
            and produced
            and previous.get("outputs", produced) != produced
        ):
            log(numerics_note(p.name, previous["outputs"], produced))
            produced = previous["outputs"]  # the committed lock keeps the digests it has
        if not locked:
            record_stage(lock, p.name, node.key, node.inputs, produced)
            write_lock(loaded.recipe_path, lock)
    if not locked and until is None and set(lock.get("stages", {})) - set(loaded.nodes):
        lock["stages"] = {k: v for k, v in lock["stages"].items() if k in loaded.nodes}
        write_lock(loaded.recipe_path, lock)
    return BuildResult(plans, built, outputs, seconds)


def _lock_for_build(loaded: Loaded, locked: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The lock a build starts from. Without --locked an unreadable lock (not a folder) is only
    a warning: this build writes a new one."""
    try:
        return read_lock(loaded.recipe_path)
    except LockFileError as exc:
        if locked or lock_path(loaded.recipe_path).is_dir():
            raise
        log(f"warning: {exc.message}; this build writes a new one")
        return {}


def lock_mismatch(
    loaded: Loaded, plans: list[StagePlan], lock: dict[str, Any]
) -> LockMismatchError | None:
    """What `--locked` refuses (`build --locked`, `plan --locked`): no lock beside the recipe, or
    the stages whose key differs from it, each with why (`reasons.rebuild_reasons`). None when
    every stage's key is the locked one."""
    if not lock:
        return LockMismatchError(
            f"--locked: no lock file beside {loaded.recipe_path.name}",
            hint="run `legalbuild build` once without --locked and commit the lock",
        )
    bad = [p for p in plans if p.locked_key != p.key]
    if not bad:
        return None
    lines = []
    for p in bad:
        keys = (
            f"lock {p.locked_key[:12]} != recipe {p.key[:12]}"
            if p.locked_key
            else "not in the lock"
        )
        lines.append(f"  {p.name}: {keys} ({'; '.join(p.reasons)})")
    return LockMismatchError(
        "--locked: the recipe no longer matches its lock file:\n" + "\n".join(lines),
        hint="build without --locked to update the lock, or restore the recipe, data or "
        "libraries the lock was made from (`bash scripts/setup.sh` installs the pinned ones)",
    )


def _build_stage(
    loaded: Loaded,
    store: Store,
    node: StageNode,
    *,
    force: bool,
    log: Callable[[str], None],
    console: Any,
) -> float | None:
    """Run one stage into a temp folder and commit it; one builder per key at a time.
    Returns the seconds it took, or None when another process built it meanwhile."""
    with store.lock(node.name, node.key):
        if store.has(node.name, node.key) and not force:
            log(f"{node.name:<10} built meanwhile by another process: cache hit")
            return None
        tmp = store.new_tmp(node.name, node.key)
        work = store.work_dir(node.name, node.key)
        work.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            name=node.name,
            key=node.key,
            recipe=loaded.recipe,
            recipe_path=loaded.recipe_path,
            out_dir=tmp / "out",
            work_dir=work,
            # re-hashed against their manifests when the stage first reads them
            inputs=VerifiedInputs(store, {d: loaded.nodes[d].key for d in node.deps}, node.name),
            console=console,
            log_fn=lambda m: log(f"{node.name:<10} {m}"),
            downloads_dir=store.root / "downloads",
        )
        started = time.time()
        try:
            metrics = importlib.import_module(node.module).run(ctx) or {}
        except BaseException as exc:
            # Never committed. A failing check's reports (merge.json, eval.json...) are kept for
            # reading under failed/; work_dir stays too, so the next try resumes from it.
            kept = store.keep_failed(tmp, node.name, node.key)
            if isinstance(exc, Exception) and kept is not None:
                log(f"{node.name:<10} failed; what it wrote is kept in {kept}")
            raise
        elapsed = time.time() - started
        manifest = entry_manifest(node.name, node.key, node.inputs, metrics, started, elapsed)
        manifest.update(input_files=node.files, facts=ctx.facts)
        store.commit(tmp, node.name, node.key, manifest)
        return elapsed


# ------------------------------------------------------------------------- other commands
def locate_output(loaded: Loaded, store: Store, stage: str, verify: bool = False) -> Path:
    """The cached output folder of a stage, or NotBuiltError saying how to build it. With
    `verify`, every byte is re-hashed against the entry's manifest first (CacheCorruptError)."""
    if stage not in loaded.nodes:
        raise NotBuiltError(f"this recipe has no {stage!r} stage")
    key = loaded.nodes[stage].key
    if loaded.output(store, stage) is None:
        raise NotBuiltError(
            f"the {stage} stage of {loaded.recipe_path.name} is not built (key {key[:12]})",
            hint=f"run `legalbuild build {loaded.recipe_path.name} --until {stage}` first",
        )
    if verify and (problems := store.verify(stage, key)):
        from legalbuild.errors import CacheCorruptError

        raise CacheCorruptError(
            f"the cached {stage} output (key {key[:12]}) is corrupted, it differs from its manifest: "
            + "; ".join(problems[:3])
            + (f" and {len(problems) - 3} more" if len(problems) > 3 else ""),
            hint=f"`legalbuild build {loaded.recipe_path.name} --force {stage}` rebuilds it",
        )
    return store.out_dir(stage, key)


__all__ = [
    "BuildResult",
    "Loaded",
    "StageFailedError",
    "StagePlan",
    "build",
    "locate_output",
    "plan",
]
