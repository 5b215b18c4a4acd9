"""The sweep loop: ask Optuna for a trial, start its process, read its events (report each
validation loss, prune), tell the result; `jobs` trials at once. Stop signals go to every trial
process (processes.stop_signals); an interrupted trial fails and is queued to run again first.
Once the study has its trials, the winner is built with the base recipe's own [eval] (test split)."""

from __future__ import annotations

import math
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from legalbuild.engine.cache import Store
from legalbuild.errors import LegalbuildError
from legalbuild.hardware import visible_gpus
from legalbuild.processes import stop_signals
from legalbuild.sweep import study as studies
from legalbuild.sweep.checks import check_sweep, threads_per_job, usable_cores
from legalbuild.sweep.progress import Progress, minutes
from legalbuild.sweep.results import best_of, record_run, sign, tell, winner_record
from legalbuild.sweep.running import TrialProcess, start, trial_env
from legalbuild.sweep.spec import Sweep

POLL_S = 0.5  # how often the loop looks at its trials when no event comes
MAX_FAILURES = 3  # trials failing in a row (not interrupted): the sweep stops asking for more
RECOVER_S = 30  # how often a waiting sweep looks for trials whose process died


@dataclass
class SweepResult:
    study: str
    counts: dict[str, int]
    best: dict[str, Any] | None
    test: dict[str, Any] | None
    recovered: list[int]
    wall_s: float
    ran: list[int] = field(default_factory=list)


