"""The content-addressed store of stage outputs.

Layout under the store root (every name legalbuild writes there):

    CACHEDIR.TAG                          marks the folder as a legalbuild store (backup tools skip it)
    entries/<stage>/<key>/manifest.json   key, inputs, output digests, versions, timings, metrics
    entries/<stage>/<key>/out/            what the stage wrote (and entries/gguf/: exported GGUF files)
    tmp/<stage>-<key16>-<pid>-<start>-<rand>/        an entry being built (renamed into entries/ when done)
    tmp/trash-<stage>-<key16>-<pid>-<start>-<rand>/  an old entry being deleted
    work/<stage>-<key>/                   scratch that survives a crash (training checkpoints)
    failed/<stage>-<key16>/               what a failed build wrote, for reading
    locks/<stage>-<key>.lock              one builder per key; a second one waits, then hits the cache
    hash-memo.json                        digests of big data files, to speed up `plan`

An entry exists only once its folder has been renamed into place, and the rename happens after the
manifest is written, so a build killed at any moment leaves nothing that looks complete. A temp
folder names its builder (pid and process start time): the next build removes the ones whose
builder is gone, and never one of a live builder (a reused pid has another start time).

Ownership: `gc`, `clean` and the temp clean-up delete only inside a folder marked by legalbuild's
CACHEDIR.TAG, only names of the forms above (a stage name and a hex key), and never through a
symlink: a symlinked entry or folder is reported and left alone, with whatever it points at. A store
made before the marker existed is adopted (marked) when every name at its top is one of the above;
any other non-empty folder is refused, for building as for deleting.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from legalbuild import __version__
from legalbuild.engine.code_digest import attach_memo
from legalbuild.engine.graph import DERIVED
from legalbuild.engine.graph import STORED as ALL_STAGES
from legalbuild.engine.ownership import (
    KEY,
    MARKER,
    MARKER_TEXT,
    NAMES,
    ROOT_TMP_NAME,
    TMP_NAME,
    TOP_NAMES,
    NotAStoreError,
    StrayError,
    check_ref,
    owner_alive,
    owner_tag,
    real_dir,
    remove_tree,
)
from legalbuild.errors import LegalbuildError
from legalbuild.files import tree_files
from legalbuild.hashing import HashMemo, hash_file, tree_manifest

ENV_VAR = "LEGALBUILD_CACHE"


def default_root(cache_dir: str | Path | None = None) -> Path:
    """--cache-dir flag, else $LEGALBUILD_CACHE, else the user's cache dir."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    if env := os.environ.get(ENV_VAR):
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("legalbuild")).resolve()


