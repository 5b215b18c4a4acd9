"""The sweep on the terminal, like `build`: which trial runs, its values, its stage and step, its
validation loss, the ETA of its training and of the sweep. A terminal gets a live table; a log
(not a terminal) gets one line per event that matters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from legalbuild.sweep.running import TrialProcess


def short(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in values.items())


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def trial_name(number: int) -> str:
    return f"trial {number}" if number >= 0 else "winner (test split)"


class Progress:
    def __init__(self, console: Console, trials: int):
        self.console, self.trials = console, trials
        self.live: Live | None = None
        self.drawn = 0.0
        self.durations: list[float] = []

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()

    def say(self, message: str) -> None:
        self.console.print(escape(message))

    def started(self, handle: TrialProcess) -> None:
        self.say(f"{trial_name(handle.number)} started: {short(handle.values)}")

    def event(self, handle: TrialProcess, event: dict[str, Any]) -> None:
        if self.live is not None:
            return  # the table shows it
        kind = event.get("event")
        if kind == "stage" and event["state"] == "building":
            self.say(f"{trial_name(handle.number)}: {event['stage']} building")
        elif kind == "val_loss":
            self.say(
                f"{trial_name(handle.number)}: step {event['step']} validation loss "
                f"{event['value']:.4f}"
            )

    def ended(self, handle: TrialProcess, state: str, detail: str) -> None:
        took = time.time() - handle.started
        if handle.number >= 0 and state in ("COMPLETE", "PRUNED"):
            self.durations.append(took)
        self.say(f"{trial_name(handle.number)} {state.lower()} in {minutes(took)}: {detail}")

    def eta(self, remaining: int, jobs: int) -> float | None:
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * remaining / max(1, jobs)

    def tick(self, running: list[TrialProcess], summary: Callable[[], str]) -> None:
        """Redraw the table (a terminal only; the summary reads the study: at most once a second)."""
        if self.live is None or time.monotonic() - self.drawn < 1.0:
            return
        self.drawn = time.monotonic()
        table = Table("trial", "values", "stage", "step", "val loss", "train ETA", box=None)
        for h in running:
            loss = f"{h.val_losses[-1][1]:.4f}" if h.val_losses else "–"
            step = f"{h.step}/{h.steps}" if h.steps else "–"
            table.add_row(
                trial_name(h.number), short(h.values), h.stage, step, loss, minutes(h.eta_s())
            )
        table.caption = summary()
        self.live.update(table)
