"""The build report: one self-contained HTML file (inline CSS and base64 PNG plots, no script, no
external request) and a Markdown summary, from whatever stage outputs exist.

    write_report(recipe_path, recipe_text, lock, stage_dirs, dest_dir) -> (report.html, report.md)

`stage_dirs` maps a stage name to its output folder (a cache entry's `out/`). Every section reads
only its own files and says "not built" when its stage is missing, or what it could not read when
a file is broken, so a half-built project still gets a report. All text is HTML-escaped.

Sections: summary, recipe and lock, data card (normalize stats.json, curate card.json), training
curves (train log_history.json + metrics.json), LoRA weight distributions (train adapter), eval
table and per-category bars (eval eval.json), qualitative samples (eval answers.jsonl), provenance
(base base.json, recipe data sources, curate card licences).
"""

from __future__ import annotations

import base64
import html
import io
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.evaluation.scoring import MODEL_ORDER
from legalbuild.evaluation.table import comparison_header, comparison_rows

if TYPE_CHECKING:
    from legalbuild.cache import Store
    from legalbuild.pipeline import Loaded

MAX_SAMPLES = 6
MAX_COUNT_ROWS = 25  # longest count table (rules: top 25 by count)
MODEL_COLOURS = {
    "base": "#9aa5b1",
    "merged": "#2f6fde",
    "merged+constrained": "#7fa8ef",
    "regex": "#e3a33b",
}


@dataclass
class Section:
    id: str
    title: str
    html: str
    markdown: str = ""
    built: bool = True


@dataclass
class Sources:
    recipe_path: Path
    recipe_text: str
    lock: dict[str, Any]
    stage_dirs: dict[str, Path]
    recipe: dict[str, Any] = field(default_factory=dict)

    def dir(self, stage: str) -> Path | None:
        path = self.stage_dirs.get(stage)
        return Path(path) if path is not None and Path(path).is_dir() else None


def write_build_report(
    loaded: Loaded, store: Store, dest_dir: Path | None = None
) -> tuple[Path, Path]:
    """The report of a recipe's current build: its cached stage outputs and its lock. Written to
    `dest_dir` (default: `<recipe name>-report/` beside the recipe); returns (html, md) paths."""
    from legalbuild.lock import read_lock

    stage_dirs = {
        n: store.out_dir(n, node.key) for n, node in loaded.nodes.items() if store.has(n, node.key)
    }
    path = loaded.recipe_path
    return write_report(
        path,
        path.read_text(encoding="utf-8"),
        read_lock(path),
        stage_dirs,
        dest_dir or path.with_name(f"{path.stem}-report"),
    )


