"""Light helpers for the stages' `key_inputs`: the files read (FileSet), installed library versions.

Nothing here imports torch & co.: keys are computed on every `plan`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from legalbuild.hashing import digest_json, file_digest

TRAINING_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes")


@dataclass(frozen=True)
class FileSet:
    """The files a stage reads from one source, {name relative to the source's folder: sha256}.

    In a key it counts as its `summary()`, a digest and a file count (what the lock shows); the
    per-file list goes to the entry's manifest, so `plan` can name the files that changed."""

    files: dict[str, str]

    def summary(self) -> dict[str, Any]:
        return {"digest": digest_json(self.files), "files": len(self.files)}


def summarized(obj: Any) -> Any:
    """Nested key inputs with each FileSet as its summary (what a key hashes of it)."""
    if isinstance(obj, FileSet):
        return obj.summary()
    if isinstance(obj, dict):
        return {k: summarized(v) for k, v in obj.items()}
    return [summarized(v) for v in obj] if isinstance(obj, list) else obj


def file_set(paths: Iterable[str | Path], root: str | Path | None = None) -> FileSet:
    """Digests of `paths`, named relative to `root` (default: their common folder), so the names
    are the same on every machine."""
    absolute = sorted({Path(os.path.abspath(p)) for p in paths})
    if not absolute:
        return FileSet({})
    base = Path(os.path.abspath(root)) if root else Path(os.path.commonpath(absolute))
    if not all(p.is_relative_to(base) for p in absolute):
        base = Path(os.path.commonpath(absolute))
    if base in absolute:  # a single file: named by its file name
        base = base.parent
    return FileSet({p.relative_to(base).as_posix(): file_digest(p) for p in absolute})


def library_versions(names: tuple[str, ...] = TRAINING_LIBRARIES) -> dict[str, str]:
    """Installed versions, read from package metadata (no import of the packages themselves)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
