"""What every report section is made of: the Section record, where its files are (Sources), and
small HTML/Markdown pieces (escaped text, tables, an embedded PNG figure)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SAMPLES = 6
MAX_COUNT_ROWS = 25  # longest count table (rules: top 25 by count)
MODEL_COLOURS = {
    "base": "#9aa5b1",
    "merged": "#2f6fde",
    "merged+constrained": "#7fa8ef",
    "regex": "#e3a33b",
    "regex-unscoped": "#f2cf94",
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


def not_built(section_id: str, title: str, stage: str) -> Section:
    text = f"not built: the `{stage}` stage has no output yet."
    return Section(section_id, title, note(text), f"_{text}_\n", built=False)


# ------------------------------------------------------------------------------- html pieces
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def note(text: str) -> str:
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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
