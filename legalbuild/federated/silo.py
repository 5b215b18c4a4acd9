"""Inside a silo (the ClientApp, in the Flower venv): its rows are curated, normalized and trained
on here and never leave; what leaves is the adapter, the example count and validation losses.

The silo's spec (layout.silo_spec) carries a recipe whose data is the silo's own. Its prepared
rows are kept under data/ for the key of its data (`data_key`), so every round reuses them.
Each round trains `local-steps` optimizer steps with TRL's SFTTrainer and the recipe's [train]
settings (constant learning rate within the round, the coordinator's schedule across rounds, a
fresh optimizer: silos keep no state between rounds), from the global adapter it was sent.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from legalbuild.federated.layout import read_json
from legalbuild.recipe import DataSource, Recipe


def say(spec: dict[str, Any], message: str) -> None:
    print(f"silo {spec['name']}: {message}", flush=True)  # the silo's own log (supernode.log)


def prepared_data(spec: dict[str, Any]) -> Path:
    """curate (when the silo has [curate]) + normalize, inside the silo; reused per data key."""
    from legalbuild.data.normalize import normalize_sources

    silo_dir = Path(spec["silo_dir"])
    folder, stamp = silo_dir / "data", silo_dir / "data" / "data-key.txt"
    if stamp.is_file() and stamp.read_text() == spec["data_key"]:
        return folder
    recipe, recipe_dir = Recipe.model_validate(spec["recipe"]), Path(spec["recipe_dir"])
    tmp = silo_dir / "data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = list(recipe.data.sources)
    if recipe.curate is not None:
        sources.append(_curate(recipe, recipe_dir, tmp / "curated", lambda m: say(spec, m)))

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (recipe_dir / p).resolve()

    normalize_sources(sources, recipe.data, resolve, tmp, lambda m: say(spec, m))
    (tmp / "data-key.txt").write_text(spec["data_key"])
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _curate(recipe: Recipe, recipe_dir: Path, out: Path, log: Any) -> DataSource:
    from legalbuild.curation.corpora import load_corpus
    from legalbuild.curation.pairs import generate_pairs
    from legalbuild.curation.rulebook import load_rulebooks
    from legalbuild.data.rows import CURATED_GROUP_FIELD, CURATED_META_FIELDS, CURATED_SOURCE

    settings = recipe.curate
    assert settings is not None
    rulebook = load_rulebooks(list(settings.rulebooks), recipe_dir)
    documents = [doc for corpus in settings.corpora for doc in load_corpus(corpus, recipe_dir)]
    pairs, _ = generate_pairs(documents, rulebook, settings, log=log)
    out.mkdir(parents=True)
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.row(), ensure_ascii=False) + "\n")
    log(f"curated {len(pairs)} pairs from {len(documents)} documents")
    return DataSource(name=CURATED_SOURCE, path=str(out / "pairs.jsonl"), format="jsonl",
                      input_field=None, group_field=CURATED_GROUP_FIELD,
                      meta_fields=CURATED_META_FIELDS)  # fmt: skip


def row_counts(spec: dict[str, Any]) -> dict[str, int]:
    from legalbuild.training.data import read_rows

    folder = prepared_data(spec)
    counts = {"num-examples": len(read_rows(folder / "train.jsonl")),
              "val-rows": len(read_rows(folder / "val.jsonl"))}  # fmt: skip
    if counts["num-examples"] == 0:
        raise ValueError(f"silo {spec['name']}: no training row after normalize")
    say(spec, f"{counts['num-examples']} train rows, {counts['val-rows']} validation rows")
    return counts


class Local:
    """The base model with the silo's LoRA, its rows and the recipe's settings."""

    def __init__(
        self, spec: dict[str, Any], lora_r: int | None = None, lora_alpha: int | None = None
    ):
        from transformers import AutoTokenizer

        from legalbuild.hardware import torch_device
        from legalbuild.training.data import read_rows
        from legalbuild.training.model import attach_lora, load_base_model, resolve_precision

        self.spec = spec
        self.recipe = recipe = Recipe.model_validate(spec["recipe"])
        folder = prepared_data(spec)
        self.train_rows = read_rows(folder / "train.jsonl")
        self.val_rows = read_rows(folder / "val.jsonl")[: recipe.train.eval_rows]
        self.device = torch_device()
        self.precision = resolve_precision(recipe.train.precision, self.device)
        model_dir = Path(spec["base_dir"]) / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lora = recipe.lora.model_copy(
            update={k: v for k, v in (("r", lora_r), ("alpha", lora_alpha)) if v}
        )
        base = load_base_model(model_dir, recipe.model, self.device, self.precision)
        self.model = attach_lora(base, lora, recipe.train, False)

    def load(self, arrays: dict[str, Any]) -> None:
        import torch
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            self.model, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        )
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"the adapter sent has parameters this model lacks: {unexpected[:3]}")

    def arrays(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().float().cpu().numpy()
            for k, v in get_peft_model_state_dict(self.model).items()
        }

    def trainer(self, steps: int, lr: float, seed: int, mu: float) -> Any:
        from legalbuild.federated.proximal import proximal_trainer
        from legalbuild.training.data import to_dataset
        from legalbuild.training.fit import sft_config

        recipe, prompt = self.recipe, self.recipe.data.system_prompt
        train = recipe.train.model_copy(update={
            "max_steps": steps, "learning_rate": lr, "lr_scheduler": "constant", "warmup_ratio": 0.0,
            "seed": seed, "save_steps": steps + 1, "eval_steps": steps + 1, "early_stopping_patience": None})  # fmt: skip
        scratch = Path(self.spec["silo_dir"]) / "trainer"
        shutil.rmtree(scratch, ignore_errors=True)
        args = sft_config(
            train, scratch, self.device, self.precision, False, [], recipe.project.name
        )
        evaluation = to_dataset(self.val_rows, prompt) if self.val_rows else None
        return proximal_trainer(mu)(
            model=self.model, args=args, train_dataset=to_dataset(self.train_rows, prompt),
            eval_dataset=evaluation, processing_class=self.tokenizer)  # fmt: skip

    def val_loss(self, trainer: Any) -> float | None:
        """None without validation rows (or when max_length drops them all: TRL drops a row whose
        prompt alone fills it)."""
        value = trainer.evaluate().get("eval_loss") if self.val_rows else None
        return None if value is None else float(value)


def train_round(spec: dict[str, Any], arrays: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """One round's local training from the global adapter: (new adapter, metrics)."""
    rnd, started = int(config["server-round"]), time.perf_counter()
    say(spec, f"round {rnd}: received the global adapter")
    local = Local(spec)
    local.load(arrays)
    trainer = local.trainer(int(config["local-steps"]), float(config["lr"]), int(config["seed"]),
                            float(config.get("proximal-mu", 0.0)))  # fmt: skip
    before = local.val_loss(trainer)
    say(spec, f"round {rnd}: training {config['local-steps']} steps")
    result = trainer.train()
    after = local.val_loss(trainer)
    new = local.arrays()
    metrics = {"num-examples": len(local.train_rows), "train-loss": float(result.training_loss),
               "seconds": round(time.perf_counter() - started, 2),
               "tokens": int(trainer.state.num_input_tokens_seen or 0)}  # fmt: skip
    if before is not None and after is not None:
        metrics |= {"val-loss-before": before, "val-loss": after}
    keep_sent(spec, rnd, new, metrics)
    say(spec, f"round {rnd}: done, train loss {metrics['train-loss']:.4f}")
    return new, metrics