@dataclass(frozen=True)
class EntryRef:
    stage: str
    key: str


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._claimed = False
        # plan's digest memos are kept on disk only in a folder legalbuild owns
        marked = self.is_marked()
        HashMemo.attach(self.root / "hash-memo.json" if marked else None)
        if marked:
            attach_memo(self.root / "code-memo.json")

    @classmethod
    def open(cls, cache_dir: str | Path | None = None) -> Store:
        return cls(default_root(cache_dir))

    # ----------------------------------------------------------------------------- ownership
    def is_marked(self) -> bool:
        marker = self.root / MARKER
        try:
            return not marker.is_symlink() and "legalbuild" in marker.read_text(errors="replace")
        except OSError:
            return False

    def claim(self) -> None:
        """Before writing or deleting: create the store with its marker, adopt an unmarked folder
        laid out as legalbuild lays out stores, or refuse any other folder."""
        if self._claimed or self.is_marked():
            self._claimed = True
            return
        self.check_claimable()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{MARKER}.tmp{os.getpid()}"
        tmp.write_text(MARKER_TEXT)
        os.replace(tmp, self.root / MARKER)
        self._claimed = True
        HashMemo.attach(self.root / "hash-memo.json")

    def check_claimable(self) -> None:
        """NotAStoreError unless the folder is a store, absent, or laid out as legalbuild lays out
        stores; writes nothing (what a dry run checks)."""
        if self.is_marked():
            return
        if self.root.exists() and not real_dir(self.root):
            raise NotAStoreError(self.root, ["it is a file or a symlink, not a folder"])
        foreign = [
            f"{p.name} (a symlink)" if p.is_symlink() else p.name
            for p in (sorted(self.root.iterdir()) if self.root.exists() else [])
            # another tool's CACHEDIR.TAG makes it theirs (ours may appear now: a concurrent build)
            if p.is_symlink()
            or not TOP_NAMES.fullmatch(p.name)
            or (p.name == MARKER and not self.is_marked())
        ]
        if foreign:
            raise NotAStoreError(self.root, foreign)

    # ----------------------------------------------------------------------------- locations
    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / "entries" / stage / key

    def out_dir(self, stage: str, key: str) -> Path:
        return self.entry_dir(stage, key) / "out"

    def work_dir(self, stage: str, key: str) -> Path:
        return self.root / "work" / f"{stage}-{key}"

    def has(self, stage: str, key: str) -> bool:
        """A committed entry: its manifest is there and no folder on the way is a symlink."""
        entry = self.entry_dir(stage, key)
        if any(p.is_symlink() for p in (entry, entry.parent, entry.parent.parent)):
            return False
        return (entry / "manifest.json").is_file()

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        path = self.entry_dir(stage, key) / "manifest.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def made_from(self, stage: str, keys: set[str]) -> set[tuple[str, str]]:
        """The derived entries (graph.DERIVED: export's GGUF files) made from these entries of
        `stage`, as their manifests record it (`inputs.upstream.<stage>`)."""
        found = set()
        for entry in self.entries():
            if entry.stage in DERIVED:
                upstream = (self.manifest(entry.stage, entry.key) or {}).get("inputs", {})
                if upstream.get("upstream", {}).get(stage) in keys:
                    found.add((entry.stage, entry.key))
        return found

    def output_digests(self, stage: str, key: str, under: str = "") -> dict[str, str]:
        """{path relative to `out/<under>`: sha256} as the entry's manifest recorded them."""
        outputs = (self.manifest(stage, key) or {}).get("outputs", {})
        prefix = f"{under.strip('/')}/" if under else ""
        return {p[len(prefix) :]: d for p, d in outputs.items() if p.startswith(prefix)}

    def lock(self, stage: str, key: str) -> FileLock:
        check_ref(stage, key)
        self.claim()
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{stage}-{key}.lock"))

    # ------------------------------------------------------------------------------- writing
    def new_tmp(self, stage: str, key: str) -> Path:
        """A fresh temporary entry folder with an empty out/ inside, named after its builder."""
        check_ref(stage, key)
        self.claim()
        tmp = self.root / "tmp" / f"{stage}-{key[:16]}-{owner_tag()}-{secrets.token_hex(4)}"
        (tmp / "out").mkdir(parents=True)
        return tmp

    def _trash(self, stage: str, key: str) -> Path:
        trash = self.root / "tmp" / f"trash-{stage}-{key[:16]}-{owner_tag()}-{secrets.token_hex(4)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        return trash

    def commit(self, tmp: Path, stage: str, key: str, manifest: dict[str, Any]) -> Path:
        """Record output digests (and each file's size and modification time, for `quick_check`),
        write the manifest, and rename the temp folder into place."""
        check_ref(stage, key)
        outputs = tree_manifest(tmp / "out")
        stats = {p: _size_and_time(tmp / "out" / p) for p in outputs}
        manifest = {**manifest, "outputs": outputs, "stats": stats}
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=str)
        )
        final = self.entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():  # --force: move the old entry aside, then drop it
            trash = self._trash(stage, key)
            os.replace(final, trash)
            os.replace(tmp, final)
            remove_tree(trash)
        else:
            os.replace(tmp, final)
        remove_tree(self.work_dir(stage, key))
        return final

    def failed_dir(self, stage: str, key: str) -> Path:
        return self.root / "failed" / f"{stage}-{key[:16]}"

    def keep_failed(self, tmp: Path, stage: str, key: str) -> Path | None:
        """Move a failed build's temp folder to failed/ (replacing an older one) for inspection."""
        dest = self.failed_dir(stage, key)
        try:
            remove_tree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "out", dest)
        except OSError:
            return None
        finally:
            remove_tree(tmp)
        return dest

    def remove(self, stage: str, key: str) -> bool:
        """Drop an entry (False when there is none). A symlink in its place is not followed:
        StrayError says so and leaves it."""
        check_ref(stage, key)
        entry = self.entry_dir(stage, key)
        if not (entry.exists() or entry.is_symlink()):
            return False
        self.claim()
        if any(p.is_symlink() for p in (entry, entry.parent, entry.parent.parent)):
            raise StrayError(
                f"{stage} {key[:12]}: {entry} is (or lies under) a symlink, not an entry legalbuild "
                "wrote; skipped, not followed",
                hint="remove the link yourself if it should go",
            )
        trash = self._trash(stage, key)
        os.replace(entry, trash)  # atomic: the entry disappears at once, deletion can be slow
        remove_tree(trash)
        return True

    # ------------------------------------------------------------------------------- reading
    def entries(self) -> Iterator[EntryRef]:
        """Committed entries with names legalbuild writes; symlinks and other names are skipped
        (`strays` lists them)."""
        base = self.root / "entries"
        if not real_dir(base):
            return
        for stage_dir in sorted(base.iterdir()):
            if stage_dir.name not in ALL_STAGES or not real_dir(stage_dir):
                continue
            for entry in sorted(stage_dir.iterdir()):
                if (
                    KEY.fullmatch(entry.name)
                    and real_dir(entry)
                    and (entry / "manifest.json").is_file()
                ):
                    yield EntryRef(stage_dir.name, entry.name)

    def strays(self) -> list[str]:
        """What lies where legalbuild keeps its folders but is not legalbuild's: symlinks and
        foreign names under entries/, tmp/, work/, failed/. Never deleted; gc reports them."""
        found = []
        for top, is_ours in NAMES.items():
            folder = self.root / top
            if folder.is_symlink():
                found.append(f"{top} (a symlink: not followed)")
                continue
            for p in sorted(folder.iterdir()) if folder.is_dir() else []:
                if p.is_symlink():
                    found.append(f"{top}/{p.name} (a symlink: not followed)")
                elif not is_ours(p.name):
                    found.append(f"{top}/{p.name} (not a name legalbuild writes)")
                elif top == "entries" and p.is_dir():
                    found += [
                        f"entries/{p.name}/{e.name}"
                        + (" (a symlink: not followed)" if e.is_symlink() else " (not an entry)")
                        for e in sorted(p.iterdir())
                        if e.is_symlink() or not (KEY.fullmatch(e.name) and e.is_dir())
                    ]
        return found

    def verify(self, stage: str, key: str) -> list[str]:
        """Re-hash every byte of an entry's outputs (no memo); return a problem per missing,
        changed or unexpected file."""
        manifest = self.manifest(stage, key)
        if manifest is None:
            return ["manifest.json is missing or unreadable"]
        expected: dict[str, str] = manifest.get("outputs", {})
        out = self.out_dir(stage, key)
        actual = tree_manifest(out) if out.is_dir() else {}
        problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
        problems += [
            f"changed: {p}"
            for p in sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p])
        ]
        problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
        return problems

    def quick_check(self, stage: str, key: str) -> list[str]:
        """What a cheap look finds wrong with an entry's outputs (no re-hash of unchanged files):
        a file missing, unexpected, or of another kind or size than its manifest records, or with
        another modification time and other bytes (only such a file is re-hashed). A byte changed
        in place with the time put back is found by `verify` alone."""
        manifest = self.manifest(stage, key)
        if manifest is None:
            return ["manifest.json is missing or unreadable"]
        expected: dict[str, str] = manifest.get("outputs", {})
        stats: dict[str, list[int]] = manifest.get("stats", {})  # absent before this check existed
        out = self.out_dir(stage, key)
        try:
            actual = {str(p.relative_to(out)): p for p in tree_files(out)} if out.is_dir() else {}
        except LegalbuildError as exc:  # a FIFO, device or broken link among the outputs
            return [exc.message]
        problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
        problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
        for name in sorted(expected.keys() & actual.keys()):
            size, mtime = _size_and_time(actual[name])
            recorded = stats.get(name, [size, mtime])
            if size != recorded[0]:
                problems.append(f"changed: {name} ({size:,} bytes, {recorded[0]:,} recorded)")
            elif mtime != recorded[1] and hash_file(actual[name]) != expected[name]:
                problems.append(f"changed: {name}")
        return problems

    def size_bytes(self, stage: str, key: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.entry_dir(stage, key)):  # symlinks not followed
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
        return total

    # ------------------------------------------------------------------------------ cleaning
    def scratch(self, kind: str) -> list[Path]:
        """work/ or failed/ folders with names legalbuild writes (symlinks and other names left out)."""
        folder = self.root / kind
        if kind not in ("work", "failed") or not real_dir(folder):
            return []
        return [p for p in sorted(folder.iterdir()) if NAMES[kind](p.name) and real_dir(p)]

    def drop_scratch(self, path: Path) -> None:
        if path not in self.scratch(path.parent.name) or path.parent.parent != self.root:
            raise ValueError(f"not a work/ or failed/ folder of this store: {path}")
        self.claim()
        remove_tree(path)

    def busy(self, stage: str, key: str) -> bool:
        """Is a builder working on this key now (holding its lock)?"""
        lock = self.lock(stage, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def clean_tmp(self) -> list[str]:
        """Remove the temp folders of builders that are gone (their pid is dead, or now names a
        process that started later). A live builder's folders, other names and symlinks stay."""
        removed: list[str] = []
        for folder, pattern in ((self.root / "tmp", TMP_NAME), (self.root, ROOT_TMP_NAME)):
            if not real_dir(folder):
                continue
            for p in folder.iterdir():
                m = pattern.fullmatch(p.name)
                if m is None or p.is_symlink():
                    continue
                pid = m.group(1)
                start = m.group(2) if pattern is TMP_NAME else None
                if pid is not None and owner_alive(int(pid), int(start) if start else None):
                    continue
                self.claim()
                if p.is_dir():
                    remove_tree(p)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed


def _size_and_time(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def entry_manifest(
    stage: str,
    key: str,
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    started: float,
    seconds: float,
) -> dict[str, Any]:
    """The manifest of a new entry (a stage's, or a derived one such as a GGUF): what made it,
    its metrics, versions, when and where; `commit` adds the digests of its outputs."""
    return {
        "stage": stage,
        "key": key,
        "inputs": inputs,
        "metrics": metrics,
        "versions": {
            "legalbuild": __version__,
            "python": platform.python_version(),
            **inputs.get("libraries", {}),
        },
        "timings": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(seconds, 3),
        },
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
