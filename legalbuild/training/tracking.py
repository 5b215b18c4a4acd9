"""Experiment trackers with no network: W&B offline, TensorBoard and trackio, all under out/tracking.

The Trainer's own integrations do the logging; this module points them at folders inside the stage
output through their environment variables, for the duration of the run only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from legalbuild.errors import RecipeError

_TRACKER_MODULES = {"wandb": "wandb", "tensorboard": "tensorboard", "trackio": "trackio"}


def selected_trackers(report_to: list[str]) -> list[str]:
    """The trackers to use ("none" alone, or mixed in, means no tracker); each must be installed."""
    trackers = [] if "none" in report_to else sorted(set(report_to))
    for tracker in trackers:
        if importlib.util.find_spec(_TRACKER_MODULES[tracker]) is None:
            raise RecipeError(
                f"[train.report_to] {tracker!r} is not installed",
                hint="pip install 'legalbuild[track]' (wandb, trackio) or 'legalbuild[train]' (tensorboard), "
                'or set report_to = ["none"]',
            )
    return trackers


def tracker_environment(trackers: list[str], tracking_dir: Path, project: str) -> dict[str, str]:
    """Environment variables that keep each tracker's files in tracking_dir and off the network."""
    env: dict[str, str] = {}
    if "wandb" in trackers:
        (tracking_dir / "wandb").mkdir(parents=True, exist_ok=True)
        env.update(
            WANDB_DIR=str(tracking_dir / "wandb"), WANDB_PROJECT=project, WANDB_SILENT="true"
        )
        if not os.environ.get("WANDB_API_KEY"):
            env["WANDB_MODE"] = (
                "offline"  # `wandb sync out/tracking/wandb/offline-run-*` uploads it later
            )
    if "tensorboard" in trackers:
        (tracking_dir / "tensorboard").mkdir(parents=True, exist_ok=True)
        env["TENSORBOARD_LOGGING_DIR"] = str(tracking_dir / "tensorboard")
    if "trackio" in trackers:
        (tracking_dir / "trackio").mkdir(parents=True, exist_ok=True)
        env["TRACKIO_DIR"] = str(tracking_dir / "trackio")
    return env


@contextmanager
def tracking_environment(
    trackers: list[str], tracking_dir: Path, project: str
) -> Iterator[dict[str, str]]:
    """Set the trackers' variables for the run, then restore the caller's environment."""
    env = tracker_environment(trackers, tracking_dir, project)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    patched = _point_loaded_trackio_at(Path(env["TRACKIO_DIR"])) if "TRACKIO_DIR" in env else []
    try:
        yield env
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _point_loaded_trackio_at(trackio_dir: Path) -> list[tuple[object, str, object]]:
    """trackio reads TRACKIO_DIR once, at import, into module constants (and TRL imports trackio
    before the stage can set the variable): repoint those constants; returns what to restore."""
    import sys

    targets = {
        "TRACKIO_DIR": trackio_dir,
        "MEDIA_DIR": trackio_dir / "media",
        "ARTIFACTS_DIR": trackio_dir / "artifacts",
    }
    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attr, value in targets.items():
            if isinstance(getattr(module, attr, None), Path):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, value)
    return patched


def finish_wandb() -> None:
    """Close the W&B run so its offline files are complete before the stage output is committed."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
