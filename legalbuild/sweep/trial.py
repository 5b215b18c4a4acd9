"""One trial as its own process: `python -m legalbuild.sweep.trial SPEC.json`.

It builds the base recipe with the trial's overrides (the text in the trial's `trial.toml`; relative
paths resolve beside the base recipe) on the shared cache, with its lock in the trial's folder, as
`legalbuild build` would. Its standard output carries events, one JSON object a line: the stage
it is in, the training steps, each validation loss, then what was built and what was a cache hit
(`done`) or the error. Everything else it prints goes to the trial's build.log.

SIGTERM or SIGINT (the sweep pruned it or is stopping, or the sweep died: the parent-death signal)
raises `Stopped` in the build, which unwinds: the stage is never committed (what it wrote goes to
the store's failed/, its checkpoints stay for a later trial of the same key), and the processes
the trial started (an eval engine's workers) are stopped with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from legalbuild.engine.graph import STAGES

# the build's own lines (legalbuild/engine/pipeline.py build, _build_stage)
STAGE_LINE = re.compile(
    rf"^({'|'.join(STAGES)})\s+(cached|building|done|built meanwhile)\b(?:.* in ([0-9.]+) s$)?"
)
# the train stage's log lines (legalbuild/training/callbacks.py ProgressCallback)
STEP_LINE = re.compile(r"^train\s+step (\d+)/(\d+)\s+loss ")
VAL_LINE = re.compile(r"^train\s+step (\d+)\s+validation loss ([-+0-9.eEinfa]+)")
STOPPED_CODE = 128 + signal.SIGTERM


class Stopped(BaseException):  # noqa: N818  (a BaseException: no `except Exception` swallows it)
    """The sweep stopped this trial (pruned, Ctrl-C, or the sweep process died)."""


def parse_line(line: str) -> dict[str, Any] | None:
    """The event a build log line carries, if any: a stage starting, found in the cache (or built
    meanwhile by another process: a hit too), or built; a training step; a validation loss."""
    if m := VAL_LINE.match(line):
        return {"event": "val_loss", "step": int(m[1]), "value": float(m[2])}
    if m := STEP_LINE.match(line):
        return {"event": "step", "step": int(m[1]), "of": int(m[2])}
    if m := STAGE_LINE.match(line):
        state = {"cached": "hit", "built meanwhile": "hit", "done": "built"}.get(m[2], m[2])
        event = {"event": "stage", "stage": m[1], "state": state}
        return {**event, "seconds": float(m[3])} if m[3] else event
    return None


class Events:
    """Events to the sweep (standard output as it was at start), the log to build.log. A stage
    event carries the stage's key, and a hit the seconds its entry took to build."""

    def __init__(self, out: TextIO, log: TextIO):
        self.out, self.log_file = out, log
        self.keys: dict[str, str] = {}
        self.store: Any = None

    def emit(self, **event: Any) -> None:
        try:
            self.out.write(json.dumps({**event, "t": round(time.time(), 3)}) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the sweep is gone: the parent-death signal stops us next

    def log(self, message: str) -> None:
        self.log_file.write(message + "\n")
        self.log_file.flush()
        event = parse_line(message)
        if event is None:
            return
        if event["event"] == "stage" and (key := self.keys.get(event["stage"])):
            event["key"] = key
            if event["state"] == "hit" and self.store is not None:
                timings = (self.store.manifest(event["stage"], key) or {}).get("timings") or {}
                event["seconds"] = timings.get("seconds")
        self.emit(**event)


def _on_stop(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the build unwinds, a second one waits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def stop_own_group(grace_s: float = 10.0) -> None:
    """Stop the other processes of our process group (we lead it: the sweep spawned us so)."""
    pgid = os.getpgrp()
    if pgid != os.getpid():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace_s
    while _others(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _others(pgid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _others(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        if pid != os.getpid() and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(pid)
    return found


def run(spec: dict[str, Any], events: Events) -> int:
    """Build the trial; 0 when built (a `done` event names the output folders)."""
    from rich.console import Console

    from legalbuild.engine import pipeline
    from legalbuild.engine.cache import Store
    from legalbuild.engine.graph import build_graph
    from legalbuild.errors import LegalbuildError
    from legalbuild.recipe.loading import parse_recipe

    text_path, base_path = Path(spec["recipe_text"]), Path(spec["base_recipe"])
    try:
        recipe = parse_recipe(text_path.read_text(encoding="utf-8"), str(text_path))
        events.store = store = Store.open(spec["cache_dir"])
        graph = build_graph(recipe, base_path)
        events.keys = {name: node.key for name, node in graph.items()}
        loaded = pipeline.Loaded(recipe, base_path, graph, lock_beside=text_path)
        console = Console(file=events.log_file, highlight=False, soft_wrap=True)
        result = pipeline.build(loaded, store, log=events.log, console=console)
    except LegalbuildError as exc:
        events.log(f"error: {exc}")
        events.emit(event="error", message=exc.message, hint=exc.hint, code=exc.exit_code)
        return exc.exit_code
    outputs = {name: str(path) for name, path in result.outputs.items()}
    events.emit(event="done", outputs=outputs)
    return 0


def main(argv: list[str]) -> int:
    from legalbuild.processes import die_with_parent

    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    events_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    log = open(spec["log"], "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (the process's life)
    os.dup2(log.fileno(), 1)  # what libraries print goes to build.log, never into the events
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_stop)
    die_with_parent()
    events = Events(events_out, log)
    try:
        return run(spec, events)
    except Stopped as stop:
        events.log(f"stopped by {stop}: nothing of the stage in progress was committed")
        events.emit(event="stopped", signal=str(stop))
        return STOPPED_CODE
    finally:
        stop_own_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
