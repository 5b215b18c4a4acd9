"""The Flower environment: a venv of its own (scripts/setup-flower.sh makes `.venv-flower`).

`LEGALBUILD_FLOWER_VENV` names it; by default it is `.venv-flower` beside the running venv (the
project's `.venv`). Its library versions enter the train key: the silos train with them.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from legalbuild.errors import StageFailedError

ENV_VAR = "LEGALBUILD_FLOWER_VENV"
SETUP_HINT = "run `bash scripts/setup-flower.sh` (or set LEGALBUILD_FLOWER_VENV to such a venv)"
# What a silo and the server run: their versions are part of the federated train key.
LIBRARIES = ("flwr", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "numpy")


def flower_venv() -> Path:
    configured = os.environ.get(ENV_VAR)
    return Path(configured) if configured else Path(sys.prefix).parent / ".venv-flower"


def flower_bin(venv: Path | None = None) -> Path:
    return (venv or flower_venv()) / "bin"


def flower_ready(venv: Path | None = None) -> bool:
    folder = flower_bin(venv)
    return all((folder / name).is_file() for name in ("python", "flower-superlink", "flwr"))


def require_flower() -> Path:
    venv = flower_venv()
    if not flower_ready(venv):
        raise StageFailedError(
            f"[federated] needs Flower's environment and {venv} has none (flower-superlink, flwr)",
            hint=SETUP_HINT,
        )
    return venv


def flower_versions(venv: Path | None = None) -> dict[str, str | None]:
    """Installed versions in the Flower venv, read from package metadata (imports nothing)."""
    venv = venv or flower_venv()
    paths = [str(p) for p in sorted((venv / "lib").glob("python*/site-packages"))]
    found: dict[str, str | None] = dict.fromkeys(LIBRARIES)
    if not paths:
        return found
    for dist in importlib.metadata.distributions(path=paths):
        name = (dist.metadata["Name"] or "").lower()
        if name in found and found[name] is None:
            found[name] = dist.version
    return found
