"""Why a stage builds, in words a user can act on: forced, never built for this recipe, built but
gone from this cache, or which inputs changed since the lock (settings with old and new values,
files named from the locked entry's manifest), and the note for a rebuild whose bytes differ from
the lock's. The one home of rebuild reasons: `plan`, `build` and `status` all read them here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from legalbuild.engine.lock import flatten

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.graph import StageNode

_DIGEST = re.compile(r"[0-9a-f]{64}")
_SHOWN = 3  # file names a reason lists before "and N more"


def rebuild_reasons(
    node: StageNode, locked: dict | None, cached: bool, forced: bool, store: Store
) -> list[str]:
    """Why a stage builds (empty when it is cached and matches the lock): forced, never built,
    gone from this cache, or which of its inputs changed since the lock, files named."""
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


def numerics_note(
    stage: str, locked: dict[str, str], produced: dict[str, str], why: str | None = None
) -> str:
    differ = [n for n in locked.keys() | produced.keys() if locked.get(n) != produced.get(n)]
    cause = (
        f"not bit-reproducible here: {why}"
        if why
        else "numerics differ on this machine, e.g. another CPU"
    )
    return (
        f"{stage:<10} note: same key as the lock, but {first_names(differ)} differ from "
        f"the locked digests ({cause}); the lock keeps "
        f"its digests (to record this build's, delete [stages.{stage}] from the lock and build)"
    )


def diff_inputs(
    old: dict[str, Any],
    new: dict[str, Any],
    old_files: dict[str, dict[str, str]] | None = None,
    new_files: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Human-readable reasons: which flattened inputs changed, appeared or disappeared. A file set
    (`X.digest` + `X.files`) is told as the files that changed, named from `old_files` (the
    locked entry's manifest, when the cache still has it) and `new_files`."""
    old, new = dict(old), dict(new)
    reasons = []
    sets = {k[: -len(".digest")] for k in old.keys() | new.keys() if k.endswith(".digest")}
    for name in sorted(s for s in sets if f"{s}.files" in old or f"{s}.files" in new):
        before = (old.pop(f"{name}.digest", None), old.pop(f"{name}.files", None))
        after = (new.pop(f"{name}.digest", None), new.pop(f"{name}.files", None))
        if before[0] is None:
            reasons.append(f"{name} added ({after[1]} files)")
        elif after[0] is None:
            reasons.append(f"{name} removed (was {before[1]} files)")
        elif before[0] != after[0]:
            reasons.append(
                f"{name}: "
                + file_changes(
                    (old_files or {}).get(name), (new_files or {}).get(name, {}), before[1]
                )
            )
    for k in sorted(old.keys() | new.keys()):
        if k not in new:
            reasons.append(f"{k} removed (was {_short(old[k])})")
        elif k not in old:
            reasons.append(f"{k} added ({_short(new[k])})")
        elif old[k] != new[k]:
            reasons.append(f"{k}: {_short(old[k])} -> {_short(new[k])}")
    return reasons


def file_changes(old: dict[str, str] | None, new: dict[str, str], old_count: Any) -> str:
    """ "a.py changed; b.py added", naming the first few files of each kind."""
    if old is None:
        return (
            f"files changed ({old_count} -> {len(new)} files; the locked entry is not in this "
            "cache to name them)"
        )
    parts = []
    for verb, names in (
        ("changed", [n for n in new if n in old and old[n] != new[n]]),
        ("added", [n for n in new if n not in old]),
        ("removed", [n for n in old if n not in new]),
    ):
        if names:
            parts.append(f"{first_names(names)} {verb}")
    return "; ".join(parts) or "files renamed"


def first_names(names: list[str]) -> str:
    """ "a, b, c and 4 more": the first few names in order, then how many others."""
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return value[:12]  # a digest
    return text if len(text) <= 60 else text[:57] + "..."
