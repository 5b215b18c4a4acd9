"""Training throughput of the train stage in 1 process against N processes (torchrun ranks) on
the same host, same recipe, same global batch, in one run.

    .venv/bin/python bench/train_distributed.py                 # tiny Llama, 1 vs 2 CPU ranks
    .venv/bin/python bench/train_distributed.py --nproc 8 --model path/to/hf-folder   # a GPU box

Tokens/s counts non-padding tokens of every rank over optimizer steps only (what the stage
reports as `tokens_per_second`). On a 2-core CPU two ranks share the same two cores (torchrun
gives each one thread) and add a gradient all-reduce per step: the point there is the mechanics.
Measured 2026-11-30 on a 2-core AMD EPYC (avx512f, avx512_bf16) busy with other nice'd jobs:
2 ranks / 1 process = 2.24x (tiny Llama, 20 steps) and 1.72x (SmolLM2-135M, 6 steps; 1 process
66-94 tokens/s against ~155 on a quiet machine): under contention one process's two OpenMP
threads wait on each other, one thread per rank does not, so it is no evidence of a speed-up. Each run is its own subprocess (the 1-process run keeps torch's default threads,
torchrun sets one per rank), in the order 1, N, N, 1 so that a load that changes during the
bench weighs on both; the ratio of the mean tokens/s N-process / 1-process is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CLAUSES = [
    "The Supplier's liability under this Agreement is unlimited and survives termination.",
    "Either party may terminate this Agreement at any time without notice or cause.",
    "Payment is due ninety days after the invoice date, without interest on late amounts.",
    "The Supplier may assign this Agreement to any third party without the Customer's consent.",
]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        clause = " ".join(rng.choice(CLAUSES) for _ in range(rng.randint(1, 3)))
        out.append(
            {
                "id": f"r{seed}-{i}",
                "instruction": f"Audit this clause: {clause}",
                "output": f"Risk: high\nFinding 1: One-sided clause [rule.{i % 4}] (severity: high)\n"
                "Why: It shifts risk to the customer.\nFix: Make it mutual.",
                "source": "bench",
                "group": f"g{i}",
                "meta": {},
            }
        )
    return out


def run_stage(root: Path, model: Path, args: argparse.Namespace, nproc: int) -> dict:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import Recipe
    from legalbuild.stages import train
    from legalbuild.training.outputs import TIMINGS

    global_batch = args.micro_batch * args.nproc
    settings = {
        "max_steps": args.steps,
        "batch_size": global_batch // nproc,  # the same global batch in both runs
        "gradient_accumulation_steps": 1,
        "eval_steps": 10_000,
        "save_steps": 10_000,
        "logging_steps": 1,
        "precision": args.precision,
        "report_to": ["none"],
        "samples": {"count": 0},
        **({"distributed": {"nproc_per_node": nproc}} if nproc > 1 else {}),
    }
    recipe = Recipe.model_validate(
        {
            "project": {"name": "bench"},
            "data": {"sources": [{"name": "x", "path": "x.jsonl"}]},
            "train": settings,
        }
    )
    folder = root / f"run-{nproc}"
    (folder / "out").mkdir(parents=True)
    ctx = StageContext(
        name="train",
        key=f"bench-{nproc}",
        recipe=recipe,
        recipe_path=root / "recipe.toml",
        out_dir=folder / "out",
        work_dir=folder / "work",
        inputs={"base": root / "base", "normalize": root / "normalize"},
        log_fn=lambda m: print(f"  [{nproc}] {m}", flush=True) if args.verbose else None,
    )
    started = time.perf_counter()
    metrics = train.run(ctx)
    # several processes: the stage returns metrics.json, whose run rates live in logs/timings.json
    timings = ctx.logs_dir / TIMINGS
    if "tokens_per_second" not in metrics and timings.is_file():
        metrics = {**metrics, **json.loads(timings.read_text())["metrics"]}
    return {
        "processes": nproc,
        "tokens_per_second": metrics["tokens_per_second"],
        "tokens_seen": metrics["tokens_seen"],
        "train_loss": metrics["train_loss"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="HF folder (default: the tests' tiny Llama)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the second run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=2, help="per rank, N-process run")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--only", type=int, help=argparse.SUPPRESS)  # one run, in a subprocess
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: 2 steps of 16 rows, one run each (CI)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.rows = 2, 16
    if args.only is None:
        return compare(args)

    from helpers import tiny_model, write_jsonl

    model = (args.model or tiny_model()).resolve()
    with tempfile.TemporaryDirectory(prefix="legalbuild-bench-dist-") as tmp:
        root = Path(tmp)
        (root / "base").mkdir()
        (root / "base" / "model").symlink_to(model)
        write_jsonl(root / "normalize" / "train.jsonl", rows(args.rows, 0))
        write_jsonl(root / "normalize" / "val.jsonl", rows(4, 1))
        result = run_stage(root, model, args, args.only)
    print("RESULT " + json.dumps(result), flush=True)


def compare(args: argparse.Namespace) -> None:
    from legalbuild.hardware import host_summary

    results = []
    for n in (1, args.nproc) if args.smoke else (1, args.nproc, args.nproc, 1):
        argv = [sys.executable, __file__, *sys.argv[1:], "--only", str(n)]
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
        if args.verbose:
            print(done.stdout, end="")
        r = json.loads(
            next(ln for ln in done.stdout.splitlines()[::-1] if ln.startswith("RESULT "))[7:]
        )
        results.append(r)
        print(
            f"{r['processes']} process(es): {r['tokens_per_second']:,.0f} tokens/s "
            f"({r['tokens_seen']:,} tokens, {r['wall_seconds']} s wall, final loss {r['train_loss']:.4f})",
            flush=True,
        )

    def mean(n: int) -> float:
        speeds = [r["tokens_per_second"] for r in results if r["processes"] == n]
        return sum(speeds) / len(speeds)

    ratio = mean(args.nproc) / mean(1)
    runs = "1 run each" if args.smoke else "means of 2 runs each"
    print(f"ratio {args.nproc} processes / 1 process: {ratio:.2f}x tokens/s ({runs})")
    host = host_summary()
    print(f"host: {host['cpu']}, {host['cores']} cores, flags {' '.join(host['flags'])}")
    print("JSON " + json.dumps({"results": results, "ratio": round(ratio, 3), "host": host}))


if __name__ == "__main__":
    main()
