"""The train stage under a launcher: torchrun (`python -m torch.distributed.run`) or `accelerate
launch`, started as its own process group (legalbuild/processes.py), one
`legalbuild.training.worker` per rank.

- The builder writes a spec (recipe, upstream folders, out_dir, work_dir, the checkpoint to
  resume from) into `work_dir/launch/`; every rank reads it.
- Console: rank 0's stage log lines (and a progress bar on a terminal); every rank's whole output
  is in the launcher's log folder (`work_dir/launch/logs`) and `launch.log`.
- Ctrl-C (SIGINT, SIGTERM, SIGHUP) reaches the launcher and every rank (each rank leads its own
  session under torchrun, so they are signalled by the pids they record); a rank that dies makes
  torchrun stop the others, and the stage fails with the rank, its exit and the log tail. Nothing
  is left running: ranks also get SIGTERM when their launcher dies.
- Only rank 0 writes into out_dir; the builder commits the entry after the launcher exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild import errors
from legalbuild.errors import StageFailedError
from legalbuild.processes import (
    copy_output,
    exit_if_stopped,
    free_port,
    group_alive,
    signal_group,
    spawn_group,
    stop_group,
    stop_signals,
)
from legalbuild.training.distributed import processes_per_node, world_size
from legalbuild.training.worker import LOG_MARK

if TYPE_CHECKING:
    from legalbuild.recipe import Recipe
    from legalbuild.training.job import TrainJob

RANK_PREFIX = re.compile(r"^\[(?:default)?(\d+)\]:")  # torchrun's --tee prefix, "[default1]:"
STEP = re.compile(r"^step (\d+)/(\d+) ")
FAILED_RANK = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n[^\n]*exitcode\s*:\s*(-?\d+)")


def launch_dir(job: TrainJob) -> Path:
    return job.work_dir / "launch"


def write_spec(job: TrainJob, resume_from: Path | None) -> Path:
    """The spec every rank reads (TrainJob.from_spec); the pid and error files of an earlier try
    are removed."""
    folder = launch_dir(job)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "spec.json"
    path.write_text(json.dumps(job.to_spec(resume_from), indent=1), encoding="utf-8")
    return path


def command(recipe: Recipe, spec: Path, log_dir: Path) -> list[str]:
    """The launcher's argv: every rank runs `python -m legalbuild.training.worker SPEC`."""
    dist = recipe.train.distributed
    assert dist is not None
    nproc, total = processes_per_node(dist), world_size(recipe)
    worker = ["-m", "legalbuild.training.worker", str(spec)]
    if dist.launcher == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
        argv += [f"--nnodes={dist.nnodes}", "--max-restarts=0", f"--log-dir={log_dir}", "--tee=3"]
        if dist.nnodes == 1:
            return [*argv, "--standalone", *worker]
        rdzv = [f"--node-rank={dist.node_rank}", "--rdzv-backend=c10d"]
        rdzv += [f"--rdzv-endpoint={dist.rdzv_endpoint}", f"--rdzv-id={spec.parent.parent.name}"]
        return [*argv, *rdzv, *worker]
    # accelerate: --multi_gpu is its torchrun mode (CPU ranks too: the worker sets use_cpu); its
    # --cpu mode starts a single process whatever --num_processes says (accelerate 1.15).
    host, port = (dist.rdzv_endpoint or f"127.0.0.1:{free_port()}").rsplit(":", 1)
    argv = [sys.executable, "-m", "accelerate.commands.launch"]
    argv += ["--multi_gpu"] if total > 1 else []
    argv += [f"--num_processes={total}", f"--num_machines={dist.nnodes}"]
    argv += [f"--machine_rank={dist.node_rank}", f"--main_process_ip={host}"]
    argv += [f"--main_process_port={port}", "--max_restarts=0", f"--log_dir={log_dir}", "--tee=3"]
    return [*argv, "--num_cpu_threads_per_process=1", "--dynamo_backend=no", *worker]


