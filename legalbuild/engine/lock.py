"""legalbuild.engine.lock: each stage's key, the inputs it was computed from, and its output digests.

It sits beside the recipe, is TOML so that it reads well in a diff, and is committed with the
recipe: `build --locked` refuses to build anything whose key differs from it, and `plan` compares
current inputs with the locked ones to say WHY a stage must be rebuilt. The files a stage reads
(each data source, the legalbuild code it runs) appear as a digest and a file count
(`sources[0].data.digest`, `code.files`); their per-file digests are in the entry's manifest
(`input_files`), where `plan` looks to name the files that changed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from legalbuild import __version__
from legalbuild.engine.graph import STAGES
from legalbuild.engine.ownership import owner_alive
from legalbuild.errors import LockFileError

LOCK_VERSION = 1
HEADER = "# legalbuild.lock: written by `legalbuild build`. Commit it with the recipe.\n"
REGENERATE = (
    "delete it, or run `legalbuild build` without --locked: either way the build writes a new one"
)
_DIGEST = re.compile(r"[0-9a-f]{64}")


def lock_path(recipe_path: Path) -> Path:
    """One lock per recipe: recipe.toml -> legalbuild.lock, other.toml -> other.lock."""
    name = (
        "legalbuild.engine.lock"
        if recipe_path.name == "recipe.toml"
        else f"{recipe_path.stem}.lock"
    )
    return recipe_path.with_name(name)


# ----------------------------------------------------------------------------------- reading
def read_lock(recipe_path: Path) -> dict[str, Any]:
    """The lock beside the recipe ({} when there is none); LockFileError when it is unreadable."""
    path = lock_path(recipe_path)
    if path.is_dir():
        raise LockFileError(
            f"{path}: is a folder, not a lock file",
            hint="delete it; the next `legalbuild build` writes a new lock",
        )
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    except tomllib.TOMLDecodeError as exc:
        problem = f"not valid TOML ({exc})"
    except RecursionError:
        problem = "arrays or tables nested too deeply to read"
    else:
        problem = lock_problem(data)
    if problem:
        raise LockFileError(f"{path}: unreadable lock file: {problem}", hint=REGENERATE)
    return data


def lock_problem(data: dict[str, Any]) -> str | None:
    """What makes a parsed lock unusable (wrong types, missing keys), or None."""
    version = data.get("version")
    if type(version) is not int or version != LOCK_VERSION:
        return f"version = {version!r}, expected {LOCK_VERSION}"
    if not isinstance(data.get("legalbuild", ""), str):
        return "`legalbuild` must be a string"
    stages = data.get("stages", {})
    if not isinstance(stages, dict):
        return "`stages` must be a table of [stages.<name>] tables"
    for name, entry in stages.items():
        where = f"[stages.{name}]"
        if not isinstance(entry, dict):
            return f"{where} must be a table"
        key = entry.get("key")
        if not isinstance(key, str) or not _DIGEST.fullmatch(key):
            return f"{where} key = {key!r}: expected a 64-hex-digit digest"
        if not isinstance(entry.get("not_bit_reproducible", ""), str):
            return f"{where} not_bit_reproducible must be a string"
        for table in ("inputs", "outputs"):
            if not isinstance(entry.get(table, {}), dict):
                return f"{where} {table} must be a table"
        for k, v in entry.get("inputs", {}).items():
            if not isinstance(v, str | int | float | bool):
                return f"{where} inputs.{k} = {v!r}: expected a string, number or boolean"
        for k, v in entry.get("outputs", {}).items():
            if not isinstance(v, str):
                return f"{where} outputs.{k} = {v!r}: expected a digest string"
    return None


def locked_stage(lock: dict[str, Any], stage: str) -> dict[str, Any] | None:
    return lock.get("stages", {}).get(stage)


# ----------------------------------------------------------------------------------- writing
def record_stage(
    lock: dict[str, Any],
    stage: str,
    key: str,
    inputs: dict[str, Any],
    outputs: dict[str, str],
    not_bit_reproducible: str | None = None,
) -> None:
    """Record one stage in `lock` (in memory; `write_lock` saves it). `not_bit_reproducible`:
    why a rebuild with the same key may write other bytes here (the stage's own statement)."""
    lock["version"] = LOCK_VERSION
    lock["legalbuild"] = __version__
    entry: dict[str, Any] = {"key": key}
    if not_bit_reproducible:
        entry["not_bit_reproducible"] = not_bit_reproducible
    lock.setdefault("stages", {})[stage] = {
        **entry,
        "inputs": flatten(inputs),
        "outputs": outputs,
    }


def write_lock(recipe_path: Path, lock: dict[str, Any]) -> bool:
    """Save the lock, stages in build order; only when its text changed. True when written."""
    path = lock_path(recipe_path)
    stages = lock.get("stages", {})
    order = {name: i for i, name in enumerate(STAGES)}
    lock["stages"] = {k: stages[k] for k in sorted(stages, key=lambda s: order.get(s, len(order)))}
    text = HEADER + tomli_w.dumps(lock)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # no lock yet, or an unreadable one to replace
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write; gone already after the replace
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove `.<lock>.tmp<pid>` files beside the lock whose writer is gone (killed between
    writing and renaming); a live writer's file stays."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not tmp.is_symlink() and not owner_alive(int(pid), None):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