class Loop:
    def __init__(self, sweep: Sweep, study: Any, storage: Any, store: Store, jobs: int, progress):
        self.sweep, self.study, self.storage, self.store = sweep, study, storage, store
        self.jobs, self.progress = jobs, progress
        self.running: list[TrialProcess] = []
        self.events: queue.Queue = queue.Queue()
        self.began = time.time()
        budget = sweep.settings.budget_minutes
        self.deadline = self.began + budget * 60 if budget else None
        self.gpus = visible_gpus()
        self.ran: list[int] = []
        self.failures: list[str] = []  # notes of the trials that failed in a row
        self.interrupted: list[int] = []
        self.winner: TrialProcess | None = None
        self.last_beat = self.last_recover = 0.0

    # -------------------------------------------------------------- what processes.StopSignals calls
    def signal_group(self, signum: int) -> None:
        for handle in list(self.running):
            handle.stop("interrupted", signum)

    # ---------------------------------------------------------------------------------- the loop
    def run(self, guard: Any, worker: bool) -> None:
        trials = self.sweep.settings.trials
        while True:
            if not guard.received:
                while len(self.running) < self.jobs and self._want_more() and self._start_next():
                    if guard.received:
                        self.signal_group(guard.received[0])
            if not self.running:
                # done, over budget, stopped, or (not a worker) waiting for other processes' trials
                waiting = (
                    not worker
                    and len(self.failures) < MAX_FAILURES
                    and studies.finished(self.study) < trials
                )
                if guard.received or not waiting or self._over_budget():
                    return
                self._recover_now()
            self._drain(POLL_S)
            self._heartbeat()
            self.progress.tick(self.running, self._summary)

    def stop_all(self) -> None:
        """An error ends the loop: no trial process outlives it (their trials stay RUNNING in the
        study; the next run fails them and queues them again, as after a kill)."""
        for handle in list(self.running):
            handle.stop("interrupted")
        for handle in list(self.running):
            handle.wait_gone()

    def run_one(self, handle: TrialProcess) -> None:
        self.running.append(handle)
        while self.running:
            self._drain(POLL_S)
            self.progress.tick(self.running, lambda: "the winner on the test split")

    def _over_budget(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def _want_more(self) -> bool:
        if self._over_budget() or len(self.failures) >= MAX_FAILURES:
            return False
        return studies.claimed(self.study) < self.sweep.settings.trials

    def _start_next(self) -> bool:
        from optuna.trial import TrialState

        params = self.sweep.params
        trial = self.study.ask({p.key: p.distribution() for p in params})
        if studies.claimed(self.study, before=trial.number) >= self.sweep.settings.trials:
            trial.set_user_attr("note", "surplus: other processes had started the last trials")
            self.study.tell(trial, state=TrialState.FAIL)
            return False
        trial.set_user_attr(studies.OWNER, studies.me())
        trial.set_user_attr("note", "")
        values = {p.key: trial.params[p.key] for p in params}
        slot = len(self.running)
        gpu = slot if self.jobs > 1 and self.gpus >= self.jobs else None
        threads = threads_per_job(self.jobs)
        trial.set_user_attr(
            studies.CPU_THREADS, threads
        )  # apply and the winner's build train with them
        handle = start(
            self.sweep,
            trial.number,
            values,
            self.sweep.trial_overrides(values, threads),
            self.sweep.study_dir / "trials" / f"{trial.number:04d}",
            self.store.root,
            trial_env(threads, gpu),
            self.events,
        )
        handle.trial = trial
        trial.set_user_attr("folder", str(handle.folder.relative_to(self.sweep.study_dir)))
        self.running.append(handle)
        self.ran.append(trial.number)
        self._beat(handle)
        self.progress.started(handle)
        return True

    def _recover_now(self) -> None:
        if time.time() - self.last_recover >= RECOVER_S:
            self.last_recover = time.time()
            studies.recover_interrupted(self.study, self.storage)

    def _beat(self, handle: TrialProcess) -> None:
        if getattr(self.storage, "get_heartbeat_interval", lambda: None)():
            self.storage.record_heartbeat(handle.trial._trial_id)

    def _heartbeat(self) -> None:
        if time.time() - self.last_beat >= studies.HEARTBEAT_S:
            self.last_beat = time.time()
            for handle in self.running:
                if handle.trial is not None:
                    self._beat(handle)

    # -------------------------------------------------------------------------------- events
    def _drain(self, timeout: float) -> None:
        try:
            items = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        for handle, event in items:
            handle.update(event)
            self.progress.event(handle, event)
            if event["event"] == "val_loss" and handle.trial is not None:
                self._report(handle, event["step"], event["value"])
            elif event["event"] == "exit":
                self._finish(handle, event["code"])

    def _report(self, handle: TrialProcess, step: int, loss: float) -> None:
        """Report the validation loss (negated for a maximised objective: Optuna's pruners compare
        intermediate values in the study's direction) and prune a trial that falls behind."""
        if not math.isfinite(loss):
            return
        handle.trial.report(sign(self.sweep) * loss, step)
        if handle.stop_reason is None and handle.trial.should_prune():
            handle.pruned_at = step
            handle.stop("pruned")
            self.progress.say(
                f"trial {handle.number}: pruned at step {step} (validation loss {loss:.4f})"
            )

    def _finish(self, handle: TrialProcess, code: int) -> None:
        self.running.remove(handle)
        handle.wait_gone()
        handle.exit_code = code
        if handle.trial is None:
            self.winner = handle
            return
        state, detail = tell(self.sweep, self.study, self.storage, handle, code)
        if state in ("INTERRUPTED", "KILLED"):
            self.interrupted.append(handle.number)
        failed = state in ("FAIL", "KILLED")  # killed: retried, but a sweep that keeps dying stops
        self.failures = [*self.failures, detail] if failed else []
        self.progress.ended(handle, state, detail)

    def _summary(self) -> str:
        c = studies.counts(self.study)
        done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
        remaining = self.sweep.settings.trials - done
        text = f"{done}/{self.sweep.settings.trials} finished ({c.get('PRUNED', 0)} pruned)"
        if c.get("COMPLETE"):
            best = self.study.best_trial
            text += (
                f"; best: trial {best.number}, {self.sweep.settings.objective} = {best.value:.4g}"
            )
        eta = self.progress.eta(remaining, self.jobs)
        return text + (f"; sweep ETA ~{minutes(eta)}" if eta is not None else "")


# ------------------------------------------------------------------------------------ entry
def run_sweep(
    sweep: Sweep,
    cache_dir: Path | None,
    *,
    jobs: int | None = None,
    storage: str | None = None,
    worker: bool = False,
    console: Console,
) -> SweepResult:
    """Check the sweep, run its trials, build the winner on the test split; KeyboardInterrupt when
    a stop signal ended it (the interrupted trials are queued to run again)."""
    jobs = jobs or sweep.settings.jobs
    store = Store.open(cache_dir)  # first: its digest memos make the checks' keys cheap
    url = check_sweep(sweep, storage, jobs)  # every refusal before any trial
    store.claim()  # refuses a folder that is not a legalbuild cache before any trial
    studies.claim_study_dir(sweep)
    storage_obj = studies.open_storage(sweep, url)
    study = studies.open_study(sweep, storage_obj, worker)
    recovered = studies.recover_interrupted(study, storage_obj)
    if recovered:
        console.print(f"trials {recovered} were interrupted: they run again first")
    if not worker:
        studies.enqueue_baseline(sweep, study)
    began = time.time()
    with Progress(console, sweep.settings.trials) as progress:
        loop = Loop(sweep, study, storage_obj, store, jobs, progress)
        with stop_signals(loop) as guard:  # type: ignore[arg-type]  (duck-typed: signal_group)
            try:
                loop.run(guard, worker)
                stopped = list(guard.received)
                test = None
                if not stopped and not worker and not loop.failures:
                    test = score_winner(loop, guard)
                    stopped = list(guard.received)
            finally:
                loop.stop_all()
    record_run(study, began, loop.ran, jobs)
    if stopped:
        again = (
            f"trial(s) {loop.interrupted} stopped and queued to run again first; "
            if loop.interrupted
            else ""
        )
        console.print(f"stopped by a signal: {again}the same command resumes the study")
        raise KeyboardInterrupt
    if len(loop.failures) >= MAX_FAILURES:
        raise LegalbuildError(
            f"{len(loop.failures)} trials in a row failed; the last: {loop.failures[-1]}",
            hint=f"read the build.log of the last trials under {sweep.study_dir / 'trials'}",
        )
    return SweepResult(
        sweep.study_name,
        studies.counts(study),
        best_of(study),
        test,
        recovered,
        time.time() - began,
        loop.ran,
    )


def score_winner(loop: Loop, guard: Any) -> dict[str, Any] | None:
    """The best trial's values in the base recipe with its own [eval]: the test split, scored once
    for the winner (recorded in the study; a rerun with the same winner builds nothing)."""
    sweep, study = loop.sweep, loop.study
    best = best_of(study)
    if not sweep.settings.test or best is None or studies.finished(study) < sweep.settings.trials:
        return None
    recorded = study.user_attrs.get("test")
    if recorded and recorded.get("trial") == best["trial"]:
        return recorded
    values = best["values"]
    threads = study.trials[best["trial"]].user_attrs.get(studies.CPU_THREADS)
    handle = start(
        sweep,
        -1,
        values,
        sweep.applied_overrides(values, threads),
        sweep.study_dir / "winner",
        loop.store.root,
        trial_env(usable_cores(), None),
        loop.events,
    )
    loop.progress.started(handle)
    loop.run_one(handle)
    if handle.result is None:
        why = (handle.error or {}).get("message") or f"exit code {handle.exit_code}"
        if guard.received:
            return None
        raise LegalbuildError(
            f"the winner's test build failed: {why}", hint=f"read {handle.log_path}"
        )
    record = winner_record(sweep, best, handle)
    study.set_user_attr("test", record)
    loop.progress.ended(handle, "COMPLETE", f"{sweep.settings.objective} = {record['objective']}")
    return record
