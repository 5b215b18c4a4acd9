"""Every benchmark in bench/ runs in CI in its smoke mode (the tests' tiny model, seconds of work),
so none can rot: each must exit 0 and print the ratio it exists to measure. The figures of a smoke
run mean nothing; the real runs are documented in each script and in the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, flower_venv

BENCHES = {  # script: what its ratio line looks like
    "noop_build.py": r"ratio no-op build / torch import = \d",
    "audit_bench.py": r"concurrent is \d+\.\d+x faster",
    "train_throughput.py": r"ratio stage/plain: tokens/s \d",
    "train_distributed.py": r"ratio 2 processes / 1 process: \d",
    "serve_bench.py": r"vLLM / transformers: \d+\.\d+x requests/s",
    "federated_compare.py": r"ratio federated / central label accuracy: (\d|nan)",
    "federated_dp.py": r"ratio server-side DP / plain aggregation time: \d",
}


def test_every_bench_script_is_covered():
    assert sorted(p.name for p in (REPO / "bench").glob("*.py")) == sorted(BENCHES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHES))
def test_bench_runs_in_smoke_mode(script, tmp_path):
    if script.startswith("federated_") and flower_venv() is None:
        pytest.skip("no Flower venv (.venv-flower): `bash scripts/setup-flower.sh` makes it")
    env = {**os.environ, "LEGALBUILD_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(BENCHES[script], proc.stdout), proc.stdout[-3000:]
