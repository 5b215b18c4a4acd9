"""Report sections about the project: summary, recipe and lock, data card, provenance and licences."""

from __future__ import annotations

from typing import Any

from legalbuild.evaluation.table import comparison_header, comparison_rows
from legalbuild.report.pieces import (
    MAX_COUNT_ROWS,
    Section,
    Sources,
    esc,
    fmt,
    html_table,
    md_table,
    not_built,
    note,
    read_json,
)


def summary_section(src: Sources) -> Section:
    """Summary"""
    project = src.recipe.get("project", {})
    rows = [["project", project.get("name", "?")], ["recipe", str(src.recipe_path)]]
    if project.get("description"):
        rows.append(["description", project["description"]])
    rows.append(["stages built", ", ".join(s for s in src.stage_dirs if src.dir(s)) or "none"])
    eval_dir = src.dir("eval")
    if eval_dir and (eval_dir / "eval.json").is_file():
        result = read_json(eval_dir / "eval.json")
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
        m = read_json(train_dir / "metrics.json")
        rows.append(
            [
                "training",
                f"step {m.get('global_step')}, best val loss {fmt(m.get('best_val_loss'))} @ {m.get('best_step')}",
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
        parts.append(note("no lock yet: legalbuild.lock is written by `legalbuild build`."))
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
        stats = read_json(normalize / "stats.json")
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
            + (html_table(["reason", "rows"], drops) if drops else note("no row dropped"))
        )
        md.append(
            "Drops by reason:\n\n" + (md_table(["reason", "rows"], drops) if drops else "none\n")
        )
        parts += [note(f"warning: {w}") for w in stats.get("warnings", [])]
    elif normalize is not None:
        parts.append(note("normalize output has no stats.json"))
    if curate is not None and (curate / "card.json").is_file():
        card = read_json(curate / "card.json")
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
            note("no curated pairs: the recipe has no [curate] section, or it is not built.")
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


def provenance_section(src: Sources) -> Section:
    """Provenance"""
    rows = []
    base = src.dir("base")
    if base is not None and (base / "base.json").is_file():
        info = read_json(base / "base.json")
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
        for name, licence in _licences(read_json(curate / "card.json")):
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
