"""Benchmark: a fully cached `legalbuild build` vs `python -c "import torch"`, and normalize throughput.

Prints, from one run:
  - wall time of a no-op (fully cached) build of a normalize-only recipe, and of importing torch,
    as a ratio (the no-op build must be well under 1: it never imports torch);
  - normalize records/second on 5,000 rows.

    .venv/bin/python bench/noop_build.py [--rows 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd: list[str], env: dict, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _write_project(root: Path, rows: int) -> Path:
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(rows):
            clause = f"Clause {i}: The Supplier may terminate this Agreement at any time for convenience with {i % 90} days notice."
            f.write(
                json.dumps(
                    {
                        "instruction": f"Audit this clause.\n\n{clause}",
                        "output": f"Risk: medium\nFinding 1: One-sided termination [term.one_sided.{i % 40}] (severity: medium)\nWhy: case {i}.",
                    }
                )
                + "\n"
            )
    recipe = root / "recipe.toml"
    recipe.write_text(
        '[project]\nname = "bench"\n[[data.sources]]\nname = "pairs"\npath = "pairs.jsonl"\n[eval]\nenabled = false\n'
    )
    return recipe


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="seconds: 200 rows, one repeat (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.repeat = 200, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = _write_project(root, args.rows)
        env = {**os.environ, "LEGALBUILD_CACHE": str(root / "cache")}
        build = [sys.executable, "-m", "legalbuild", "build", str(recipe), "--until", "normalize"]

        t = time.perf_counter()
        subprocess.run(build, env=env, check=True, capture_output=True)
        first = time.perf_counter() - t
        manifest = next((root / "cache" / "entries" / "normalize").glob("*/manifest.json"))
        stage_s = json.loads(manifest.read_text())["timings"]["seconds"]

        noop = _time(build, env, args.repeat)
        torch_import = _time([sys.executable, "-c", "import torch"], env, args.repeat)
        bare = _time([sys.executable, "-c", "pass"], env, args.repeat)

    print(f"rows                          {args.rows}")
    print(f"normalize stage               {stage_s:.3f} s  -> {args.rows / stage_s:,.0f} records/s")
    print(f"first build (CLI, cold)       {first:.3f} s")
    print(f"no-op cached build (median)   {noop:.3f} s")
    print(f"python -c 'import torch'      {torch_import:.3f} s")
    print(f"python -c 'pass'              {bare:.3f} s")
    print(f"ratio no-op build / torch import = {noop / torch_import:.2f}")


if __name__ == "__main__":
    main()
