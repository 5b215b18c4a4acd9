"""Report sections about the model: training curves, LoRA weight distributions, the eval table and
per-category bars, qualitative samples."""

from __future__ import annotations

from typing import Any

from legalbuild.evaluation.scoring import MODEL_ORDER
from legalbuild.evaluation.table import (
    LABEL_SET_HEADER,
    comparison_header,
    comparison_rows,
    label_set_rows,
)
from legalbuild.report.pieces import (
    MAX_SAMPLES,
    MODEL_COLOURS,
    Section,
    Sources,
    esc,
    figure_html,
    fmt,
    html_table,
    md_table,
    not_built,
    note,
    read_json,
)


def training_section(src: Sources) -> Section:
    """Training curves"""
    train = src.dir("train")
    if train is None:
        return not_built("training", "Training curves", "train")
    history = (
        read_json(train / "log_history.json") if (train / "log_history.json").is_file() else []
    )
    m = read_json(train / "metrics.json") if (train / "metrics.json").is_file() else {}
    parts = [loss_plot(history, m) if history else note("no log_history.json")]
    keys = ["global_step", "train_loss", "val_loss", "best_step", "best_val_loss", "overfitting", "early_stopped",
            "trainable_parameters", "tokens_per_second", "train_runtime", "device", "precision", "quantization"]  # fmt: skip
    rows = [[k.replace("_", " "), fmt(m[k])] for k in keys if k in m]
    parts.append(html_table(["metric", "value"], rows))
    parts += [note(f"warning: {e.get('message', e)}") for e in m.get("overfitting_events", [])]
    return Section(
        "training", "Training curves", "".join(parts), md_table(["metric", "value"], rows)
    )


def loss_plot(history: list[dict], m: dict) -> str:
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    val = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#2f6fde")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss", color="#d9534f")
    if m.get("best_step") is not None:
        ax.axvline(
            m["best_step"], color="#2e7d32", linestyle="--", label=f"best step {m['best_step']}"
        )
    for event in m.get("overfitting_events", []):
        ax.axvline(
            event["step"],
            color="#e3a33b",
            linestyle=":",
            label=f"overfitting? step {event['step']}",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_html(fig, "training and validation loss per step")


def lora_section(src: Sources) -> Section:
    """LoRA weight distributions"""
    train = src.dir("train")
    path = train / "adapter" / "adapter_model.safetensors" if train else None
    if path is None or not path.is_file():
        return not_built("lora", "LoRA weight distributions", "train")
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    groups = {"lora_A": [], "lora_B": []}
    by_module: dict[str, dict[str, list]] = {}
    for name, array in tensors.items():
        kind = "lora_A" if "lora_A" in name else "lora_B" if "lora_B" in name else None
        if kind is None:
            continue
        groups[kind].append(array.astype(np.float32).ravel())
        module = name.split(f".{kind}")[0].rsplit(".", 1)[-1]
        by_module.setdefault(module, {"lora_A": [], "lora_B": []})[kind].append(
            array.astype(np.float32).ravel()
        )
    rows = []
    for module, kinds in sorted(by_module.items()):
        for kind, arrays in kinds.items():
            if arrays:
                v = np.concatenate(arrays)
                rows.append(
                    [
                        module,
                        kind,
                        len(arrays),
                        v.size,
                        f"{v.mean():+.2e}",
                        f"{v.std():.3e}",
                        f"{np.abs(v).max():.3e}",
                    ]
                )
    header = ["module", "matrix", "tensors", "values", "mean", "std", "max |w|"]
    plot = lora_histograms({k: np.concatenate(v) for k, v in groups.items() if v})
    text = "lora_B starts at zero, so its spread shows how far training moved the adapter."
    return Section(
        "lora",
        "LoRA weight distributions",
        plot + note(text) + html_table(header, rows, numeric_from=2),
        md_table(header, rows),
    )


def lora_histograms(values: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(values), 1), figsize=(8, 3), squeeze=False)
    for ax, (kind, v) in zip(axes[0], values.items(), strict=False):
        ax.hist(v, bins=60, color="#2f6fde" if kind == "lora_A" else "#e3a33b")
        ax.set_title(f"{kind} ({v.size:,} values)", fontsize=10)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    return figure_html(fig, "histograms of the LoRA A and B weights")


