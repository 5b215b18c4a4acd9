"""Plan and build a recipe: walk the stage graph, reuse cached entries, build the rest atomically.

The CLI is a thin layer over the functions here (`plan`, `build`, `locate_output`, `verify`, ...).
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild import __version__
from legalbuild.cache import Store, VerifiedInputs
from legalbuild.errors import (
    LegalbuildError,
    LockFileError,
    LockMismatchError,
    NotBuiltError,
    StageFailedError,
)
from legalbuild.graph import StageNode, build_graph, downstream_of
from legalbuild.lock import (
    diff_inputs,
    first_names,
    flatten,
    lock_path,
    locked_stage,
    read_lock,
    record_stage,
    write_lock,
)
from legalbuild.recipe import Recipe
from legalbuild.recipe_loading import load_recipe
from legalbuild.stages.context import StageContext


@dataclass
class StagePlan:
    name: str
    key: str
    cached: bool
    locked_key: str | None
    reasons: list[str] = field(default_factory=list)


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
        plans.append(
            StagePlan(
                name,
                node.key,
                cached,
                locked and locked["key"],
                _reasons(node, locked, cached, name in forced, store),
            )
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


def _reasons(
    node: StageNode, locked: dict | None, cached: bool, forced: bool, store: Store
) -> list[str]:
    if forced:
        return ["forced"]
    if locked is None:
        return [] if cached else ["never built for this recipe (not in the lock file)"]
    if locked["key"] == node.key:
        return (
            []
            if cached
            else ["same key as the lock, but not in this cache (new machine or cleaned cache)"]
        )
    old_files = (store.manifest(node.name, locked["key"]) or {}).get("input_files")
    changed = diff_inputs(locked.get("inputs", {}), flatten(node.inputs), old_files, node.files)
    upstream = [r for r in changed if r.startswith("upstream.")]
    own = [r for r in changed if not r.startswith("upstream.")]
    reasons = own + (
        [f"upstream stage changed: {', '.join(r.split(':')[0][9:] for r in upstream)}"]
        if upstream
        else []
    )
    return reasons or ["key differs from the lock"]


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
    if locked:
        _check_locked(loaded, plans, lock)
    store.claim()  # refuses a folder that is not a legalbuild cache before anything is written
    if stale := store.clean_tmp():
        log(f"removed {len(stale)} temp folder(s) left by builds that were killed")
    built, seconds, outputs = [], {}, {}
    forced = _forced(loaded, force)
    for p in plans:
        node = loaded.nodes[p.name]
        if p.cached:
            log(f"{p.name:<10} cached    {p.key[:12]}")
        else:
            log(f"{p.name:<10} building  {p.key[:12]}  ({'; '.join(p.reasons) or 'not cached'})")
            elapsed = _build_stage(
                loaded, store, node, force=p.name in forced, log=log, console=console
            )
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
            log(_numerics_note(p.name, previous["outputs"], produced))
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


def _numerics_note(stage: str, locked: dict[str, str], produced: dict[str, str]) -> str:
    differ = [n for n in locked.keys() | produced.keys() if locked.get(n) != produced.get(n)]
    return (
        f"{stage:<10} note: same key as the lock, but {first_names(differ)} differ from "
        "the locked digests (numerics differ on this machine, e.g. another CPU); the lock keeps "
        f"its digests (to record this build's, delete [stages.{stage}] from the lock and build)"
    )


def _check_locked(loaded: Loaded, plans: list[StagePlan], lock: dict[str, Any]) -> None:
    if not lock:
        raise LockMismatchError(
            f"--locked: no lock file beside {loaded.recipe_path.name}",
            hint="run `legalbuild build` once without --locked and commit the lock",
        )
    bad = [p for p in plans if p.locked_key != p.key]
    if bad:
        lines = [
            f"  {p.name}: lock {str(p.locked_key)[:12]} != recipe {p.key[:12]} ({'; '.join(p.reasons)})"
            for p in bad
        ]
        raise LockMismatchError(
            "--locked: the recipe no longer matches its lock file:\n" + "\n".join(lines),
            hint="build without --locked to update the lock, or restore the recipe/data the lock was made from",
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
        store.commit(tmp, node.name, node.key, _manifest(node, ctx, metrics, started, elapsed))
        return elapsed


def _manifest(
    node: StageNode, ctx: StageContext, metrics: dict, started: float, elapsed: float
) -> dict[str, Any]:
    return {
        "stage": node.name,
        "key": node.key,
        "inputs": node.inputs,
        "input_files": node.files,
        "metrics": metrics,
        "facts": ctx.facts,
        "versions": {
            "legalbuild": __version__,
            "python": platform.python_version(),
            **node.inputs.get("libraries", {}),
        },
        "timings": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(elapsed, 3),
        },
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


# ------------------------------------------------------------------------- other commands
def locate_output(loaded: Loaded, store: Store, stage: str, verify: bool = False) -> Path:
    """The cached output folder of a stage, or NotBuiltError saying how to build it. With
    `verify`, every byte is re-hashed against the entry's manifest first (CacheCorruptError)."""
    if stage not in loaded.nodes:
        raise NotBuiltError(f"this recipe has no {stage!r} stage")
    key = loaded.nodes[stage].key
    if not store.has(stage, key):
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


