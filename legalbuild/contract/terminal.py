"""What `legalbuild audit` shows in the terminal: the clause count (and a warning with the
estimated time for a large document), a progress bar with clauses done and rate, and the
summary table worst first. The CLI prints these; nothing here prints by itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legalbuild.contract.questions import shorten
from legalbuild.contract.record import by_severity, clause_label, location_text, rank_of

COLOURS = {"high": "red", "medium": "dark_orange", "low": "yellow", "none": "green"}


def clause_count(job: Any, concurrency: int) -> list[str]:
    """Rich-markup lines: how many clauses, how many audited, and a warning for a large one."""
    from legalbuild.contract import run

    found, n = job.found, len(job.clauses)
    capped = f" (auditing the first {n}: --max-clauses)" if n < found else ""
    if not job.document.complete:
        capped = f" read before reading stopped (auditing the first {n}: --max-clauses)"
    lines = [f"{escape(job.document.name)}: {found} clauses{capped}"]
    if n > run.LARGE_DOCUMENT:
        minutes = run.estimated_seconds(n, concurrency) / 60
        lines.append(
            f"[yellow]warning:[/] {n} clauses: about {minutes:.0f} min on a 2-core CPU server at "
            f"--concurrency {concurrency}; --max-clauses N audits the first N"
        )
    return lines


def with_progress(console: Console, total: int, start: Callable[[Callable], Any]) -> Any:
    """`start(on_done)` under a progress bar (clauses done, rate, elapsed, time left)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("auditing"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("audit", total=total, rate="")

        def on_done(_index: int, _result: dict) -> None:
            elapsed = progress.tasks[0].elapsed or 0.0
            done = progress.tasks[0].completed + 1
            rate = f"{done / elapsed * 60:.1f} clauses/min" if elapsed else ""
            progress.update(task, advance=1, rate=rate)

        return start(on_done)


def summary_table(record: dict[str, Any]) -> Table:
    table = Table(title=f"Audit of {escape(record['document']['name'])}, worst first")
    for name in ("risk", "clause", "where", "findings"):
        table.add_column(name)
    for row in by_severity(record["clauses"]):
        rank = rank_of(row)
        findings = "; ".join(f["title"] for f in row["findings"] or []) or (row["error"] or "")
        table.add_row(
            f"[{COLOURS.get(rank, 'dim')}]{rank.replace('_', ' ')}[/]",
            escape(shorten(clause_label(row), 40)),
            location_text(row["location"]),
            escape(shorten(findings, 80)),
        )
    return table


def summary_line(record: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in record["summary"].items() if n)
    return f"{len(record['clauses'])} clauses: {counts} ({record['elapsed_s']:.1f} s)"
