"""legalbuild.lock: each stage's key, the inputs it was computed from, and its output digests.

It sits beside the recipe, is TOML so that it reads well in a diff, and is committed with the
recipe: `build --locked` refuses to build anything whose key differs from it, and `plan` compares
current inputs with the locked ones to say WHY a stage must be rebuilt.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from legalbuild import __version__
from legalbuild.errors import RecipeError

LOCK_VERSION = 1
HEADER = "# legalbuild.lock: written by `legalbuild build`. Commit it with the recipe.\n"


def lock_path(recipe_path: Path) -> Path:
    """One lock per recipe: recipe.toml -> legalbuild.lock, other.toml -> other.lock."""
    name = "legalbuild.lock" if recipe_path.name == "recipe.toml" else f"{recipe_path.stem}.lock"
    return recipe_path.with_name(name)


def read_lock(recipe_path: Path) -> dict[str, Any]:
    path = lock_path(recipe_path)
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(
            f"{path}: unreadable lock file: {exc}", hint="delete it and rebuild to write a new one"
        ) from None
    if data.get("version") != LOCK_VERSION:
        raise RecipeError(f"{path}: lock version {data.get('version')!r}, expected {LOCK_VERSION}")
    return data


def locked_stage(lock: dict[str, Any], stage: str) -> dict[str, Any] | None:
    return lock.get("stages", {}).get(stage)


def update_lock(
    recipe_path: Path, stage: str, key: str, inputs: dict[str, Any], outputs: dict[str, str]
) -> None:
    """Record one stage; stages no longer in the recipe are kept until `prune_lock`."""
    lock = read_lock(recipe_path) or {"version": LOCK_VERSION}
    lock["version"] = LOCK_VERSION
    lock["legalbuild"] = __version__
    lock.setdefault("stages", {})[stage] = {
        "key": key,
        "inputs": flatten(inputs),
        "outputs": outputs,
    }
    write_lock(recipe_path, lock)


def prune_lock(recipe_path: Path, stages: list[str]) -> None:
    lock = read_lock(recipe_path)
    if lock and set(lock.get("stages", {})) - set(stages):
        lock["stages"] = {k: v for k, v in lock["stages"].items() if k in stages}
        write_lock(recipe_path, lock)


def write_lock(recipe_path: Path, lock: dict[str, Any]) -> None:
    path = lock_path(recipe_path)
    order = ["curate", "normalize", "base", "train", "merge", "eval"]
    stages = lock.get("stages", {})
    lock["stages"] = {
        k: stages[k] for k in sorted(stages, key=lambda s: order.index(s) if s in order else 99)
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(HEADER + tomli_w.dumps(lock), encoding="utf-8")
    os.replace(tmp, path)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings -> {"train.learning_rate": 0.0002, "lora.target_modules": "q_proj,v_proj"}.
    TOML has no null, so None becomes the string "none"; lists of scalars are joined."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(obj, list):
        out[prefix] = ",".join(str(v) for v in obj)
    elif obj is None:
        out[prefix] = "none"
    elif isinstance(obj, bool | int | float | str):
        out[prefix] = obj
    else:
        out[prefix] = str(obj)
    return out


def diff_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons: which flattened inputs changed, appeared or disappeared."""
    reasons = []
    for k in sorted(old.keys() | new.keys()):
        if k not in new:
            reasons.append(f"{k} removed (was {_short(old[k])})")
        elif k not in old:
            reasons.append(f"{k} added ({_short(new[k])})")
        elif old[k] != new[k]:
            reasons.append(f"{k}: {_short(old[k])} -> {_short(new[k])}")
    return reasons


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a digest
    return text if len(text) <= 60 else text[:57] + "..."
