"""Shared fixtures: real models that exist offline.

- `tiny_model_dir`: a 2-layer Llama with SmolLM2's real tokenizer (see `helpers.tiny_model`).
- `smollm2_gguf`: the packaged SmolLM2-135M-Instruct GGUF file (the embedded default base).
- `smollm2_base`: that GGUF converted by the base stage once per machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import TEST_CACHE, smollm2_gguf_path, stage_context, tiny_model


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


@pytest.fixture(scope="session")
def smollm2_base(smollm2_gguf) -> Path:
    """The packaged SmolLM2 converted by the base stage once per machine (the conversion costs ~40 s)."""
    from legalbuild.engine.code_digest import code_version
    from legalbuild.stages import base

    dest = TEST_CACHE / f"smollm2-base-{code_version(base.__name__)}"
    if not (dest / "model" / "config.json").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        ctx = stage_context(tmp, "base")
        base.run(ctx)
        ctx.out_dir.rename(dest)
        shutil.rmtree(tmp)
    return dest


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server where its binaries are installed (Debian's postgresql);
    skipped elsewhere, saying why."""
    from helpers import postgres_binaries, postgres_server

    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries here (Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root with no `postgres` user to run the server as")
    with postgres_server(binaries) as url:
        yield url
