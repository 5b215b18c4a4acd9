"""The recipe: one strict, typed TOML file that declares a whole build.

Every model forbids unknown keys and documents every field. Fields marked `affects_output=False`
(logging, tracking, serving) are left out of the cache keys, so editing them rebuilds nothing.
`legalbuild.recipe.loading.load_recipe` reads a file into a `Recipe`. The sections live in
`data` ([project], [data], [curate]), `training` ([model], [lora], [train], [merge]) and
`output` ([eval], [serve]); `fields` holds what they are built from.

Values are strict: `true` is not an integer, `2.0` is not an integer, inf and NaN are not numbers,
every integer fits in 64 bits, and paths are non-empty, NUL-free and at most 4,096 characters.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from legalbuild.recipe.data import (
    ContractCorpus,
    CurateSection,
    DataSection,
    DataSource,
    FilterSettings,
    ProjectSection,
    SplitSettings,
)
from legalbuild.recipe.federated import DpSettings, FederatedSection, SiloSection
from legalbuild.recipe.fields import (
    DEFAULT_SYSTEM_PROMPT,
    MAX_INT,
    MAX_PATH_CHARS,
    NO_KEY,
    PathText,
    Strict,
    TaskName,
    key_settings,
)
from legalbuild.recipe.output import EvalSection, ServeSection
from legalbuild.recipe.training import (
    DEEPSPEED_PRESETS,
    DistributedSettings,
    LoraSection,
    MergeSection,
    ModelSection,
    SampleSettings,
    TrainSection,
)


# ---------------------------------------------------------------------------------------- recipe
class Recipe(Strict):
    """A legalbuild recipe. See `legalbuild schema` for the JSON schema."""

    project: ProjectSection = Field(description="Identity of the build.")
    data: DataSection = Field(
        default_factory=DataSection, description="Instruction/response data and cleaning."
    )
    curate: CurateSection | None = Field(
        None, description="Build pairs from contracts and rulebooks (optional)."
    )
    model: ModelSection = Field(default_factory=ModelSection, description="Base model.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapter shape.")
    train: TrainSection = Field(default_factory=TrainSection, description="Training arguments.")
    merge: MergeSection = Field(
        default_factory=MergeSection, description="Folding the adapter into the base."
    )
    eval: EvalSection = Field(
        default_factory=EvalSection, description="Evaluation of base vs merged model."
    )
    serve: ServeSection = Field(default_factory=ServeSection, description="vLLM serving options.")
    federated: FederatedSection | None = Field(
        None,
        description="Train across silos with Flower; [data] and [curate] then hold only the "
        "coordinator's own evaluation data (optional).",
    )

    @model_validator(mode="after")
    def _has_data(self) -> Recipe:
        if not self.data.sources and self.curate is None and self.federated is None:
            raise ValueError("declare at least one [[data.sources]] entry or a [curate] section")
        if self.federated is not None and self.train.distributed is not None:
            raise ValueError(
                "[federated] and [train.distributed] exclude each other: each silo trains in one process"
            )
        if self.federated is not None and self.model.quantization != "none":
            raise ValueError(
                '[federated] trains full-precision LoRA: set [model] quantization = "none"'
            )
        dist = self.train.distributed
        if dist is not None and (why := dist.refusal(self.model.quantization)):
            raise ValueError(f"[train.distributed] {why}")
        return self

    @property
    def served_model_name(self) -> str:
        return self.serve.served_model_name or self.project.name


__all__ = [
    "DEEPSPEED_PRESETS",
    "DEFAULT_SYSTEM_PROMPT",
    "MAX_INT",
    "MAX_PATH_CHARS",
    "NO_KEY",
    "ContractCorpus",
    "CurateSection",
    "DataSection",
    "DataSource",
    "DistributedSettings",
    "DpSettings",
    "FederatedSection",
    "EvalSection",
    "FilterSettings",
    "LoraSection",
    "MergeSection",
    "ModelSection",
    "PathText",
    "ProjectSection",
    "Recipe",
    "SampleSettings",
    "ServeSection",
    "SiloSection",
    "SplitSettings",
    "Strict",
    "TaskName",
    "TrainSection",
    "key_settings",
]
