"""Where an export may be written, and how it replaces only what legalbuild made.

An export folder is filled in a sibling staging folder and renamed into place when complete. The
rules, so that an export never destroys what it did not make:

- the destination is never followed through a symbolic link, and anything there that is not a
  folder (a file, a device, a FIFO, a socket, a link) is refused, never unlinked;
- a non-empty folder is refused; with `--force` it is replaced only when it is a previous export:
  its `legalbuild-manifest.json` names every file in it (same names and sizes) and nothing else is
  there (no recipe, lock, `.git`, link or extra file); otherwise the refusal lists what would be lost;
- a destination that is or holds a cached input, or the recipe's own folder, is refused;
- the export is written in `export/` inside a partial folder (`.NAME.partial-<pid>-<start>-<rand>`)
  that carries a marker file naming its owner; a later export removes a stale one only when the
  marker is there and its owner is gone, so a user's folder that merely looks like a partial export
  is never touched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from legalbuild.engine.ownership import owner_alive, owner_tag
from legalbuild.errors import LegalbuildError

MANIFEST_NAME = "legalbuild-manifest.json"
MANIFEST_FORMAT = "legalbuild-export/1"
PARTIAL_MARKER = ".legalbuild-partial"
_PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}")
_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a folder")


def check_destination(
    dest: Path, force: bool, sources: list[Path], protected: list[Path] = ()
) -> None:
    """Refuse, before any work, a destination the export could not write without destroying
    something it did not make (see the module docstring). `sources`: cached folders the export
    reads (no overlap either way); `protected`: files the user owns (the recipe, its lock), which
    the destination may not contain."""
    dest = Path(os.path.abspath(dest))
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        what = kind_of(st.st_mode)
        raise LegalbuildError(
            f"export destination {dest} exists and is {what}; legalbuild never replaces it",
            hint="name a new folder (or a previous export of legalbuild's)",
        )
    resolved = dest.resolve()
    for source in (Path(s).resolve() for s in sources):
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise LegalbuildError(
                f"export destination {dest} overlaps the cached folder {source}",
                hint="export to a folder outside the build cache",
            )
    for owned in (Path(p).resolve() for p in protected):
        if resolved in owned.parents:
            raise LegalbuildError(
                f"export destination {dest} holds {owned}, which the export would replace",
                hint="export to a new folder, e.g. `out/` beside the recipe",
            )
    if st is None or not any(os.scandir(dest)):
        return
    if not force:
        raise LegalbuildError(
            f"export destination {dest} is not empty",
            hint="choose an empty or new folder, or pass --force to replace a previous export",
        )
    foreign = not_exported(dest)
    if foreign:
        shown = ", ".join(foreign[:8]) + (
            f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
        )
        raise LegalbuildError(
            f"export destination {dest} is not a previous legalbuild export; --force would lose: {shown}",
            hint="--force replaces only a folder whose legalbuild-manifest.json names everything in "
            "it; move those files away or export to a new folder",
        )


def not_exported(folder: Path) -> list[str]:
    """What in `folder` its export manifest does not account for (every name when there is no
    valid manifest); empty when the folder is exactly a previous export."""
    present: dict[str, int] = {}
    foreign: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(root, name)
            rel = str(path.relative_to(folder))
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                present[rel] = st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                foreign.append(f"{rel} ({kind_of(st.st_mode)})")
    listed = _listed_files(folder)
    if listed is None:
        return foreign + [f"{rel} (no {MANIFEST_NAME} names it)" for rel in sorted(present)]
    for rel, size in sorted(present.items()):
        if rel == MANIFEST_NAME:
            continue
        if rel not in listed:
            foreign.append(f"{rel} (not in {MANIFEST_NAME})")
        elif listed[rel] != size:
            foreign.append(f"{rel} (changed since the export: {size} bytes, {listed[rel]} listed)")
    return foreign


def _listed_files(folder: Path) -> dict[str, int] | None:
    """{relative path: bytes} from a valid export manifest in `folder`, else None."""
    path = folder / MANIFEST_NAME
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or path.stat().st_size > 16 << 20:
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
        files = document["artifact"]["files"]
        if document.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            return None
        return {str(rel): int(entry["bytes"]) for rel, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def staged(
    dest: Path, force: bool, sources: list[Path], protected: list[Path] = ()
) -> Iterator[Path]:
    """A fresh folder to write the export in (`export/` inside a marked partial folder beside
    `dest`); renamed to `dest` when the block succeeds, the partial folder removed whatever happens.
    A full disk (ENOSPC, EFBIG, EDQUOT) becomes an error saying so."""
    dest = Path(os.path.abspath(dest))
    check_destination(dest, force, sources, protected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    partial = _new_partial(dest)
    try:
        staging = partial / "export"
        staging.mkdir()
        yield staging
        check_destination(dest, force, sources, protected)  # nothing new appeared meanwhile
        _replace(staging, dest)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise no_space(dest.parent, exc) from exc
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _new_partial(dest: Path) -> Path:
    """A new partial folder beside `dest`, created (never reused) and marked as legalbuild's."""
    partial = dest.with_name(f".{dest.name}.partial-{owner_tag()}-{secrets.token_hex(4)}")
    partial.mkdir()  # FileExistsError rather than reuse
    (partial / PARTIAL_MARKER).write_text(owner_tag() + "\n", encoding="utf-8")
    return partial


def _replace(staging: Path, dest: Path) -> None:
    """Rename `staging` to `dest`. A previous export there (already checked) is first moved into a
    marked partial folder and removed after, so a crash in between loses nothing."""
    if os.path.lexists(dest) and not any(os.scandir(dest)):
        os.rmdir(dest)  # fails, rather than deletes, if something appeared meanwhile
    if not os.path.lexists(dest):
        os.rename(staging, dest)
        return
    aside = _new_partial(dest)
    try:
        os.rename(dest, aside / "previous")
        os.rename(staging, dest)
    finally:
        if not os.path.lexists(dest) and os.path.lexists(aside / "previous"):
            os.rename(aside / "previous", dest)  # put the previous export back
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale_partials(dest: Path) -> list[Path]:
    """Remove the staging folders of `dest` left by exports that were killed: only folders named as
    legalbuild names them, holding its marker, whose owner process is gone. Returns them."""
    removed = []
    for path in dest.parent.glob(f".{glob_escape(dest.name)}.partial-*"):
        match = _PARTIAL.fullmatch(path.name)
        if not match or match["name"] != dest.name or not _marked(path):
            continue
        pid, start = int(match["pid"]), int(match["start"])
        if not owner_alive(pid, start or None):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _marked(path: Path) -> bool:
    try:
        folder, marker = os.lstat(path), os.lstat(path / PARTIAL_MARKER)
    except OSError:
        return False
    return stat.S_ISDIR(folder.st_mode) and stat.S_ISREG(marker.st_mode)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def no_space(where: Path, exc: OSError) -> LegalbuildError:
    return LegalbuildError(
        f"no space to write the export in {where} ({exc.strerror}); the partial files were removed",
        hint="free some space or export to another disk",
    )