def write_report(
    recipe_path: Path, recipe_text: str, lock: dict, stage_dirs: dict[str, Path], dest_dir: Path
) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` under dest_dir and return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's first import
    sources = Sources(
        Path(recipe_path), recipe_text, lock or {}, dict(stage_dirs), _parse_toml(recipe_text)
    )
    sections = [_safely(build, sources) for build in SECTION_BUILDERS]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = dest_dir / "report.html", dest_dir / "report.md"
    html_path.write_text(render_html(sources, sections), encoding="utf-8")
    md_path.write_text(render_markdown(sources, sections), encoding="utf-8")
    return html_path, md_path


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _safely(build: Callable[[Sources], Section], sources: Sources) -> Section:
    """A section whose files are unreadable becomes a note instead of failing the whole report."""
    try:
        return build(sources)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        title = build.__doc__.splitlines()[0] if build.__doc__ else build.__name__
        note = f"could not be rendered: {type(exc).__name__}: {exc}"
        return Section(build.__name__, title, _note(note), f"_{note}_\n", built=False)


def not_built(section_id: str, title: str, stage: str) -> Section:
    text = f"not built: the `{stage}` stage has no output yet."
    return Section(section_id, title, _note(text), f"_{text}_\n", built=False)


# ------------------------------------------------------------------------------- html pieces
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def html_table(header: list[str] | None, rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header or [])
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{esc(c)}</td>'
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def figure_html(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# ---------------------------------------------------------------------------------- sections
def summary_section(src: Sources) -> Section:
    """Summary"""
    project = src.recipe.get("project", {})
    rows = [["project", project.get("name", "?")], ["recipe", str(src.recipe_path)]]
    if project.get("description"):
        rows.append(["description", project["description"]])
    rows.append(["stages built", ", ".join(s for s in src.stage_dirs if src.dir(s)) or "none"])
    eval_dir = src.dir("eval")
    if eval_dir and (eval_dir / "eval.json").is_file():
        result = _read_json(eval_dir / "eval.json")
        header = comparison_header(result)
        headline = {r[0]: dict(zip(header, r, strict=True)) for r in comparison_rows(result)}
        acc = headline.get("finding-label accuracy")
        if acc and "base" in acc and "merged" in acc:
            rows.append(
                [
                    "label accuracy (base → merged)",
                    f"{acc['base']} → {acc['merged']} ({acc['merged − base']})",
                ]
            )
        rows += [["warning", w] for w in result.get("warnings", [])]
    train_dir = src.dir("train")
    if train_dir and (train_dir / "metrics.json").is_file():
        m = _read_json(train_dir / "metrics.json")
        rows.append(
            [
                "training",
                f"step {m.get('global_step')}, best val loss {_fmt(m.get('best_val_loss'))} @ {m.get('best_step')}",
            ]
        )
    return Section(
        "summary",
        "Summary",
        html_table(None, rows, numeric_from=9),
        md_table(["item", "value"], rows),
    )


def recipe_section(src: Sources) -> Section:
    """Recipe and lock"""
    parts = [f"<h3>{esc(src.recipe_path.name)}</h3><pre>{esc(src.recipe_text)}</pre>"]
    md = [f"Recipe `{src.recipe_path}`; legalbuild {src.lock.get('legalbuild', '?')}.\n"]
    stages = src.lock.get("stages", {})
    if not stages:
        parts.append(_note("no lock yet: legalbuild.lock is written by `legalbuild build`."))
        return Section("recipe", "Recipe and lock", "".join(parts), "".join(md))
    rows = []
    for name, entry in stages.items():
        outputs = entry.get("outputs", {})
        rows.append([name, entry.get("key", "")[:16], len(outputs), len(entry.get("inputs", {}))])
    parts.append(f"<h3>Lock (legalbuild {esc(src.lock.get('legalbuild', '?'))})</h3>")
    parts.append(html_table(["stage", "key", "output files", "inputs"], rows, numeric_from=2))
    for name, entry in stages.items():
        inputs = [[k, _short(v)] for k, v in entry.get("inputs", {}).items()]
        outputs = [[k, _short(v)] for k, v in entry.get("outputs", {}).items()]
        parts.append(
            f"<details><summary>{esc(name)}: inputs, versions and output digests</summary>"
            f"{html_table(['input', 'value'], inputs, numeric_from=9)}"
            f"{html_table(['output', 'sha256'], outputs, numeric_from=9)}</details>"
        )
    md.append(md_table(["stage", "key", "output files", "inputs"], rows))
    return Section("recipe", "Recipe and lock", "".join(parts), "\n".join(md))


def _short(value: Any) -> str:
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:16] + "…"
    return text if len(text) <= 120 else text[:117] + "…"


def data_section(src: Sources) -> Section:
    """Data card"""
    normalize, curate = src.dir("normalize"), src.dir("curate")
    if normalize is None and curate is None:
        return not_built("data", "Data card", "normalize")
    parts, md = [], []
    if normalize is not None and (normalize / "stats.json").is_file():
        stats = _read_json(normalize / "stats.json")
        per_source = stats.get("pairs_per_source", {})
        rows = [
            [name, stats.get("rows_in", {}).get(name, "–"), c.get("train", 0), c.get("val", 0)]
            for name, c in per_source.items()
        ]
        out = stats.get("rows_out", {})
        rows.append(
            ["total", stats.get("rows_in_total", "–"), out.get("train", "–"), out.get("val", "–")]
        )
        parts.append(
            "<h3>Pairs by source (normalize)</h3>"
            + html_table(["source", "rows in", "train", "val"], rows)
        )
        md.append("Pairs by source:\n\n" + md_table(["source", "rows in", "train", "val"], rows))
        drops = [[reason, n] for reason, n in stats.get("drops", {}).items() if n]
        parts.append(
            "<h3>Drops by reason</h3>"
            + (html_table(["reason", "rows"], drops) if drops else _note("no row dropped"))
        )
        md.append(
            "Drops by reason:\n\n" + (md_table(["reason", "rows"], drops) if drops else "none\n")
        )
        parts += [_note(f"warning: {w}") for w in stats.get("warnings", [])]
    elif normalize is not None:
        parts.append(_note("normalize output has no stats.json"))
    if curate is not None and (curate / "card.json").is_file():
        card = _read_json(curate / "card.json")
        parts.append('<h3>Curated pairs (curate card)</h3><div class="row">')
        for title, counts in _count_tables(card):
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_COUNT_ROWS]
            more = (
                f" (top {MAX_COUNT_ROWS} of {len(counts)})" if len(counts) > MAX_COUNT_ROWS else ""
            )
            table = html_table([title, "pairs"], [list(kv) for kv in top])
            parts.append(f"<div><h4>{esc(title)}{esc(more)}</h4>{table}</div>")
            md.append(f"{title}{more}:\n\n" + md_table([title, "pairs"], [list(kv) for kv in top]))
        parts.append("</div>")
    elif curate is None:
        parts.append(
            _note("no curated pairs: the recipe has no [curate] section, or it is not built.")
        )
    return Section("data", "Data card", "".join(parts), "\n".join(md))


def _count_tables(card: dict, prefix: str = "") -> list[tuple[str, dict[str, int]]]:
    """Every {name: count} mapping in the card (by source, rule, severity, task, drops...)."""
    out = []
    for key, value in card.items():
        if not isinstance(value, dict) or not value:
            continue
        name = f"{prefix}{key}".replace("_", " ")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            out.append((name, value))
        elif len(prefix) < 40:
            out += _count_tables(value, prefix=f"{name} / ")
    return out


def training_section(src: Sources) -> Section:
    """Training curves"""
    train = src.dir("train")
    if train is None:
        return not_built("training", "Training curves", "train")
    history = (
        _read_json(train / "log_history.json") if (train / "log_history.json").is_file() else []
    )
    m = _read_json(train / "metrics.json") if (train / "metrics.json").is_file() else {}
    parts = [loss_plot(history, m) if history else _note("no log_history.json")]
    keys = ["global_step", "train_loss", "val_loss", "best_step", "best_val_loss", "overfitting", "early_stopped",
            "trainable_parameters", "tokens_per_second", "train_runtime", "device", "precision", "quantization"]  # fmt: skip
    rows = [[k.replace("_", " "), _fmt(m[k])] for k in keys if k in m]
    parts.append(html_table(["metric", "value"], rows))
    parts += [_note(f"warning: {e.get('message', e)}") for e in m.get("overfitting_events", [])]
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
        plot + _note(text) + html_table(header, rows, numeric_from=2),
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
    result = _read_json(eval_dir / "eval.json")
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
        parts.append(_note("answers.jsonl is empty"))
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


def provenance_section(src: Sources) -> Section:
    """Provenance"""
    rows = []
    base = src.dir("base")
    if base is not None and (base / "base.json").is_file():
        info = _read_json(base / "base.json")
        where = src.recipe.get("model", {}).get("base", "")
        rows.append(
            [
                "base model",
                f"{info.get('architecture', '?')} {where}".strip(),
                # the recipe's licence wins: it is not in the key, so base.json may predate an edit
                src.recipe.get("model", {}).get("licence") or info.get("licence", "unknown"),
                _short(info.get("revision") or info.get("sha256") or info.get("digest") or ""),
            ]
        )
    else:
        model = src.recipe.get("model", {})
        rows.append(
            [
                "base model",
                model.get("base", "(default)") + " (base stage not built)",
                model.get("licence") or "unknown",
                "",
            ]
        )
    for s in src.recipe.get("data", {}).get("sources", []):
        rows.append(
            [
                "data source",
                f"{s.get('name')}: {s.get('path')}",
                s.get("licence", "as stated by its owner"),
                "",
            ]
        )
    for c in (src.recipe.get("curate") or {}).get("corpora", []):
        rows.append(
            [
                "contract corpus",
                c.get("name") or c.get("kind"),
                c.get("licence") or _CORPUS_LICENCES.get(c.get("kind"), "unknown"),
                "",
            ]
        )
    if src.recipe.get("curate"):
        for book in src.recipe["curate"].get("rulebooks", ["package:redline-buddy"]):
            rows.append(
                [
                    "rulebook",
                    book,
                    "MIT (redline-buddy)"
                    if book == "package:redline-buddy"
                    else "as stated by its owner",
                    "",
                ]
            )
    curate = src.dir("curate")
    if curate is not None and (curate / "card.json").is_file():
        for name, licence in _licences(_read_json(curate / "card.json")):
            rows.append(["curated source", name, licence, ""])
    header = ["what", "source", "licence", "revision / digest"]
    return Section(
        "provenance", "Provenance", html_table(header, rows, numeric_from=9), md_table(header, rows)
    )


_CORPUS_LICENCES = {
    "licensedcode": "licensedcode-data: database CC-BY-4.0; each text belongs to its owner",
    "nda_review": "Common Paper Mutual NDA v1.0, CC BY 4.0 (nda-review-cli, MIT)",
}


def _licences(card: Any, name: str = "") -> list[tuple[str, str]]:
    """(source, licence) pairs anywhere in the curate card (keys containing 'licen')."""
    found = []
    if isinstance(card, dict):
        for key, value in card.items():
            if "licen" in key.lower() and isinstance(value, str):
                found.append((card.get("name") or name or key, value))
            elif "licen" in key.lower() and isinstance(value, dict):
                found += [(str(k), str(v)) for k, v in value.items()]
            else:
                found += _licences(value, name=str(key))
    elif isinstance(card, list):
        for item in card:
            found += _licences(item, name=name)
    return found


SECTION_BUILDERS: tuple[Callable[[Sources], Section], ...] = (
    summary_section,
    recipe_section,
    data_section,
    training_section,
    lora_section,
    eval_section,
    samples_section,
    provenance_section,
)


# -------------------------------------------------------------------------------- documents
def _template() -> str:
    return (Path(__file__).parent / "templates" / "report.html").read_text(encoding="utf-8")


def render_html(src: Sources, sections: list[Section]) -> str:
    name = src.recipe.get("project", {}).get("name", src.recipe_path.stem)
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.id)}"{"" if s.built else " class=missing"}><h2>{esc(s.title)}</h2>{s.html}</section>'
        for s in sections
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        _template()
        .replace("{{title}}", esc(f"legalbuild report: {name}"))
        .replace("{{generated}}", esc(stamp))
        .replace("{{nav}}", nav)
        .replace("{{body}}", body)
    )


def render_markdown(src: Sources, sections: list[Section]) -> str:
    name = src.recipe.get("project", {}).get("name", src.recipe_path.stem)
    out = [
        f"# legalbuild report: {name}\n",
        "Full report with plots: `report.html` beside this file.\n",
    ]
    out += [f"## {s.title}\n\n{s.markdown}" for s in sections]
    return "\n".join(out)
