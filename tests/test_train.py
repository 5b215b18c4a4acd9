"""The train stage on real models: the tiny Llama fixture (fast) and the packaged SmolLM2 (slow).

Contexts come from tests/helpers.stage_context; normalize's train/val files are written here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_CLAUSES, audit_row, audit_split, base_output, train_context, write_split

from legalbuild.errors import RecipeError, StageFailedError
from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT, LoraSection, ModelSection, TrainSection
from legalbuild.stages import train
from legalbuild.training import data as train_data
from legalbuild.training import model as train_model
from legalbuild.training.monitoring import detect_overfitting


def greedy_ids(model, tokenizer, instruction: str, n: int = 12) -> list[int]:
    import torch

    from legalbuild.prompting import chat_messages

    inputs = tokenizer.apply_chat_template(
        chat_messages(DEFAULT_SYSTEM_PROMPT, instruction),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def answer_loss(model, tokenizer, row: dict) -> float:
    """Mean loss of the answer tokens given the prompt, the way training scores them."""
    import torch

    from legalbuild.prompting import prompt_completion_row

    example = prompt_completion_row(DEFAULT_SYSTEM_PROMPT, row["instruction"], row["output"])
    prompt = tokenizer.apply_chat_template(
        example["prompt"], add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def losses(history: list[dict], key: str = "loss") -> list[float]:
    return [e[key] for e in history if key in e]


# --------------------------------------------------------------------------------- pure helpers
def test_overfitting_needs_rising_validation_and_falling_training_loss():
    def history(train_losses, val_losses):
        return [{"step": i + 1, "loss": v} for i, v in enumerate(train_losses)] + [
            {"step": i + 1, "eval_loss": v} for i, v in enumerate(val_losses)
        ]

    event = detect_overfitting(history([3, 2.5, 2, 1.5], [2.0, 2.1, 2.2, 2.3]), patience=3)
    assert event and event["step"] == 4 and "validation loss rose 3 evaluations" in event["message"]
    assert (
        detect_overfitting(history([3, 2.5, 2, 1.5], [2.0, 2.1, 2.0, 2.3]), patience=3) is None
    )  # not monotone
    assert (
        detect_overfitting(history([1, 2, 3, 4], [2.0, 2.1, 2.2, 2.3]), patience=3) is None
    )  # training diverges
    assert (
        detect_overfitting(history([3, 2], [2.0, 2.1]), patience=3) is None
    )  # too few evaluations


def test_truncation_is_counted_with_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"instruction": "Audit this clause: short.", "output": "Risk: none"},
        {"instruction": "Audit this clause: " + "word " * 300, "output": "Risk: none"},
        {"instruction": "Audit this clause: short.", "output": "Risk: low " * 200},
    ]
    lengths = train_data.token_lengths(tokenizer, rows, "You audit.")
    report = train_data.length_report(lengths, max_length=128)
    assert (
        report["truncated"] == 2 and report["dropped"] == 1
    )  # the long prompt alone fills max_length
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You audit."},
            {"role": "user", "content": rows[0]["instruction"]},
            {"role": "assistant", "content": "Risk: none"},
        ],
        tokenize=False,
    )
    assert lengths[0][1] == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_precision_resolution_on_cpu():
    from legalbuild.hardware import auto_precision, cpu_native_bf16

    # auto follows the CPU's bf16 capability (this host's /proc/cpuinfo), never a fixed choice
    assert train_model.resolve_precision("auto", "cpu") == ("bf16" if cpu_native_bf16() else "fp32")
    assert auto_precision("cpu", frozenset({"avx512f", "avx512_bf16"})) == "bf16"
    assert auto_precision("cpu", frozenset({"amx_tile", "amx_bf16"})) == "bf16"
    assert auto_precision("cpu", frozenset({"avx512f", "avx512_vnni"})) == "fp32"
    assert auto_precision("cuda") == "gpu-auto"
    assert "native bf16" in train_model.precision_reason("auto", "cpu") or not cpu_native_bf16()
    assert train_model.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        train_model.resolve_precision("fp16", "cpu")


def test_light_helpers_import_nothing_heavy():
    code = (
        "import sys; from legalbuild.stages import train; from legalbuild.engine.keys import library_versions;"
        "v = library_versions();"
        "print(sorted(v), sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert (
        out.strip() == "['accelerate', 'bitsandbytes', 'peft', 'torch', 'transformers', 'trl'] []"
    )


# ------------------------------------------------------------------------- frozen weights, QLoRA
def test_frozen_check_trips_when_base_weights_train(tiny_model_dir):
    model = train_model.load_base_model(tiny_model_dir, ModelSection(), "cpu", "fp32")
    model = train_model.attach_lora(model, LoraSection(), TrainSection(), quantized=False)
    report = train_model.check_frozen(model)
    assert report["trainable_parameters"] == 2 * (
        (8 * 64 + 64 * 8) + (8 * 64 + 32 * 8)
    )  # 2 layers; q 64->64, v 64->32
    assert report["base_frozen_fraction"] == 1.0
    # The misconfiguration: something unfreezes the (tied) embeddings besides the adapter.
    model.get_input_embeddings().weight.requires_grad_(True)
    with pytest.raises(StageFailedError, match="embed_tokens"):
        train_model.check_frozen(model)


def lora_grad_sum(model, ids) -> float:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return sum(
        p.grad.abs().sum().item()
        for n, p in model.named_parameters()
        if "lora_B" in n and p.grad is not None
    )


def qlora_model(model_dir: Path, guard: bool):
    """A 4-bit tiny model with LoRA, with the stage's CPU guard or (control) without it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if guard:
        model = train_model.load_base_model(
            model_dir, ModelSection(quantization="4bit-nf4"), "cpu", "fp32"
        )
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=config, device_map="cpu"
        )
    return train_model.attach_lora(model, LoraSection(), TrainSection(), quantized=True)


