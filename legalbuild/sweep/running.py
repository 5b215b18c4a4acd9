"""One trial process seen from the sweep: its folder (trial.toml, spec.json, build.log, its lock),
the process group it leads, a thread reading its events into the sweep's queue, and where it is
(stage, step, validation losses) for the progress display and the pruner."""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild.engine.ownership import remove_tree
from legalbuild.processes import signal_group, spawn_group, stop_group
from legalbuild.sweep.overrides import recipe_with
from legalbuild.sweep.spec import Sweep

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class TrialProcess:
    number: int  # the trial's number (-1: the winner's test build)
    values: dict[str, Any]
    folder: Path
    process: Any  # subprocess.Popen
    started: float = field(default_factory=time.time)
    stage: str = "start"
    step: int = 0
    steps: int = 0
    train_started: float | None = None
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # {stage: key, hit, seconds}
    stop_reason: str | None = None  # "pruned" or "interrupted"
    pruned_at: int | None = None
    result: dict[str, Any] | None = None  # the `done` event
    error: dict[str, Any] | None = None  # the `error` event
    exit_code: int | None = None
    trial: Any = None  # optuna's Trial (ask/tell)

    @property
    def log_path(self) -> Path:
        return self.folder / "build.log"

    def stop(self, reason: str, signum: int = signal.SIGTERM) -> None:
        """Ask the trial to stop (its build unwinds); the sweep reaps it when it exits."""
        if self.stop_reason is None:
            self.stop_reason = reason
        signal_group(self.process.pid, signum)

    def wait_gone(self) -> None:
        """After its exit: nothing of its process group may remain."""
        stop_group(self.process, grace_s=10)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "stage":
            name, state = event["stage"], event["state"]
            self.stage = f"{name} ({state})"
            if state in ("hit", "built"):
                key, seconds = event.get("key"), event.get("seconds")
                self.stages[name] = {"key": key, "hit": state == "hit", "seconds": seconds}
            elif name == "train":
                self.train_started = event.get("t", time.time())
        elif kind == "step":
            self.step, self.steps = event["step"], event["of"]
            self.stage = "train"
        elif kind == "val_loss":
            self.val_losses.append((event["step"], event["value"]))
        elif kind == "done":
            self.result = event
        elif kind == "error":
            self.error = event

    def eta_s(self) -> float | None:
        """Seconds until training ends, from its pace so far (None before a step is seen)."""
        if self.train_started is None or not self.step or not self.steps:
            return None
        pace = (time.time() - self.train_started) / self.step
        return pace * (self.steps - self.step)


def trial_text(sweep: Sweep, overrides: dict[str, Any], title: str) -> str:
    text, _ = recipe_with(sweep.recipe_text, sweep.recipe, overrides, title)
    header = (
        f"# {title}, written by `legalbuild sweep` from {sweep.recipe_path.name}: its relative\n"
        f"# paths resolve beside it ({sweep.recipe_path.parent}). Overrides:\n"
        + "".join(f"#   {k} = {v!r}\n" for k, v in overrides.items())
    )
    return header + text


def start(
    sweep: Sweep,
    number: int,
    values: dict[str, Any],
    overrides: dict[str, Any],
    folder: Path,
    cache_dir: Path,
    env: dict[str, str],
    events: queue.Queue,
) -> TrialProcess:
    """Write the trial's folder and start its process (from the main thread: its parent-death
    signal follows the sweep's life, not a thread's)."""
    if folder.is_dir() and not folder.is_symlink():
        remove_tree(folder)  # a number's folder from a study that was deleted and begun again
    folder.mkdir(parents=True)
    title = f"trial {number}" if number >= 0 else "the winner's test build"
    text_path = folder / "trial.toml"
    text_path.write_text(trial_text(sweep, overrides, title), encoding="utf-8")
    spec = {
        "recipe_text": str(text_path),
        "base_recipe": str(sweep.recipe_path),
        "cache_dir": str(cache_dir),
        "log": str(folder / "build.log"),
    }
    (folder / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    argv = [sys.executable, "-m", "legalbuild.sweep.trial", str(folder / "spec.json")]
    process = spawn_group(argv, env)
    handle = TrialProcess(number, values, folder, process)
    threading.Thread(target=_read, args=(handle, events), daemon=True).start()
    return handle


def _read(handle: TrialProcess, events: queue.Queue) -> None:
    """Its standard output: JSON events to the queue, anything else (printed before the trial
    redirected its output) to its build.log; then its exit."""
    with handle.log_path.open("a", encoding="utf-8") as log:
        for raw in handle.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                events.put((handle, event))
            else:
                log.write(line + "\n")
    code = handle.process.wait()
    events.put((handle, {"event": "exit", "code": code}))


def trial_env(threads: int, gpu: int | None) -> dict[str, str]:
    """The environment of a trial: its share of the CPU threads (and its GPU, one per job)."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARS})
    env["TOKENIZERS_PARALLELISM"] = "false"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env
