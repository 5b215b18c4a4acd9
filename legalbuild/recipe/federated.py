"""[federated] and [[federated.silos]]: one adapter trained across silos whose rows never leave them.

Each silo curates and normalizes its own data inside the silo (its own `curate`, `sources` and
`split`; the filters, dedup and system prompt are the recipe's `[data]` settings) and trains
`local_steps` optimizer steps per round with the recipe's `[train]` settings; only the adapter
weights, the example count and validation metrics travel. Flower's Deployment Engine carries them
(a SuperLink, one SuperNode per silo; legalbuild/federated/).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from legalbuild.recipe.data import CurateSection, DataSource, SplitSettings
from legalbuild.recipe.fields import NO_KEY, Strict

STRATEGIES = ("fedavg", "fedprox", "fedadam")  # Flower's FedAvg, FedProx, FedAdam


class SiloSection(Strict):
    """One silo: a party whose contracts stay on its own machine."""

    name: str = Field(
        description="Silo name (letters, digits, '-', '_'): names its SuperNode, its logs and its "
        "line in the lock.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        max_length=64,
    )
    sources: list[DataSource] = Field(
        default_factory=list,
        description="The silo's instruction/response files, read inside the silo (as [[data.sources]]).",
    )
    curate: CurateSection | None = Field(
        None, description="Pairs curated inside the silo from its own contracts (as [curate])."
    )
    split: SplitSettings = Field(
        default_factory=lambda: SplitSettings(by="group"),
        description="The silo's train/validation/test split (as [data.split]).",
    )

    @model_validator(mode="after")
    def _has_data(self) -> SiloSection:
        if not self.sources and self.curate is None:
            raise ValueError(
                f"silo {self.name!r} has no data: give it `sources` or a `curate` table"
            )
        names = [s.name for s in self.sources]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"silo {self.name!r}: source names must be unique, repeated: {dup}")
        return self


class DpSettings(Strict):
    """Differential-privacy clipping from Flower's strategy wrappers (off by default)."""

    mode: Literal["off", "server-fixed", "client-fixed"] = Field(
        "off",
        description="`server-fixed`: the SuperLink clips each silo's update and adds Gaussian noise "
        "(DifferentialPrivacyServerSideFixedClipping); `client-fixed`: each silo clips its own "
        "update before sending (fixedclipping_mod), the SuperLink adds the noise.",
    )
    clipping_norm: float = Field(
        1.0, gt=0, description="L2 bound on one silo's update of the adapter (all LoRA matrices)."
    )
    noise_multiplier: float = Field(
        0.0,
        ge=0,
        description="Gaussian noise stdev = noise_multiplier x clipping_norm / silos; 0 clips only.",
    )


class SecureAggregation(Strict):
    """Flower's SecAgg+ (off by default): the coordinator learns only the example-weighted mean of
    the silos' adapters, never one silo's adapter."""

    enabled: bool = Field(
        False,
        description="Run every round under SecAgg+ (SecAggPlusWorkflow + secaggplus_mod): each "
        "silo sends its adapter masked; the masks cancel only in the sum. Composes with fedavg "
        'and fedprox, final_adapter = "average", dp off.',
    )
    reconstruction_threshold: float = Field(
        0.67,
        gt=0,
        le=1,
        description="Share of the silos whose key shares unmask a round (at least 2 silos): higher "
        "resists more colluding silos, lower lets more silos drop out mid-round.",
    )
    clipping_range: float = Field(
        8.0,
        gt=0,
        description="Adapter values are clipped to +-this, then quantized to 2**22 levels: the "
        "mean is exact to about silos x 2 x clipping_range / 2**22 per value.",
    )


class FederatedSection(Strict):
    """Train the adapter across silos with Flower instead of on one pooled dataset."""

    rounds: int = Field(description="Federated rounds (each: every silo trains, the server aggregates).", ge=1, le=10_000)  # fmt: skip
    local_steps: int = Field(
        10, ge=1, description="Optimizer steps each silo trains per round ([train] batch settings)."
    )
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field(
        "fedavg",
        description="Flower strategy: `fedavg` (mean weighted by each silo's training rows), "
        "`fedprox` (FedAvg + proximal term mu/2 ||w - w_global||^2 in each silo's loss), `fedadam` "
        "(server-side Adam on the averaged update).",
    )
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight (fedprox only).")
    server_learning_rate: float = Field(
        0.01, gt=0, description="FedAdam's server learning rate eta (fedadam only)."
    )
    final_adapter: Literal["average", "exact", "best"] = Field(
        "best",
        description="How the last round's silo adapters become the output: `average` (A and B "
        "averaged separately, as in every earlier round), `exact` (the weighted mean of the silos' "
        "B@A products, as one adapter of rank r x silos: ranks concatenated), `best` (both, and the "
        "one with the lower validation loss over the silos is kept).",
    )
    on_silo_failure: Literal["fail", "continue"] = Field(
        "fail",
        description="A silo that dies or errs in a round: `fail` stops the build (the next build "
        "resumes after the last completed round), `continue` aggregates the others (at least "
        "`min_silos`).",
    )
    min_silos: int = Field(
        2, ge=1, description="With on_silo_failure = continue: fewest silos a round may aggregate."
    )
    dp: DpSettings = Field(default_factory=DpSettings, description="Differential-privacy clipping.")
    secure_aggregation: SecureAggregation = Field(
        default_factory=SecureAggregation, description="Secure aggregation (SecAgg+)."
    )
    round_timeout_s: float = Field(
        3600, gt=0, description="Longest wait for one round's replies.", json_schema_extra=NO_KEY
    )
    silos: list[SiloSection] = Field(description="The silos, each with its own data.", min_length=2)  # fmt: skip

    @field_validator("silos")
    @classmethod
    def _unique_names(cls, silos: list[SiloSection]) -> list[SiloSection]:
        names = [s.name for s in silos]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"silo names must be unique, repeated: {dup}")
        return silos

    @model_validator(mode="after")
    def _consistent(self) -> FederatedSection:
        if self.min_silos > len(self.silos):
            raise ValueError(f"min_silos = {self.min_silos} but only {len(self.silos)} silos")
        if self.final_adapter != "average" and self.strategy == "fedadam":
            raise ValueError(
                f'final_adapter = "{self.final_adapter}" needs a strategy that averages (fedavg, '
                'fedprox); FedAdam\'s last step is an Adam update: use final_adapter = "average"'
            )
        if self.secure_aggregation.enabled:
            self._secure_composes()
        if self.final_adapter != "average" and self.dp.mode != "off":
            raise ValueError(
                f'final_adapter = "{self.final_adapter}" combines the silos\' own adapters, which '
                'differential privacy keeps from the server: use final_adapter = "average" with dp'
            )
        return self

    def _secure_composes(self) -> None:
        """SecAgg+ hands the server one weighted sum: what needs more is refused, named."""
        if self.strategy == "fedadam":
            raise ValueError(
                'secure_aggregation composes with strategy = "fedavg" or "fedprox" (a weighted '
                'mean of the silos\' adapters); "fedadam" is not wired to it'
            )
        if self.final_adapter != "average":
            raise ValueError(
                f'final_adapter = "{self.final_adapter}" needs each silo\'s own adapter, which '
                'secure aggregation hides from the server: use final_adapter = "average"'
            )
        if self.dp.mode != "off":
            raise ValueError(
                f'dp.mode = "{self.dp.mode}" with secure_aggregation: Flower\'s DP wrappers act on '
                "the plain replies that SecAgg+ replaces, and legalbuild does not wire the two "
                "together; choose one of the two"
            )
