"""What in a cache folder belongs to legalbuild: the marker, the names it writes, and which temp
folders a live builder still owns. `legalbuild.engine.cache` deletes nothing that fails these checks."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from legalbuild.engine.graph import STORED as ALL_STAGES
from legalbuild.errors import LegalbuildError

MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by legalbuild (store format 1).\n"
    "# legalbuild gc and clean delete only inside a folder that holds this file.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_STAGES = "|".join(ALL_STAGES)
TOP_NAMES = re.compile(
    r"entries|tmp|work|failed|locks|downloads|hash-memo\.json|hash-memo\.tmp\d+|code-memo\.json"
    r"|\.code-memo\.json\.tmp\d+|CACHEDIR\.TAG(\.tmp\d+)?"
)
KEY = re.compile(r"[0-9a-f]{64}")
WORK_NAME = re.compile(rf"(?:{_STAGES})-[0-9a-f]{{64}}")
FAILED_NAME = re.compile(rf"(?:{_STAGES})-[0-9a-f]{{16}}")
# older legalbuilds wrote <stage>-<key16>-<pid>-<rand> and trash-<stage>-<key16>-<rand>
TMP_NAME = re.compile(
    rf"(?:trash-)?(?:{_STAGES})-[0-9a-f]{{16}}(?:-(\d+)(?:-(\d+))?)?-[0-9a-f]{{8}}"
)
ROOT_TMP_NAME = re.compile(r"(?:hash-memo|\.code-memo\.json|CACHEDIR\.TAG)\.tmp(\d+)")
NAMES = {  # the names legalbuild writes in each of its folders
    "entries": lambda name: name in ALL_STAGES,
    "tmp": TMP_NAME.fullmatch,
    "work": WORK_NAME.fullmatch,
    "failed": FAILED_NAME.fullmatch,
}


def check_ref(stage: str, key: str) -> None:
    if stage not in ALL_STAGES or not KEY.fullmatch(key):
        raise ValueError(f"not a stage name and key legalbuild writes: {stage!r} {key!r}")


def real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def remove_tree(path: Path) -> None:
    """Delete a folder legalbuild made; rmtree never follows a symlink inside it."""
    if path.is_symlink():
        return
    shutil.rmtree(path, ignore_errors=True)


def process_start(pid: int) -> int | None:
    """A running process's start time (clock ticks since boot, from /proc); 0 for a zombie (it
    has exited); None where unknown (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return 0 if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_tag() -> str:
    return f"{os.getpid()}-{process_start(os.getpid()) or 0}"


def owner_alive(pid: int, start: int | None) -> bool:
    """Is the builder that named a temp folder still running? A pid alone may have been reused
    (a container restarts its pids from 1): a known start time must match too."""
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    current = process_start(pid)
    if current == 0:
        return False  # a zombie: killed, not yet reaped
    return not start or current is None or current == start


class NotAStoreError(LegalbuildError):
    """The folder given as the cache holds things legalbuild did not write (and no marker)."""

    def __init__(self, root: Path, foreign: list[str]):
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        super().__init__(
            f"{root} is not a legalbuild cache: it has no legalbuild {MARKER} and holds {shown}",
            hint="point --cache-dir or LEGALBUILD_CACHE at a new or empty folder, or at a legalbuild "
            "cache (a cache holds only entries/, tmp/, work/, failed/, locks/, downloads/, "
            f"hash-memo.json, code-memo.json and {MARKER}); legalbuild neither builds into nor "
            "deletes from any other folder",
        )


class StrayError(LegalbuildError):
    """Something legalbuild did not write stands where an entry would be (a symlink)."""