def verify(
    store: Store, refs: Iterable[tuple[str, str]] | None = None
) -> dict[tuple[str, str], list[str]]:
    """Re-hash cached outputs: {(stage, key): problems} for every entry checked."""
    refs = list(refs) if refs is not None else [(e.stage, e.key) for e in store.entries()]
    return {(s, k): store.verify(s, k) for s, k in refs if store.has(s, k)}


def current_refs(
    recipe_paths: Iterable[str | Path], store: Store | None = None
) -> set[tuple[str, str]]:
    """The recipes' current entries; with `store`, also the GGUF exports of their merged models."""
    refs = set()
    for path in recipe_paths:
        loaded = Loaded.from_path(path)
        refs |= {(n.name, n.key) for n in loaded.nodes.values()}
    if store is not None:
        from legalbuild.export.gguf_entry import refs_for

        refs |= refs_for(store, {key for stage, key in refs if stage == "merge"})
    return refs


def clean(
    loaded: Loaded, store: Store, stages: Iterable[str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Remove the recipe's current entries (every stage, or `stages`; "gguf" names the GGUF
    exports of its merged model, which go with the merge). Returns (removed, skipped), skipped
    being symlinks and names legalbuild did not write, left in place."""
    from legalbuild.cache import StrayError
    from legalbuild.export.gguf_entry import STAGE as GGUF
    from legalbuild.export.gguf_entry import refs_for

    wanted = set(stages or [*loaded.nodes, GGUF])
    refs = [(n, node.key) for n, node in loaded.nodes.items() if n in wanted]
    if store.root.exists():
        store.claim()  # refuses a folder that is not a legalbuild cache
        if "merge" in loaded.nodes and wanted & {"merge", GGUF}:
            refs += sorted(refs_for(store, {loaded.nodes["merge"].key}))
    removed, skipped = [], []
    for stage, key in refs:
        try:
            if store.remove(stage, key):
                removed.append((stage, key))
        except StrayError as exc:
            skipped.append(exc.message)
    return removed, skipped


@dataclass
class GcResult:
    removed: list[tuple[str, str, int]] = field(default_factory=list)  # entries: stage, key, bytes
    scratch: list[str] = field(default_factory=list)  # work/, failed/, tmp/ folders of stale keys
    skipped: list[str] = field(default_factory=list)  # symlinks and names legalbuild did not write


def gc(store: Store, keep: set[tuple[str, str]], dry_run: bool = False) -> GcResult:
    """Remove every entry not in `keep`, and the checkpoints and failed builds of keys not kept.
    Deletes only names legalbuild writes, never through a symlink, and only in a legalbuild cache."""
    result = GcResult()
    if not store.root.exists():
        return result
    if dry_run:
        store.check_claimable()  # a dry run writes nothing, not even the store's marker
    else:
        store.claim()
    result.skipped = store.strays()
    for e in list(store.entries()):
        if (e.stage, e.key) in keep:
            continue
        size = store.size_bytes(e.stage, e.key)
        if not dry_run:
            store.remove(e.stage, e.key)
        result.removed.append((e.stage, e.key, size))
    kept_prefixes = {f"{stage}-{key[:16]}" for stage, key in keep}
    for kind in ("work", "failed"):
        for folder in store.scratch(kind):
            stage, key = folder.name.split("-", 1)
            if f"{stage}-{key[:16]}" in kept_prefixes:
                continue
            if kind == "work" and store.busy(stage, key):
                result.skipped.append(f"work/{folder.name} (a builder is using it now)")
                continue
            if not dry_run:
                store.drop_scratch(folder)
            result.scratch.append(f"{kind}/{folder.name}")
    if not dry_run:
        result.scratch += [f"tmp/{name}" for name in store.clean_tmp()]
    return result


__all__ = [
    "BuildResult",
    "GcResult",
    "Loaded",
    "StageFailedError",
    "StagePlan",
    "build",
    "clean",
    "current_refs",
    "gc",
    "locate_output",
    "plan",
    "verify",
]
