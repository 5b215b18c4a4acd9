"""How trials end, as the study records them: `tell` (complete with the objective read from the
trial's eval.json, pruned at a step, interrupted and queued again, failed with its error), the
winner's build on the test split, and each run of the sweep (wall time, host, CPU flags)."""

from __future__ import annotations

import json
import math
import signal
import socket
import time
from pathlib import Path
from typing import Any

from legalbuild.hardware import host_summary
from legalbuild.sweep import study as studies
from legalbuild.sweep.checks import objective_value
from legalbuild.sweep.running import TrialProcess
from legalbuild.sweep.spec import Sweep

RETRIES = 2  # a trial process killed by a signal the sweep did not send runs again at most twice


def sign(sweep: Sweep) -> float:
    """Intermediate values are the validation loss, negated when the objective is maximised:
    Optuna's pruners compare them in the study's direction."""
    return -1.0 if sweep.settings.direction == "maximize" else 1.0


def tell(
    sweep: Sweep, study: Any, storage: Any, handle: TrialProcess, code: int
) -> tuple[str, str]:
    """Tell Optuna how the trial ended; (state, what to print)."""
    from optuna.trial import TrialState

    trial, result, objective = handle.trial, handle.result, sweep.settings.objective
    trial.set_user_attr("seconds", round(time.time() - handle.started, 1))
    trial.set_user_attr("stages", handle.stages)
    if result is not None and handle.stages.get("train", {}).get("hit"):
        _report_cached_curve(handle, Path(result["outputs"]["train"]), sign(sweep))
    trial.set_user_attr("val_loss", handle.val_losses)
    if code == 0 and result is not None:  # a trial that ended before its stop signal counts
        eval_json = json.loads((Path(result["outputs"]["eval"]) / "eval.json").read_text())
        value = objective_value(eval_json, objective)
        trial.set_user_attr("eval", eval_json.get("headline", {}))
        if isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, float(value))
            return "COMPLETE", f"{objective} = {value:.4g}"
        note = f"{objective} is {value!r} in eval.json"
    elif handle.stop_reason == "pruned":
        trial.set_user_attr("pruned_at", handle.pruned_at)
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED", f"at step {handle.pruned_at}"
    elif handle.stop_reason == "interrupted":
        note = "interrupted (stopped by a signal): queued to run again first"
        studies.fail_and_retry(study, storage, trial._trial_id, note)
        return "INTERRUPTED", note
    elif code < 0:  # a signal the sweep did not send: the out-of-memory killer, an operator
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        note = f"its process was killed by {name} (out of memory?): queued to run again"
        studies.fail_and_retry(study, storage, trial._trial_id, note, max_retry=RETRIES)
        return "KILLED", note
    else:
        error = handle.error or {}
        note = error.get("message") or f"exit code {code}; see {handle.log_path}"
    trial.set_user_attr("note", note)
    study.tell(trial, state=TrialState.FAIL)
    return "FAIL", note


def _report_cached_curve(handle: TrialProcess, train_out: Path, sign: float) -> None:
    """A trial whose training was a cache hit trained nothing: its curve is the cached one."""
    try:
        history = json.loads((train_out / "log_history.json").read_text())
    except (OSError, ValueError):
        return
    for entry in history:
        if "eval_loss" in entry and "step" in entry and math.isfinite(entry["eval_loss"]):
            handle.val_losses.append((int(entry["step"]), float(entry["eval_loss"])))
            handle.trial.report(sign * float(entry["eval_loss"]), int(entry["step"]))


def best_of(study: Any) -> dict[str, Any] | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    return {"trial": best.number, "value": best.value, "values": best.params}


def winner_record(sweep: Sweep, best: dict[str, Any], handle: TrialProcess) -> dict[str, Any]:
    """What the study keeps of the winner's build with the recipe's own [eval]."""
    eval_json = json.loads((Path(handle.result["outputs"]["eval"]) / "eval.json").read_text())
    return {
        "trial": best["trial"],
        "values": best["values"],
        "split": eval_json.get("split"),
        "rows": eval_json.get("rows"),
        "objective": _safe_value(eval_json, sweep.settings.objective),
        "headline": eval_json.get("headline", {}),
        "stages": handle.stages,
    }


def _safe_value(eval_json: dict[str, Any], path: str) -> Any:
    try:
        return objective_value(eval_json, path)
    except KeyError:
        return None


def record_run(study: Any, began: float, ran: list[int], jobs: int) -> None:
    """This run of the sweep (wall time, host and its CPU flags), under a key of its own."""
    me = studies.me()
    study.set_user_attr(
        f"run:{me['host']}:{me['pid']}:{me['start']}",
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(began)),
            "wall_s": round(time.time() - began, 1),
            "trials": ran,
            "jobs": jobs,
            "host": {**host_summary(), "name": socket.gethostname()},
        },
    )
