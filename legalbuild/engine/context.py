"""What the pipeline hands a stage's `run(ctx)` function.

Contract for every stage module `legalbuild/stages/<name>.py` (see legalbuild/engine/graph.py):

    DEPENDS_ON = ("normalize", "base")                 # stages whose outputs it reads
    def key_inputs(recipe, recipe_path) -> dict: ...    # what else its cache key covers
    def run(ctx: StageContext) -> dict: ...             # returns metrics recorded in the manifest

`run` writes everything it produces under `ctx.out_dir` (a fresh temporary folder: the pipeline
renames it into the cache only after `run` returns, so a crash never leaves a complete-looking
entry). Long work that must survive a crash (training checkpoints) goes in `ctx.work_dir`, which
is stable for the stage key and removed after the entry is committed. Upstream outputs are read
from `ctx.inputs[stage_name]` (a committed cache entry's output folder; read-only; the pipeline
re-hashes it against its manifest the first time the stage asks for it, see VerifiedInputs below).
No heavy import (torch, transformers, peft, trl, datasets, vllm, bitsandbytes) at module top level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import CacheCorruptError

if TYPE_CHECKING:
    from rich.console import Console

    from legalbuild.engine.cache import Store
    from legalbuild.recipe import Recipe


@dataclass
class StageContext:
    name: str
    key: str
    recipe: Recipe
    recipe_path: Path
    out_dir: Path
    work_dir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)
    console: Console | None = None
    # extra facts the key was computed from (e.g. resolved hub revision), for the manifest
    facts: dict[str, Any] = field(default_factory=dict)
    log_fn: Callable[[str], None] | None = None
    # where data files named by URL are downloaded once (the store's downloads/<sha256>)
    downloads_dir: Path | None = None

    @property
    def logs_dir(self) -> Path:
        """Run logs kept with the entry but outside `out/` (experiment trackers' files): they carry
        timestamps, host names and paths, so they are neither hashed nor verified."""
        return self.out_dir.parent / "logs"

    @property
    def recipe_dir(self) -> Path:
        return self.recipe_path.parent

    def resolve(self, path: str | Path) -> Path:
        """A path from the recipe, relative to the recipe's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.recipe_dir / p).resolve()

    def log(self, message: str) -> None:
        if self.log_fn is not None:
            self.log_fn(message)
        elif self.console is not None:
            self.console.print(f"[dim]{self.name}:[/] {message}")
        else:
            print(f"{self.name}: {message}", flush=True)


class VerifiedInputs(Mapping[str, Path]):
    """A stage's `ctx.inputs`: the upstream entries' out/ folders. The first time a stage asks for
    one, every byte of it is re-hashed against its manifest, so a stage never reads a corrupted
    entry (the digests, not the mtime memo, decide)."""

    def __init__(self, store: Store, refs: dict[str, str], reader: str):
        self._store, self._refs, self._reader = store, dict(refs), reader
        self._checked: set[str] = set()

    def __getitem__(self, stage: str) -> Path:
        key = self._refs[stage]
        if stage not in self._checked:
            problems = self._store.verify(stage, key)
            if problems:
                raise CacheCorruptError(
                    f"the {stage} entry {key[:12]} that {self._reader} reads is corrupted: "
                    + "; ".join(problems[:5])
                    + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                    hint=f"`legalbuild build RECIPE --force {stage}` rebuilds it; "
                    "`legalbuild verify` checks the whole cache",
                )
            self._checked.add(stage)
        return self._store.out_dir(stage, key)

    def __contains__(self, stage: object) -> bool:
        return stage in self._refs

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)
