"""The Optuna study of a sweep: its storage (a journal file in the study folder, or PostgreSQL),
its definition (a changed sweep file under the same study name is refused), the trials whose sweep
process died (failed, then queued again with the same values, as Optuna's retry callback does),
and what counts towards the number of trials (complete and pruned ones)."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from typing import Any

from legalbuild.engine.ownership import owner_alive, process_start
from legalbuild.errors import LegalbuildError, NotBuiltError, RecipeError
from legalbuild.hashing import digest_json
from legalbuild.sweep.checks import hide_password
from legalbuild.sweep.spec import Sweep

JOURNAL = "journal.log"
MARKER = (
    "legalbuild-study.json"  # marks a study folder as legalbuild's (its trial folders are replaced)
)
OWNER = "owner"  # user attr of a running trial: the sweep process that runs it
CPU_THREADS = "cpu_threads"  # user attr: the CPU threads the trial trained with
HEARTBEAT_S = 60  # PostgreSQL: a trial whose sweep sent no heartbeat for GRACE_S is failed
GRACE_S = 300


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and its experimental-feature warnings stay off the terminal
    (the sweep prints its own progress)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def retry_callback(max_retry: int | None = None) -> Any:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)


def claim_study_dir(sweep: Sweep) -> None:
    """The study folder is legalbuild's: made here with its marker, or already marked. A folder
    of that name made by someone else (or a symbolic link) is refused, never written into."""
    folder, marker = sweep.study_dir, sweep.study_dir / MARKER
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise RecipeError(f"{folder}: exists and is not a folder legalbuild made for a study")
    if folder.is_dir() and not marker.is_file() and any(folder.iterdir()):
        raise RecipeError(
            f"{folder}: a folder legalbuild did not make is in the way of the study folder",
            hint="move it away, or rename the sweep file (the folder is <sweep file name>-study)",
        )
    folder.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(json.dumps({"study": sweep.study_name, "sweep": sweep.path.name}) + "\n")


def open_storage(sweep: Sweep, url: str | None) -> Any:
    quiet_optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(sweep.study_dir / JOURNAL)))
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    for attempt in range(5):
        try:
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_callback(),
            )
        except IntegrityError as exc:  # workers creating the tables at once: one wins
            if attempt == 4:
                raise _unreachable(url, exc) from None
            time.sleep(0.5 + random.random() * (attempt + 1))
        except SQLAlchemyError as exc:
            raise _unreachable(url, exc) from None
    raise AssertionError("unreachable")


def _unreachable(url: str, exc: Exception) -> LegalbuildError:
    shown = hide_password(url)
    first = str(exc).strip().splitlines()[0][:300]
    return LegalbuildError(
        f"cannot open the study storage {shown}: {first}",
        hint="is the PostgreSQL server up, and the database created (createdb NAME)?",
    )


def definition(sweep: Sweep) -> dict[str, Any]:
    """What makes two runs the same study: the searched keys, what is fixed, the objective."""
    s = sweep.settings
    shown = {
        "recipe": sweep.recipe_path.name,
        "objective": s.objective,
        "direction": s.direction,
        "space": s.space,
        "fixed": s.fixed,
        "validation": s.validation,
    }
    return {**shown, "digest": digest_json(shown)}


def open_study(sweep: Sweep, storage: Any, worker: bool = False) -> Any:
    """Create the study or load it; RecipeError when it was made from another sweep definition."""
    import optuna

    s = sweep.settings
    study = optuna.create_study(
        study_name=sweep.study_name,
        storage=storage,
        sampler=make_sampler(sweep, worker),
        pruner=make_pruner(sweep),
        direction=s.direction,
        load_if_exists=True,
    )
    mine = definition(sweep)
    theirs = study.user_attrs.get("definition")
    if theirs is None:
        study.set_user_attr("definition", mine)
    elif theirs.get("digest") != mine["digest"]:
        changed = [k for k in mine if k != "digest" and theirs.get(k) != mine[k]]
        raise RecipeError(
            f"{sweep.path.name}: study {sweep.study_name!r} was made from another sweep "
            f"definition ({', '.join(changed)} changed); its trials would not compare",
            hint="give the sweep a new `study` name, or delete the study folder to start over",
        )
    return study


def load_study(sweep: Sweep, url: str | None) -> Any:
    """An existing study (for report and apply); NotBuiltError when it has no trial yet."""
    import optuna

    quiet_optuna()
    if url is None and not (sweep.study_dir / JOURNAL).is_file():
        raise NotBuiltError(
            f"no study {sweep.study_name!r} yet (no {sweep.study_dir.name}/{JOURNAL})",
            hint=f"run `legalbuild sweep {sweep.path.name}` first",
        )
    try:
        return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep, url))
    except KeyError:
        raise NotBuiltError(
            f"no study {sweep.study_name!r} in that storage",
            hint=f"run `legalbuild sweep {sweep.path.name}` first",
        ) from None


def make_sampler(sweep: Sweep, worker: bool) -> Any:
    """TPE (multivariate, with a constant liar for trials that run at once), random or grid.
    Workers draw from their own seed (same seed: the same values on every host)."""
    import optuna

    s = sweep.settings
    seed = s.seed if not worker else (s.seed + os.getpid() * 7919) % 2**32
    if s.sampler == "grid":
        grid = {p.key: list(p.choices or ()) for p in sweep.params}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, s.trials // 3))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
    )


def make_pruner(sweep: Sweep) -> Any:
    import optuna

    p = sweep.settings.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps
        )
    if p.kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- trials and owners
def me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def fail_and_retry(
    study: Any, storage: Any, trial_id: int, note: str, max_retry: int | None = None
) -> bool:
    """Fail a running trial and queue its values again, at most `max_retry` times for one set of
    values (False: another process finished it). `trial_id` is the storage's id of the trial
    (optuna's `_trial_id`), not its number."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "note", note)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry_callback(max_retry)(study, storage.get_trial(trial_id))
    return True


def recover_interrupted(study: Any, storage: Any) -> list[int]:
    """Running trials whose sweep process on this host is gone (kill -9, a crash, a reboot) fail
    and run again; on PostgreSQL, those of other hosts once their heartbeat is GRACE_S old."""
    import optuna
    from optuna.trial import TrialState

    host, again = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER) or {}
        if owner.get("host") != host or owner_alive(owner.get("pid", 0), owner.get("start")):
            continue
        if fail_and_retry(
            study, storage, t._trial_id, "interrupted: its sweep process died; run again"
        ):
            again.append(t.number)
    optuna.storages.fail_stale_trials(study)
    return again


def counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished(study: Any) -> int:
    c = counts(study)
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0)


def claimed(study: Any, before: int | None = None) -> int:
    """Trials that count or will: complete, pruned, running (only those numbered below `before`)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if before is None or t.number < before)


def enqueue_baseline(sweep: Sweep, study: Any) -> dict[str, Any] | None:
    """The base recipe's own values as a trial, when they lie in the space, until one such trial
    has finished (queued again after a failure; never twice while one is queued or running)."""
    from optuna.trial import TrialState

    from legalbuild.sweep.overrides import resolve_key, value_at

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False, states=alive)
    if not sweep.settings.baseline or any(t.user_attrs.get("baseline") for t in trials):
        return None
    values = {p.key: value_at(sweep.recipe, resolve_key(p.key, "[space]")) for p in sweep.params}
    if not all(p.contains(values[p.key]) for p in sweep.params):
        return None
    study.enqueue_trial(values, user_attrs={"baseline": True})
    return values