@dataclass(eq=False)
class LaunchedGroup:
    """The launcher's process group and the ranks it started (each in its own session)."""

    process: subprocess.Popen
    folder: Path
    tail: deque = field(default_factory=lambda: deque(maxlen=60))

    def rank_pids(self) -> list[int]:
        pids = []
        for path in self.folder.glob("rank-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(path.read_text()))
        return pids

    def signal_group(self, signum: int) -> None:
        signal_group(self.process.pid, signum)
        for pid in self.rank_pids():
            signal_group(pid, signum)

    def stop(self) -> None:
        """Nothing of the run is left: the launcher group, then any rank still alive."""
        if self.process.poll() is None:
            stop_group(self.process, grace_s=15)
        for pid in self.rank_pids():
            if group_alive(pid):
                signal_group(pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    _wait_gone(pid, 10)
                signal_group(pid, signal.SIGKILL)


def _wait_gone(pgid: int, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pgid), seconds)
        time.sleep(0.1)


def run(job: TrainJob, resume_from: Path | None) -> dict[str, Any]:
    """Train under the launcher; rank 0's metrics once every rank has exited 0."""
    recipe = job.recipe
    spec = write_spec(job, resume_from)
    folder = spec.parent
    argv = command(recipe, spec, folder / "logs")
    dist = recipe.train.distributed
    assert dist is not None
    job.log(
        f"{dist.launcher}: {world_size(recipe)} processes ({processes_per_node(dist)} per node, "
        f"{dist.nnodes} node(s)), strategy {dist.strategy}; every rank's log in {folder / 'logs'}"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stop_signals() as guard:
        group = LaunchedGroup(spawn_group(argv, env), folder)
        guard.handle = group  # type: ignore[assignment]
        pump = threading.Thread(target=_pump, args=(group, job), daemon=True)
        pump.start()
        try:
            code = group.process.wait()
            pump.join(timeout=10)
        finally:
            group.stop()
            guard.handle = None
        received = list(guard.received)
    exit_if_stopped(received)
    if code != 0:
        raise _failure(group, code, world_size(recipe))
    metrics_path = job.out_dir / "metrics.json"
    if not metrics_path.is_file() and dist.node_rank == 0:
        raise StageFailedError(
            f"every rank exited 0 and rank 0 wrote no metrics.json into {job.out_dir}",
            hint=f"read rank 0's log under {folder / 'logs'}",
        )
    if not metrics_path.is_file():  # a node other than 0: its ranks trained, node 0 writes
        raise StageFailedError(
            f"node {dist.node_rank}: every rank exited 0; the adapter is written on node 0",
            hint="build the later stages on node 0 (or copy its cache entry)",
        )
    return json.loads(metrics_path.read_text())


def _pump(group: LaunchedGroup, job: TrainJob) -> None:
    """Launcher output -> launch.log; rank 0's stage lines -> the stage log (and a progress bar)."""
    bar = _Bar(job.console)

    def stage_line(line: str) -> None:
        prefix = RANK_PREFIX.match(line)
        if prefix and prefix.group(1) != "0":
            return
        text = line[prefix.end() :] if prefix else line
        if LOG_MARK in text:
            message = text.split(LOG_MARK, 1)[1]
            bar.update(message)
            job.log(message)

    copy_output(group.process.stdout, group.folder / "launch.log", group.tail, stage_line)
    bar.stop()


class _Bar:
    """A progress bar driven by rank 0's `step N/M` lines, on a terminal only."""

    def __init__(self, console: Any):
        self.console = console
        self.progress: Any = None

    def update(self, message: str) -> None:
        step = STEP.match(message)
        if step is None or self.console is None or not self.console.is_terminal:
            return
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress(
                "[bold]train", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=self.console,
            )  # fmt: skip
            self.progress.start()
            self.task = self.progress.add_task("train", total=int(step.group(2)))
        self.progress.update(self.task, completed=int(step.group(1)))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _failure(group: LaunchedGroup, code: int, size: int) -> Exception:
    """The error of a failed run: a rank's own LegalbuildError when it wrote one, else which
    rank died and how, with the launcher's last lines."""
    for path in sorted(group.folder.glob("error-rank-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            error = json.loads(path.read_text())
            cls = getattr(errors, error["type"], errors.StageFailedError)
            return cls(error["message"], hint=error.get("hint"))
    tail = "\n".join(group.tail)
    died = FAILED_RANK.search(tail.rsplit("Root Cause", 1)[-1])  # torchrun names the first death
    if died:
        exit_code = int(died.group(2))
        how = f"signal {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit {exit_code}"
        what = f"rank {died.group(1)} of {size} died ({how})"
    else:
        what = f"the launcher exited with {code}"
    last = "\n".join(f"    {line}" for line in list(group.tail)[-15:])
    return StageFailedError(
        f"distributed training failed: {what}; the other ranks were stopped and nothing was "
        f"cached. Last launcher lines:\n{last}",
        hint=f"every rank's log is under {group.folder / 'logs'}; the next build resumes from the "
        "last checkpoint (same world size)",
    )
