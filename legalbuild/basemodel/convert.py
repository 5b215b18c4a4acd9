"""Turn the base model's source into a plain Hugging Face folder: a GGUF dequantized to float32
safetensors, or a folder copied as is; then its tokenizer saved beside it with a generation config
that stops at the chat template's end-of-turn token."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.basemodel.tokenizer import stop_at_end_of_turn, template_end_token
from legalbuild.errors import StageFailedError

if TYPE_CHECKING:
    from legalbuild.recipe import ModelSection

# Files of a Hugging Face folder that describe weights we re-save ourselves, or that do not matter.
_SKIP_ON_COPY = {".git", ".gitattributes", ".cache"}


def convert_gguf(gguf: Path, model_dir: Path, model: ModelSection) -> tuple[int, str]:
    import torch
    from transformers import AutoModelForCausalLM

    # Dequantized weights are kept in float32: Q4 blocks are not exactly representable in bf16.
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        trust_remote_code=model.trust_remote_code,
    )
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; it is plain
    # dequantized float weights by now, so drop the marker.
    loaded.hf_quantizer = None
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    loaded.save_pretrained(model_dir, safe_serialization=True)
    return parameter_count(loaded), type(loaded).__name__


def copy_folder(source: Path, model_dir: Path, model: ModelSection) -> tuple[int, str]:
    """Copy a Hugging Face folder as is (no reload: a 7B copy is I/O only) and size it on the meta device."""
    shutil.copytree(
        source, model_dir, ignore=lambda _d, names: [n for n in names if n in _SKIP_ON_COPY]
    )
    if not (model_dir / "config.json").exists():
        raise StageFailedError(
            f"[model.base] {source} has no config.json: not a Hugging Face model folder"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=model.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            config, trust_remote_code=model.trust_remote_code
        )
    return parameter_count(skeleton), type(skeleton).__name__


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are yielded once


def finish_tokenizer(source: tuple[str, Path | str], model_dir: Path) -> str:
    """Save the tokenizer (with its chat template) into model_dir and make generation stop at the
    template's end-of-turn token. Returns that token."""
    from transformers import AutoTokenizer, GenerationConfig

    kind, location = source
    location = Path(location)
    if kind in ("package", "gguf"):
        tokenizer = AutoTokenizer.from_pretrained(location.parent, gguf_file=location.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(location)
    if not tokenizer.chat_template:
        raise StageFailedError(
            f"the tokenizer from {location} has no chat template",
            hint="use an instruct/chat model, or set [model] tokenizer to one that has a chat template",
        )
    end_token = template_end_token(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(model_dir)

    config_path = model_dir / "generation_config.json"
    generation = (
        GenerationConfig.from_pretrained(model_dir) if config_path.exists() else GenerationConfig()
    )
    stop_at_end_of_turn(generation, tokenizer).save_pretrained(model_dir)
    return end_token