def keep_sent(
    spec: dict[str, Any], rnd: int, arrays: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """The silo keeps a copy of what it sent (its audit trail; the tests check the aggregate)."""
    from legalbuild.federated.coordinator import save_arrays

    sent = Path(spec["silo_dir"]) / "sent"
    sent.mkdir(parents=True, exist_ok=True)
    save_arrays(sent / f"round-{rnd}.safetensors", arrays)
    (sent / f"round-{rnd}.json").write_text(json.dumps(metrics) + "\n")


def evaluate(spec: dict[str, Any], candidates: dict[str, dict[str, Any]], config: dict[str, Any]) -> dict[str, float]:  # fmt: skip
    """Validation loss of each candidate final adapter on the silo's validation rows."""
    out: dict[str, float] = {}
    for name, arrays in candidates.items():
        local = Local(spec, int(config[f"{name}-rank"]), int(config[f"{name}-alpha"]))
        local.load(arrays)
        loss = local.val_loss(local.trainer(1, 1e-9, 0, 0.0))
        out[f"val-loss-{name}"] = float("nan") if loss is None else loss
        out["val-rows"] = len(local.val_rows)
    say(
        spec,
        "evaluated the final adapter(s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if k != "val-rows"),
    )
    return out


def spec_of(path: str) -> dict[str, Any]:
    return read_json(path)
