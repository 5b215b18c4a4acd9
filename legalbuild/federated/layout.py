"""The folders of one federated run and the specs written into them.

Under the train stage's work_dir (stable for its key, so a failed build resumes):

    coordinator/   what the coordinator holds: spec.json, the Flower app, FLWR_HOME, the
                   SuperLink's state and log, `flwr run`'s log, initial/ (the adapter every silo
                   starts from), rounds/round-N.safetensors (+ .json), last/ (the last round's
                   silo adapters, for the exact combination), final-<candidate>.safetensors,
                   result.json
    silos/<name>/  what, on real hosts, lives on that silo's machine only: spec.json (its data
                   sources), data/ (its curated and normalized rows), the SuperNode's log,
                   sent/round-N.safetensors (a copy of every update it sent), trainer scratch

Nothing under coordinator/ holds a row: a test scans it. The specs are JSON; the silo's spec
carries a recipe whose data is the silo's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legalbuild.recipe import FederatedSection, Recipe, SiloSection


@dataclass(frozen=True)
class Layout:
    work_dir: Path

    @property
    def coordinator(self) -> Path:
        return self.work_dir / "coordinator"

    @property
    def rounds(self) -> Path:
        return self.coordinator / "rounds"

    @property
    def initial(self) -> Path:
        return self.coordinator / "initial"

    @property
    def last(self) -> Path:
        return self.coordinator / "last"

    @property
    def result(self) -> Path:
        return self.coordinator / "result.json"

    def final(self, candidate: str) -> Path:
        return self.coordinator / f"final-{candidate}.safetensors"

    @property
    def server_spec(self) -> Path:
        return self.coordinator / "spec.json"

    def silo(self, name: str) -> Path:
        return self.work_dir / "silos" / name


def server_spec(recipe: Recipe, layout: Layout) -> dict[str, Any]:
    """What the ServerApp needs: the strategy and rounds, the silo names, the LoRA shape and the
    learning-rate schedule. No silo's data source is named."""
    fed = recipe.federated
    assert fed is not None
    return {
        **fed.model_dump(mode="json", exclude={"silos"}),
        "silos": [s.name for s in fed.silos],
        "learning_rate": recipe.train.learning_rate,
        "lr_scheduler": recipe.train.lr_scheduler,
        "seed": recipe.train.seed,
        "lora_r": recipe.lora.r,
        "lora_alpha": recipe.lora.alpha,
        "coordinator_dir": str(layout.coordinator),
    }


def silo_recipe(recipe: Recipe, silo: SiloSection) -> Recipe:
    """The recipe as one silo runs it: its own sources, curation and split; no [federated]."""
    data = recipe.data.model_copy(update={"sources": silo.sources, "split": silo.split})
    return recipe.model_copy(update={"data": data, "curate": silo.curate, "federated": None})


def silo_spec(
    recipe: Recipe,
    silo: SiloSection,
    layout: Layout,
    base_dir: Path,
    recipe_dir: Path,
    data_key: str,
) -> dict[str, Any]:
    return {
        "name": silo.name,
        "silo_dir": str(layout.silo(silo.name)),
        "base_dir": str(base_dir),
        "recipe_dir": str(recipe_dir),
        "data_key": data_key,  # the silo's data part of the train key: its prepared rows are reused
        "recipe": silo_recipe(recipe, silo).model_dump(mode="json"),
    }


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    return path


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def federated_of(recipe: Recipe) -> FederatedSection:
    if recipe.federated is None:
        raise ValueError("not a federated recipe")
    return recipe.federated
