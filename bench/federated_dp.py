"""What Flower's differential-privacy clipping costs the coordinator per round, on adapters of the
default recipe's size (SmolLM2-135M, all-linear r16: 4.88M parameters), and how much noise it adds.

    .venv/bin/python bench/federated_dp.py            # 3 silos, 4.88M-parameter adapters
    .venv/bin/python bench/federated_dp.py --smoke    # 20k parameters

Runs in the Flower venv (`.venv-flower`, or LEGALBUILD_FLOWER_VENV): Flower's FedAvg alone, then
wrapped in DifferentialPrivacyServerSideFixedClipping (the coordinator clips each silo's update
and adds noise) and DifferentialPrivacyClientSideFixedClipping (the silos clip, with Flower's
fixedclipping_mod; the coordinator adds noise), on the same replies: seconds of configure +
aggregate per round, and the noise's norm against the clipped mean update's norm. Each silo's
update has norm 2 x clipping_norm, so server-side clipping halves it. Client-side clipping costs
each silo one clip of its own update (the same arithmetic, not timed here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCRIPT = """
import json, sys, time
import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import compute_clip_model_update
from flwr.supercore.task_identity import TaskIdentity
from legalbuild.federated.coordinator import from_record, make_strategy, to_record

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
params, silos, clip, noise, repeats = (float(a) for a in sys.argv[1:6])
params, silos, repeats = int(params), int(silos), int(repeats)
rng = np.random.default_rng(0)
shape = (params // 1024, 1024)
start = {"m.lora_A.weight": rng.normal(size=shape).astype("float32")}
updates = []
for _ in range(silos):
    step = rng.normal(size=shape)
    step *= 2 * clip / np.linalg.norm(step)  # every update twice the clipping norm
    updates.append({"m.lora_A.weight": (start["m.lora_A.weight"] + step).astype("float32")})

class Grid:
    def get_node_ids(self):
        return list(range(1, silos + 1))

def replies(messages, clip_here):
    out = []
    for msg, u in zip(messages, updates):
        if clip_here:  # what fixedclipping_mod does on the silo
            clipped = [u["m.lora_A.weight"].copy()]
            compute_clip_model_update(clipped, [start["m.lora_A.weight"]], clip)
            u = {"m.lora_A.weight": clipped[0]}
        content = RecordDict({"arrays": to_record(u), "metrics": MetricRecord({"num-examples": 100})})
        out.append(Message(content, reply_to=msg))
    return out

result = {}
for mode in ("off", "server-fixed", "client-fixed"):
    spec = {"strategy": "fedavg", "on_silo_failure": "fail", "min_silos": 2, "proximal_mu": 0.0,
            "server_learning_rate": 0.1, "learning_rate": 0.01,
            "dp": {"mode": mode, "clipping_norm": clip, "noise_multiplier": noise}}
    times = []
    for rnd in range(1, repeats + 1):
        strategy = make_strategy(spec, silos)
        began = time.perf_counter()
        messages = list(strategy.configure_train(rnd, to_record(start), ConfigRecord({}), Grid()))
        got, _ = strategy.aggregate_train(rnd, replies(messages, mode == "client-fixed"))
        times.append(time.perf_counter() - began)
    new = from_record(got)["m.lora_A.weight"] - start["m.lora_A.weight"]
    result[mode] = {"seconds": min(times), "update_norm": float(np.linalg.norm(new))}
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    args = parser.parse_args()
    from legalbuild.federated.environment import flower_ready, flower_venv

    venv = flower_venv()
    if not flower_ready(venv):
        raise SystemExit(f"no Flower venv at {venv}: bash scripts/setup-flower.sh")
    params = 20_480 if args.smoke else 4_884_480
    argv = [str(venv / "bin" / "python"), "-c", SCRIPT, str(params), "3", "1.0"]
    argv += [str(args.noise_multiplier), "1" if args.smoke else "3"]
    out = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{params:,} parameters, 3 silos, clipping_norm 1.0, noise_multiplier {args.noise_multiplier}"
    )
    for mode, r in result.items():
        print(
            f"  dp {mode:13} {r['seconds'] * 1000:8.1f} ms per round, aggregated update norm {r['update_norm']:.3f}"
        )
    ratio = result["server-fixed"]["seconds"] / result["off"]["seconds"]
    print(f"ratio server-side DP / plain aggregation time: {ratio:.2f}")


if __name__ == "__main__":
    main()
