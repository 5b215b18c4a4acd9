"""The merge stage on the tiny Llama with a hand-made LoRA adapter (real transformers + peft), and
the export of the merged folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import make_recipe, random_adapter, stage_context, write_json

from legalbuild.engine.context import StageContext
from legalbuild.errors import LegalbuildError, StageFailedError
from legalbuild.export import MANIFEST_NAME, export_artifact
from legalbuild.merging import checks
from legalbuild.stages import merge

IM_END_ID = 2  # `<|im_end|>` in SmolLM2's tokenizer: the ChatML end of turn and the tokenizer's eos


def merge_context(tmp: Path, base_dir: Path, adapter_dir: Path, **merge_settings) -> StageContext:
    """inputs["base"]/model and inputs["train"]/adapter, as the pipeline lays them out."""
    return stage_context(
        tmp,
        "merge",
        make_recipe(merge=merge_settings),
        {"base": {"model": base_dir}, "train": {"adapter": adapter_dir}},
    )


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def merged_fp32(tiny_model_dir, adapter_dir, tmp_path_factory) -> tuple[StageContext, dict]:
    ctx = merge_context(
        tmp_path_factory.mktemp("merge-fp32"), tiny_model_dir, adapter_dir, dtype="float32"
    )
    metrics = merge.run(ctx)
    return ctx, metrics


def test_fp32_merge_matches_base_plus_adapter(merged_fp32):
    ctx, metrics = merged_fp32
    report = json.loads((ctx.out_dir / "merge.json").read_text())
    assert report["ok"], report["checks"]
    assert {c["name"] for c in report["checks"]} >= {
        "logit_parity",
        "no_adapter_files",
        "tied_embeddings",
        "chat_template_round_trip",
        "generation_stops_at_end_of_turn",
    }
    # Recorded, and tiny: fp32 merging only reorders a few float additions.
    assert 0 <= report["max_logit_diff"] < 1e-4
    assert metrics["max_logit_diff"] == report["max_logit_diff"]
    assert report["max_adapter_weight_delta"] > 0
    assert report["parameters"] > 3_000_000 and report["size_bytes"] > 10_000_000
    assert report["adapter_trained_against"] == "none"


def test_merged_folder_is_a_plain_model(merged_fp32):
    model_dir = merged_fp32[0].out_dir / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert (
        "model.safetensors" in names
        and "chat_template.jinja" in names
        and "tokenizer.json" in names
    )
    assert not names & set(checks.ADAPTER_FILES)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert IM_END_ID in (eos if isinstance(eos, list) else [eos])


def test_merged_weights_differ_from_base_only_where_adapted(merged_fp32, tiny_model_dir):
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(merged_fp32[0].out_dir / "model" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    assert (merged[q] - base[q]).abs().max() > 1e-3  # the adapter landed in q_proj
    assert (merged[k] == base[k]).all()  # k_proj was not adapted
    assert set(merged) == set(base)  # no lora_A/lora_B tensors, no new keys


def test_impossible_tolerance_in_bf16_fails_clearly(tiny_model_dir, adapter_dir, tmp_path):
    ctx = merge_context(
        tmp_path, tiny_model_dir, adapter_dir, dtype="bfloat16", max_logit_diff=1e-30
    )
    with pytest.raises(StageFailedError) as info:
        merge.run(ctx)
    assert "logit_parity" in str(info.value) and "bfloat16" in str(info.value)
    report = json.loads((ctx.out_dir / "merge.json").read_text())
    assert report["max_logit_diff"] > 1e-30 and not report["ok"]


def test_adapter_files_left_in_folder_fail_the_check(merged_fp32, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(merged_fp32[0].out_dir / "model", folder)
    (folder / "adapter_config.json").write_text("{}")
    result = checks.check_no_adapter_files(folder)
    assert not result["ok"] and "adapter_config.json" in result["detail"]
    with pytest.raises(StageFailedError, match="no_adapter_files"):
        checks.raise_on_failed_checks({"checks": [result]})


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    ctx = merge_context(tmp_path / "ctx", tiny_model_dir, empty)
    with pytest.raises(StageFailedError, match="adapter_model.safetensors"):
        merge.run(ctx)


def test_an_adapter_of_another_base_is_refused(tiny_model_dir, adapter_dir, tmp_path):
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter_dir, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/other-model@0123abc"
    (other / "adapter_config.json").write_text(json.dumps(config))
    ctx = merge_context(tmp_path / "ctx", tiny_model_dir, other)
    write_json(ctx.inputs["base"] / "base.json", {"kind": "folder", "sha256": "f" * 64})
    with pytest.raises(StageFailedError, match="trained on org/other-model@0123abc"):
        merge.run(ctx)


def test_quantized_base_is_refused(tiny_model_dir, adapter_dir, tmp_path):
    base = tmp_path / "nf4-base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    ctx = merge_context(tmp_path / "ctx", base, adapter_dir)
    with pytest.raises(StageFailedError, match="quantized weights"):
        merge.run(ctx)


def test_qlora_run_is_recorded(tiny_model_dir, adapter_dir, tmp_path):
    ctx = merge_context(tmp_path, tiny_model_dir, adapter_dir)
    ctx.recipe.model.quantization = "4bit-nf4"
    merge.run(ctx)
    report = json.loads((ctx.out_dir / "merge.json").read_text())
    assert report["adapter_trained_against"] == "4bit-nf4" and "nf4" in report["note"]
    assert report["dtype"] == "float32"


# ---------------------------------------------------------------------------------------- export
def test_export_copies_the_model_and_writes_a_manifest(merged_fp32, tmp_path):
    source = merged_fp32[0].out_dir / "model"
    dest = export_artifact(
        source,
        tmp_path / "artifact",
        {"recipe": "[project]\nname = 'x'\n", "licences": {"base": "Apache-2.0"}},
    )
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["licences"] == {"base": "Apache-2.0"} and manifest["recipe"].startswith(
        "[project]"
    )
    files = manifest["artifact"]["files"]
    assert set(files) == {p.name for p in source.iterdir()}
    assert (dest / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert files["model.safetensors"]["bytes"] == (source / "model.safetensors").stat().st_size


def test_export_refuses_a_non_empty_destination_and_force_replaces_only_an_export(
    merged_fp32, tmp_path
):
    source = merged_fp32[0].out_dir / "model"
    dest = tmp_path / "artifact"
    dest.mkdir()
    (dest / "keep.txt").write_text("someone's file")
    with pytest.raises(LegalbuildError, match="not empty"):
        export_artifact(source, dest, {})
    with pytest.raises(LegalbuildError, match="keep.txt"):
        export_artifact(source, dest, {}, force=True)  # not a previous export: nothing lost
    assert (dest / "keep.txt").read_text() == "someone's file"
    (dest / "keep.txt").unlink()
    export_artifact(source, dest, {})
    export_artifact(source, dest, {"again": True}, force=True)
    assert json.loads((dest / MANIFEST_NAME).read_text())["again"] is True
    assert not list(tmp_path.glob(".artifact.partial-*"))


def test_export_of_a_folder_that_is_not_a_model_fails(tmp_path):
    with pytest.raises(LegalbuildError, match="not a merged model folder"):
        export_artifact(tmp_path, tmp_path.parent / "out-x", {})
