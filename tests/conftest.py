"""Shared fixtures: real models that exist offline.

- `tiny_model_dir`: a 2-layer Llama with SmolLM2's real tokenizer (see `helpers.tiny_model`).
- `smollm2_gguf`: the packaged SmolLM2-135M-Instruct GGUF file (the embedded default base).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TEST_CACHE, TINY_VERSION, build_tiny_model, smollm2_gguf_path, tiny_model

__all__ = ["TEST_CACHE", "TINY_VERSION", "build_tiny_model"]  # bench/serve_bench.py imports them


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return tiny_model()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty legalbuild cache for one test (LEGALBUILD_CACHE points at it)."""
    d = tmp_path / "store"
    monkeypatch.setenv("LEGALBUILD_CACHE", str(d))
    return d
