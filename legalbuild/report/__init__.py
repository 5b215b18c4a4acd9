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

import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.report.model import eval_section, lora_section, samples_section, training_section
from legalbuild.report.pieces import Section, Sources, esc, note
from legalbuild.report.project import (
    data_section,
    provenance_section,
    recipe_section,
    summary_section,
)

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded


def write_build_report(
    loaded: Loaded, store: Store, dest_dir: Path | None = None
) -> tuple[Path, Path]:
    """The report of a recipe's current build: its cached stage outputs and its lock. Written to
    `dest_dir` (default: `<recipe name>-report/` beside the recipe); returns (html, md) paths."""
    from legalbuild.engine.lock import read_lock

    outputs = {name: loaded.output(store, name) for name in loaded.nodes}
    stage_dirs = {name: out for name, out in outputs.items() if out is not None}
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


def _safely(build: Callable[[Sources], Section], sources: Sources) -> Section:
    """A section whose files are unreadable becomes a note instead of failing the whole report."""
    try:
        return build(sources)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        title = build.__doc__.splitlines()[0] if build.__doc__ else build.__name__
        why = f"could not be rendered: {type(exc).__name__}: {exc}"
        return Section(build.__name__, title, note(why), f"_{why}_\n", built=False)


# -------------------------------------------------------------------------------- documents
def _template() -> str:
    return (Path(__file__).parent.parent / "templates" / "report.html").read_text(encoding="utf-8")


def render_html(src: Sources, sections: list[Section]) -> str:
    name = src.recipe.get("project", {}).get("name", src.recipe_path.stem)
    return render_page(f"legalbuild report: {name}", sections)


def render_page(title: str, sections: list[Section]) -> str:
    """One self-contained page in the report's style: a title, a navigation bar, the sections."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.id)}"{"" if s.built else " class=missing"}><h2>{esc(s.title)}</h2>{s.html}</section>'
        for s in sections
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        _template()
        .replace("{{title}}", esc(title))
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
