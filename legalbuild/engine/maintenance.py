"""Keeping a store tidy and honest: `verify` re-hashes entries, `clean` removes a recipe's current
entries, `gc` everything no recipe keeps. Each deletes only names legalbuild writes, never through
a symbolic link, and only in a folder that is a legalbuild cache."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from legalbuild.engine.cache import Store
from legalbuild.engine.pipeline import Loaded


def verify(
    store: Store, refs: Iterable[tuple[str, str]] | None = None
) -> dict[tuple[str, str], list[str]]:
    """Re-hash cached outputs: {(stage, key): problems} for every entry checked."""
    refs = list(refs) if refs is not None else [(e.stage, e.key) for e in store.entries()]
    return {(s, k): store.verify(s, k) for s, k in refs if store.has(s, k)}


def current_refs(
    recipe_paths: Iterable[str | Path], store: Store | None = None
) -> set[tuple[str, str]]:
    """The recipes' current entries; with `store`, also the entries made from them (the GGUF
    exports of their merged models)."""
    refs = set()
    for path in recipe_paths:
        loaded = Loaded.from_path(path)
        refs |= {(n.name, n.key) for n in loaded.nodes.values()}
    if store is not None:
        refs |= store.made_from("merge", {key for stage, key in refs if stage == "merge"})
    return refs


def clean(
    loaded: Loaded, store: Store, stages: Iterable[str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Remove the recipe's current entries (every stage, or `stages`; "gguf" names the GGUF
    exports of its merged model, which go with the merge). Returns (removed, skipped), skipped
    being symlinks and names legalbuild did not write, left in place."""
    from legalbuild.engine.cache import StrayError
    from legalbuild.engine.graph import DERIVED

    wanted = set(stages or [*loaded.nodes, *DERIVED])
    refs = [(n, node.key) for n, node in loaded.nodes.items() if n in wanted]
    if store.root.exists():
        store.claim()  # refuses a folder that is not a legalbuild cache
        if "merge" in loaded.nodes and wanted & {"merge", *DERIVED}:
            made = store.made_from("merge", {loaded.nodes["merge"].key})
            refs += sorted(r for r in made if "merge" in wanted or r[0] in wanted)
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