def eval_section(src: Sources) -> Section:
    """Evaluation"""
    eval_dir = src.dir("eval")
    if eval_dir is None or not (eval_dir / "eval.json").is_file():
        return not_built("eval", "Evaluation", "eval")
    result = read_json(eval_dir / "eval.json")
    header = comparison_header(result)
    rows = comparison_rows(result)
    sets = ", ".join(f"{k}: {v}" for k, v in result.get("sets", {}).items())
    parts = [f"<p>{esc(result.get('rows', 0))} rows ({esc(sets)}), engine {esc(result.get('engine', '?'))}; "
             f"regex baseline: {esc(result.get('regex_baseline', ''))}</p>"]  # fmt: skip
    parts += [f'<p class="warning">{esc(w)}</p>' for w in result.get("warnings", [])]
    parts.append(html_table(header, rows))
    for category, values in result.get("by_category", {}).items():
        if category == "set" and len(values) < 2:
            continue
        parts.append(
            f"<h3>By {esc(category.replace('_', ' '))}</h3>" + category_bars(category, values)
        )
    md = [md_table(header, rows)] + [f"**{w}**\n" for w in result.get("warnings", [])]
    if labelled := label_set_rows(result):
        text = (
            "Clauses labelled by others (not by the rulebook), asked plainly and per playbook; "
            "balanced accuracy per category, macro over the red-flag categories, 0.5 = chance."
        )
        parts.append("<h3>Labels the rulebook did not write</h3>" + note(text))
        parts.append(html_table(LABEL_SET_HEADER, labelled, numeric_from=3))
        md.append("\n" + md_table(LABEL_SET_HEADER, labelled))
    return Section("eval", "Evaluation", "".join(parts), "\n".join(md))


def category_bars(category: str, values: dict[str, dict[str, dict]]) -> str:
    """Grouped bars: label accuracy of each model for each value of the category (n under it)."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(values)
    models = [m for m in MODEL_ORDER if any(m in v for v in values.values())]
    fig, ax = plt.subplots(figsize=(min(2 + 1.2 * len(names), 12), 3.2))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(names))
    for i, model in enumerate(models):
        acc = [(values[n].get(model, {}).get("label_accuracy") or 0.0) * 100 for n in names]
        offset = x + i * width - 0.4 + width / 2
        bars = ax.bar(offset, acc, width, label=model, color=MODEL_COLOURS.get(model))
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)  # a 0 % bar shows only as its number
    labels = [f"{n}\n(n={next(iter(values[n].values()), {}).get('rows', '?')})" for n in names]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("label accuracy %")
    ax.set_ylim(0, 112)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure_html(fig, f"label accuracy by {category}")


def samples_section(src: Sources) -> Section:
    """Qualitative samples"""
    eval_dir = src.dir("eval")
    if eval_dir is None or not (eval_dir / "answers.jsonl").is_file():
        return not_built("samples", "Qualitative samples", "eval")
    from legalbuild.data.readers import read_jsonl

    records = [record for _, record in read_jsonl(eval_dir / "answers.jsonl")]
    picked = pick_samples(records, MAX_SAMPLES)
    parts, md = [], []
    for r in picked:
        answers = r.get("answers", {})
        cells = [
            ("clause", r.get("clause") or r.get("instruction", "")),
            ("reference", r.get("reference", "")),
        ]
        cells += [(f"{m} answer", answers[m]["text"]) for m in ("base", "merged") if m in answers]
        grid = "".join(
            f'<div class="cell"><h4>{esc(t)}</h4><pre>{esc(text)}</pre></div>' for t, text in cells
        )
        tags = f"{r.get('id')} · task {r.get('task')} · {r.get('clause_type')} · severity {r.get('severity')}"
        parts.append(
            f'<div class="sample"><p class="tags">{esc(tags)}</p><div class="grid">{grid}</div></div>'
        )
        md.append(f"- `{r.get('id')}` ({r.get('task')}): reference labels {r.get('reference_labels')}, "
                  + ", ".join(f"{m} → {answers[m].get('labels')}" for m in answers))  # fmt: skip
    if not picked:
        parts.append(note("answers.jsonl is empty"))
    return Section("samples", "Qualitative samples", "".join(parts), "\n".join(md) + "\n")


def pick_samples(records: list[dict], n: int) -> list[dict]:
    """One row per task kind first (rows where base and merged disagree preferred), then the rest."""

    def differs(r: dict) -> bool:
        a = r.get("answers", {})
        return a.get("base", {}).get("labels") != a.get("merged", {}).get("labels")

    ordered = sorted(records, key=lambda r: not differs(r))
    picked, seen = [], set()
    for r in ordered:
        if r.get("task") not in seen:
            picked.append(r)
            seen.add(r.get("task"))
    picked += [r for r in ordered if r not in picked]
    return picked[:n]
