"""One training run in plain terms: the recipe, the folders it reads and writes, where it logs.

The train stage makes it from its context (`stages/train.py`); a launched rank reads it back from
the launch spec the builder wrote (`to_spec` / `from_spec`), so the training library never needs
the engine's StageContext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild.recipe import Recipe


@dataclass
class TrainJob:
    key: str  # the train stage's key (names the rendezvous of a multi-node run)
    recipe: Recipe
    recipe_dir: Path  # recipe paths (a DeepSpeed JSON) are relative to it
    base_dir: Path  # the base stage's output: model/ and base.json
    data_dir: Path  # the normalize stage's output: train.jsonl, val.jsonl
    out_dir: Path  # what the adapter and its reports are written into
    work_dir: Path  # checkpoints, samples, the launch folder: stable for the key
    logs_dir: Path  # run logs beside out/ (trackers' files), never hashed
    log: Callable[[str], None] = print
    console: Any = None  # a rich Console for the progress bar, when there is a terminal

    @property
    def model_dir(self) -> Path:
        return self.base_dir / "model"

    def to_spec(self, resume_from: Path | None) -> dict[str, Any]:
        return {
            "key": self.key,
            "recipe": self.recipe.model_dump(mode="json"),
            "recipe_dir": str(self.recipe_dir),
            **{
                name: str(getattr(self, name))
                for name in ("base_dir", "data_dir", "out_dir", "work_dir", "logs_dir")
            },
            "resume_from": str(resume_from) if resume_from else None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], log: Callable[[str], None]) -> TrainJob:
        return cls(
            key=spec["key"],
            recipe=Recipe.model_validate(spec["recipe"]),
            recipe_dir=Path(spec["recipe_dir"]),
            base_dir=Path(spec["base_dir"]),
            data_dir=Path(spec["data_dir"]),
            out_dir=Path(spec["out_dir"]),
            work_dir=Path(spec["work_dir"]),
            logs_dir=Path(spec["logs_dir"]),
            log=log,
        )


@dataclass
class Setup:
    """What the steps of one training run share."""

    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    trackers: list[str]
    strategy: str  # "none" for one process, else the [train.distributed] strategy
    device: str
    precision: str
    tokenizer: Any = None
    lengths: dict[str, Any] = field(default_factory=dict)
    val_lengths: dict[str, Any] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        return self.strategy in ("fsdp", "deepspeed")