def evaluate_without_grad(model, ids) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def test_qlora_gradients_survive_an_evaluation_on_cpu(tiny_model_dir):
    import torch

    torch.manual_seed(0)
    ids = torch.randint(100, 2000, (2, 24))
    model = qlora_model(tiny_model_dir, guard=True)
    assert lora_grad_sum(model, ids) > 0
    evaluate_without_grad(model, ids)
    assert lora_grad_sum(model, ids) > 0, "LoRA gradients vanished after a no-grad forward"
    # and the loss still falls when training continues after the evaluation
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model(input_ids=ids, labels=ids).loss.item()
    for _ in range(5):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    assert model(input_ids=ids, labels=ids).loss.item() < before - 0.01


def test_qlora_trap_exists_without_the_guard(tiny_model_dir):
    """Control for the test above: on CPUs with AVX512-BF16, the unguarded model loses its gradients."""
    import torch
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("the trap needs a CPU with AVX512-BF16")
    ids = torch.randint(100, 2000, (2, 24))
    model = qlora_model(tiny_model_dir, guard=False)
    assert lora_grad_sum(model, ids) > 0
    evaluate_without_grad(model, ids)
    assert lora_grad_sum(model, ids) == 0


# --------------------------------------------------------------------------------- the stage, tiny
def test_train_stage_learns_and_writes_its_outputs(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_out = base_output(tmp_path, tiny_model_dir)
    ctx = train_context(
        tmp_path,
        base_out,
        audit_split(tmp_path / "normalize"),
        {"max_steps": 8, "eval_steps": 4, "eval_rows": 3},
    )
    metrics = train.run(ctx)

    out = ctx.out_dir
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
        "log_history.json",
        "metrics.json",
        "samples.jsonl",
        "loss.png",
    ):
        assert (out / name).exists(), name
    history = json.loads((out / "log_history.json").read_text())
    train_losses = losses(history)
    assert train_losses[-1] < train_losses[0] - 0.05, train_losses
    assert losses(history, "eval_loss")[-1] < losses(history, "eval_loss")[0]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == 8 and saved["best_step"] == 8 and saved["overfitting"] is False
    assert saved["truncated_rows"] == 0 and saved["frozen_fraction"] > 0.99
    timings = json.loads((ctx.logs_dir / "timings.json").read_text())  # beside out/, not in it
    assert timings["metrics"]["tokens_per_second"] > 0 and metrics["tokens_per_second"] > 0
    assert "tokens_per_second" not in saved and "train_runtime" not in history[-1]
    assert metrics["val_loss"] == pytest.approx(saved["best_val_loss"])
    assert saved["validation_rows_used"] == 3  # of 4, capped by eval_rows
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["kind"]) for s in samples] == [
        (4, "val"),
        (4, "clause"),
        (8, "val"),
        (8, "clause"),
    ]
    assert samples[0]["reference"].startswith("Risk: high")
    # the samples' parse rate is logged at each evaluation (trackers, log history, metrics.json)
    assert all(isinstance(s["parses"], bool) for s in samples)
    rates = [e for e in history if "eval_format_rate" in e]
    assert [e["step"] for e in rates] == [4, 8] and all(
        0 <= e["eval_format_rate"] <= 1 for e in rates
    )
    assert saved["format_rate"] == rates[-1]["eval_format_rate"]

    # The adapter changes what the model says: a random-init model answers newlines either way, so
    # compare how likely the audit answer becomes.
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    row = audit_row(7, random.Random(7))
    before = answer_loss(base_model, tokenizer, row)
    adapted = PeftModel.from_pretrained(base_model, out / "adapter")
    assert answer_loss(adapted, tokenizer, row) < before - 0.05


