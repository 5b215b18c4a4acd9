"""[project], [data] and [curate]: what the build is and the pairs it trains on."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from legalbuild.recipe.fields import (
    DEFAULT_SYSTEM_PROMPT,
    NO_KEY,
    PathText,
    RemoteFile,
    Strict,
    TaskName,
    _at_least,
)


# ---------------------------------------------------------------------------------------- project
class ProjectSection(Strict):
    name: str = Field(
        description="Short identifier of the build (letters, digits, '-', '_'); names the served model by default.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    )
    description: str = Field(
        "", description="Free text, shown in reports.", json_schema_extra=NO_KEY
    )


# ------------------------------------------------------------------------------------------- data
class DataSource(Strict):
    name: str = Field(
        description="Name kept on every row from this source (for stats and balance)."
    )
    path: PathText = Field(
        description="File or folder, relative to the recipe: .jsonl, .json (array), .csv, .parquet, "
        "or a `datasets` save_to_disk folder."
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf_disk"] = Field(
        "auto", description="File format; `auto` decides from the extension (folder: hf_disk)."
    )
    instruction_field: str = Field("instruction", description="Column mapped onto `instruction`.")
    input_field: str | None = Field(
        "input",
        description="Optional Alpaca-style context column, folded into the instruction after a blank "
        'line when present and non-empty. Set to "" to ignore.',
    )
    output_field: str = Field("output", description="Column mapped onto `output`.")
    group_field: str | None = Field(
        None,
        description='Column naming the group (e.g. source document) a row belongs to, for split.by = "group".',
    )
    meta_fields: list[str] = Field(
        default_factory=list,
        description="Extra columns copied into each row's `meta` (e.g. rule_id, severity).",
    )
    limit: int | None = Field(
        None, ge=1, description="Read at most this many rows (after mapping)."
    )


class SplitSettings(Strict):
    val_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of rows (or groups) held out for validation."
    )
    test_fraction: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Share of rows (or groups) held out as a test split (`test.jsonl`), used for "
        "neither training nor choosing settings: eval reports on it when it is not empty (else on "
        "the validation rows, with a warning). Taken from the hash range just above val_fraction, "
        "so adding a test split never moves validation rows.",
    )
    by: Literal["row", "group"] = Field(
        "row",
        description="`row`: each row goes to a side by a hash of its instruction (stable when data grows); "
        "`group`: whole groups (documents) go to one side by a hash of the group value.",
    )
    salt: str = Field(
        "legalbuild", description="Mixed into the split hash; change it to draw a different split."
    )


class FilterSettings(Strict):
    min_instruction_chars: int = Field(
        8, ge=0, description="Rows with a shorter instruction are dropped."
    )
    max_instruction_chars: int = Field(
        8000, ge=1, description="Rows with a longer instruction are dropped."
    )
    min_output_chars: int = Field(8, ge=0, description="Rows with a shorter output are dropped.")
    max_output_chars: int = Field(8000, ge=1, description="Rows with a longer output are dropped.")

    @field_validator("max_instruction_chars", "max_output_chars")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _at_least(info, info.field_name.replace("max_", "min_"), value)


class DataSection(Strict):
    sources: list[DataSource] = Field(
        default_factory=list,
        description="Instruction/response files to normalize. The curated pairs of [curate], when that "
        "section is present, are added as a source named `curated`.",
    )
    split: SplitSettings = Field(
        default_factory=SplitSettings, description="Train/validation split."
    )
    filters: FilterSettings = Field(default_factory=FilterSettings, description="Length filters.")
    dedup: Literal["none", "exact", "normalized"] = Field(
        "normalized",
        description="Duplicate removal: `exact` text, or `normalized` (case, punctuation and whitespace folded).",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail",
        description="A bad row (unparseable, missing field, wrong type): `fail` stops with file:line, "
        "`skip` writes it to rejects.jsonl and counts it by reason.",
    )
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT,
        description="System message used identically in training, evaluation and serving.",
    )
    target_min_pairs: int = Field(
        2000, ge=1, description="Warn when fewer training pairs come out.", json_schema_extra=NO_KEY
    )
    target_max_pairs: int = Field(
        5000, ge=1, description="Warn when more training pairs come out.", json_schema_extra=NO_KEY
    )

    @field_validator("target_max_pairs")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _at_least(info, "target_min_pairs", value)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[DataSource]) -> list[DataSource]:
        names = [s.name for s in sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {dup}")
        return sources


# ---------------------------------------------------------------------------------------- curate
class ContractCorpus(Strict):
    kind: Literal["folder", "licensedcode", "nda_review"] = Field(
        description="`folder`: .txt/.md contracts under `path`; `licensedcode`: the EULA/SLA/licence texts "
        "of the licensedcode-data package; `nda_review`: the Common Paper NDA of nda-review-cli."
    )
    path: PathText | None = Field(
        None, description='Folder of contracts (kind = "folder" only), relative to the recipe.'
    )
    name: str | None = Field(
        None, description="Source name recorded on each pair (defaults to the kind)."
    )
    licence: str | None = Field(
        None, description="Licence of a user folder, recorded in the dataset card."
    )
    max_documents: int | None = Field(
        None, ge=1, description="Use at most this many documents (deterministic pick)."
    )


class LabelledSource(RemoteFile):
    """Clauses labelled by people (e.g. CUAD's expert annotators), turned into audit pairs whose
    findings come from their labels (legalbuild/curation/labelled.py). `path`, or `url` +
    `sha256`, name the file."""

    name: str = Field(
        description="Source name recorded on each pair (and in the dataset card).",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    )
    labels: Literal["cuad"] = Field(
        "cuad",
        description="How the labels are read: `cuad`, clause-level CUAD v1 rows (id, document, "
        "text, categories), answered by the table in legalbuild/curation/cuad.py.",
    )
    licence: str = Field(
        "CC-BY-4.0 (CUAD v1, The Atticus Project)",
        description="Licence and attribution recorded in the dataset card.",
    )
    pairs: int = Field(1000, ge=1, description="Pairs to make, at most one per labelled clause.")
    plain_share: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Share asked with the plain question (no playbook, no rule list), as an "
        "OpenAI client asks; the others are asked as `legalbuild audit --playbook` asks.",
    )
    playbooks: list[str] = Field(
        default_factory=lambda: ["consulting-msa", "saas-vendor", "software-license"],
        description="Playbooks the non-plain questions name (one per clause, seeded); where one of "
        "a playbook's listed rules means the clause's red flag, the answer cites that rule.",
    )


class CurateSection(Strict):
    """Turn contracts + red-flag rulebooks into audit pairs (a cached stage feeding normalize)."""

    corpora: list[ContractCorpus] = Field(description="Where clauses come from.")
    rulebooks: list[PathText] = Field(
        default_factory=lambda: ["package:redline-buddy"],
        description="YAML playbook files or folders (relative to the recipe), or `package:redline-buddy` "
        "for the packaged 431-rule default.",
    )
    target_pairs: int = Field(3000, ge=10, description="How many pairs to produce.")
    seed: int = Field(
        13, description="Seed for every random choice; the same seed gives the same pairs."
    )
    task_mix: dict[TaskName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {
            "audit": 0.35,
            "defect": 0.30,
            "fix": 0.15,
            "explain": 0.10,
            "missing": 0.10,
        },
        description="Relative share of each task kind: audit, defect, fix, explain, missing.",
    )
    clean_share: float = Field(
        0.2, ge=0, le=0.9, description="Share of audit pairs on clauses with no red flag."
    )
    plain_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of audit pairs asked with the plain question (`Audit this contract "
        "clause:` alone, no playbook, no rule list), as an OpenAI client asks; their findings are "
        "the playbook's that the clause fails.",
    )
    labelled: list[LabelledSource] = Field(
        default_factory=list,
        description="Clauses labelled by people, made into pairs beside the rulebook's (their "
        "count is on top of target_pairs).",
    )
    max_rule_share: float = Field(
        0.05, gt=0, le=1, description="Cap on the share of pairs citing any one rule."
    )
    max_source_share: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Cap on the share of pairs from any one corpus (of the pairs produced: a small "
        "corpus limits how many pairs a large one may add).",
    )
    max_severity_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Cap on the share of pairs of any one severity (high, medium, low).",
    )
    min_clause_chars: int = Field(120, ge=20, description="Shorter clauses are not used.")
    max_clause_chars: int = Field(1500, ge=100, description="Longer clauses are not used.")
    max_contract_chars: int = Field(
        3200,
        ge=200,
        description="Length cap of the short contracts of `missing` tasks (clauses are added while "
        "they fit). Shorter rows train faster on a CPU.",
    )

    @field_validator("task_mix")
    @classmethod
    def _some_task(cls, mix: dict[str, float]) -> dict[str, float]:
        if not sum(mix.values()) > 0:
            raise ValueError("give at least one task a share above 0")
        return mix

    @field_validator("max_clause_chars")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _at_least(info, "min_clause_chars", value)