def crash_after_save(step: int):
    """A TrainerCallback that raises right after the checkpoint of `step` is written: a killed build."""
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise SimulatedCrash(
                    f"simulated crash after the checkpoint of step {state.global_step}"
                )

    return CrashAfterSave()


class SimulatedCrash(RuntimeError):
    pass


def test_a_killed_build_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir):
    base_out = base_output(tmp_path, tiny_model_dir)
    normalize = audit_split(tmp_path / "normalize")
    settings = {"max_steps": 4, "save_steps": 2, "eval_steps": 2}
    with pytest.raises(SimulatedCrash):
        train.run(
            train_context(tmp_path, base_out, normalize, settings), callbacks=[crash_after_save(2)]
        )
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-2").is_dir()

    ctx = train_context(tmp_path, base_out, normalize, settings)
    metrics = train.run(ctx)
    assert metrics["resumed_from"] == "checkpoint-2"
    assert metrics["global_step"] == 4
    history = json.loads((ctx.out_dir / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [
        1,
        2,
        3,
        4,
    ]  # steps 1-2 restored, 3-4 trained now
    samples = [
        json.loads(line)["step"]
        for line in (ctx.out_dir / "samples.jsonl").read_text().splitlines()
    ]
    assert samples == [2, 2, 4, 4]


def test_overfitting_is_flagged_and_early_stopping_keeps_the_best(tmp_path, tiny_model_dir):
    """Validation answers share nothing with training answers: learning the training format can only
    make them less likely, so validation loss rises while training loss falls."""
    rng = random.Random(1)
    unrelated = [
        "zebra",
        "quantum",
        "violin",
        "marmalade",
        "nebula",
        "saxophone",
        "glacier",
        "origami",
    ]
    val_rows = [
        {
            "id": f"v{i}",
            "instruction": f"Audit this clause: {rng.choice(TRAIN_CLAUSES)}",
            "output": " ".join(rng.choice(unrelated) for _ in range(30)),
        }
        for i in range(4)
    ]
    normalize = write_split(
        tmp_path / "normalize", [audit_row(i, rng) for i in range(32)], val_rows
    )
    ctx = train_context(
        tmp_path,
        base_output(tmp_path, tiny_model_dir),
        normalize,
        {
            "max_steps": 12,
            "eval_steps": 1,
            "early_stopping_patience": 2,
            "overfit_patience": 2,
            "precision": "bf16",
            "samples": {"count": 0},
        },
    )
    metrics = train.run(ctx)

    stopped_at = metrics["global_step"]
    assert metrics["early_stopped"] is True and stopped_at < 12
    # patience 2: two evaluations without improvement after the best one, then stop
    assert metrics["best_step"] == stopped_at - 2
    assert metrics["overfitting"] is True and metrics["overfitting_events"][0]["step"] == stopped_at
    # the saved adapter is the best checkpoint's, not the last step's
    assert metrics["val_loss"] == pytest.approx(metrics["best_val_loss"])
    evals = losses(json.loads((ctx.out_dir / "log_history.json").read_text()), "eval_loss")
    assert evals[-1] > metrics["best_val_loss"]
    assert metrics["precision"] == "bf16"


def test_qlora_stage_trains_on_cpu_and_reports_to_offline_trackers(tmp_path, tiny_model_dir):
    ctx = train_context(
        tmp_path,
        base_output(tmp_path, tiny_model_dir),
        audit_split(tmp_path / "normalize"),
        {"max_steps": 6, "eval_steps": 2, "report_to": ["wandb", "tensorboard", "trackio"]},
        model={"quantization": "4bit-nf4"},
    )
    metrics = train.run(ctx)

    history = json.loads((ctx.out_dir / "log_history.json").read_text())
    train_losses = losses(history)
    assert train_losses[-1] < train_losses[2] - 0.02, (
        train_losses
    )  # still falling after the step-2 evaluation
    assert metrics["quantization"] == "4bit-nf4"
    tracking = ctx.logs_dir / "tracking"  # run logs (they carry paths) stay out of out/
    assert not (ctx.out_dir / "tracking").exists()
    assert list((tracking / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tracking / "trackio").glob("*.db"))
    [wandb_run] = list((tracking / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    logged = wandb_run.read_bytes()
    assert b"lora/q_proj.lora_A" in logged and b"eval/loss" in logged
    assert "WANDB_MODE" not in os.environ or os.environ.get(
        "WANDB_API_KEY"
    )  # the environment was restored


def test_8bit_stage_trains_on_cpu(tmp_path, tiny_model_dir):
    ctx = train_context(
        tmp_path,
        base_output(tmp_path, tiny_model_dir),
        audit_split(tmp_path / "normalize"),
        {"max_steps": 4, "samples": {"count": 0}},
        model={"quantization": "8bit"},
    )
    metrics = train.run(ctx)
    train_losses = losses(json.loads((ctx.out_dir / "log_history.json").read_text()))
    assert metrics["quantization"] == "8bit"
    assert train_losses[-1] < train_losses[0] - 0.02, train_losses


# ----------------------------------------------------------------------------- the stage, SmolLM2
def base_model_fresh(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.mark.slow
def test_smollm2_lora_learns_the_audit_format(tmp_path, smollm2_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = train_context(
        tmp_path,
        smollm2_base,
        audit_split(tmp_path / "normalize", n_train=24, n_val=2),
        {
            "max_steps": 6,
            "batch_size": 4,
            "eval_steps": 3,
            "learning_rate": 2e-3,
            "max_length": 256,
            "samples": {"count": 1, "max_new_tokens": 24},
        },
    )
    metrics = train.run(ctx)

    history = json.loads((ctx.out_dir / "log_history.json").read_text())
    assert losses(history)[-1] < losses(history)[0] * 0.85, losses(history)
    assert metrics["trainable_parameters"] == 460_800
    model_dir = smollm2_base / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base_model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = greedy_ids(base_model, tokenizer, f"Audit this clause: {TRAIN_CLAUSES[2]}", n=20)
    adapted = PeftModel.from_pretrained(base_model, ctx.out_dir / "adapter")
    after = greedy_ids(adapted, tokenizer, f"Audit this clause: {TRAIN_CLAUSES[2]}", n=20)
    assert after != before
    # and the audit answer of an unseen row became much more likely
    row = audit_row(99, random.Random(99))
    assert answer_loss(adapted, tokenizer, row) < 0.85 * answer_loss(
        base_model_fresh(model_dir), tokenizer, row
    )


def test_packed_rows_do_not_attend_to_each_other(tiny_model_dir):
    """TRL's padding-free packing (bfd) sends position_ids that restart per row and no attention
    mask; transformers then masks block-diagonally, so each row's loss is what it is alone (TRL
    passes use_cache=False: with a KV cache transformers does not look for packed rows)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    rng = random.Random(0)
    rows = [[rng.randrange(5, 200) for _ in range(n)] for n in (9, 14, 6)]

    def per_token_loss(batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "position_ids") if k in batch}
        with torch.no_grad():  # no KV cache, as TRL trains: a cache turns the detection off
            logits = model(**inputs, use_cache=False).logits
        return torch.nn.functional.cross_entropy(
            logits[0, :-1], batch["labels"][0, 1:], reduction="none", ignore_index=-100
        )

    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": r} for r in rows]
    )
    assert "attention_mask" not in packed and packed["position_ids"][0, 9].item() == 0
    together = per_token_loss(packed)
    start = 0
    for row in rows:
        alone = per_token_loss({"input_ids": torch.tensor([row]), "labels": torch.tensor([row])})
        # the first token of a packed row is never predicted (its label is -100)
        assert torch.allclose(together[start : start + len(row) - 1], alone, atol=1e-4)
        start += len(row)
