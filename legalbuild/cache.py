"""The content-addressed store of stage outputs.

Layout under the store root:

    entries/<stage>/<key>/manifest.json   key, inputs, output digests, versions, timings, metrics
    entries/<stage>/<key>/out/            what the stage wrote
    tmp/<stage>-<key>-<pid>-<rand>/       an entry being built (renamed into entries/ when done)
    work/<stage>-<key>/                   scratch that survives a crash (training checkpoints)
    locks/<stage>-<key>.lock              one builder per key; a second one waits, then hits the cache

An entry exists only once its folder has been renamed into place, and the rename happens after the
manifest is written, so a build killed at any moment leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from legalbuild.code_digest import attach_memo
from legalbuild.hashing import HashMemo, tree_manifest

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
        HashMemo.attach(self.root / "hash-memo.json")
        attach_memo(self.root / "code-memo.json")

    @classmethod
    def open(cls, cache_dir: str | Path | None = None) -> Store:
        return cls(default_root(cache_dir))

    # ----------------------------------------------------------------------------- locations
    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / "entries" / stage / key

    def out_dir(self, stage: str, key: str) -> Path:
        return self.entry_dir(stage, key) / "out"

    def work_dir(self, stage: str, key: str) -> Path:
        return self.root / "work" / f"{stage}-{key}"

    def has(self, stage: str, key: str) -> bool:
        return (self.entry_dir(stage, key) / "manifest.json").is_file()

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        path = self.entry_dir(stage, key) / "manifest.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def lock(self, stage: str, key: str) -> FileLock:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{stage}-{key}.lock"))

    # ------------------------------------------------------------------------------- writing
    def new_tmp(self, stage: str, key: str) -> Path:
        """A fresh temporary entry folder with an empty out/ inside."""
        tmp = self.root / "tmp" / f"{stage}-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        (tmp / "out").mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, stage: str, key: str, manifest: dict[str, Any]) -> Path:
        """Record output digests, write the manifest, and rename the temp folder into place."""
        manifest = {**manifest, "outputs": tree_manifest(tmp / "out")}
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=str)
        )
        final = self.entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force: move the old entry aside first, then drop it
            trash = self.root / "tmp" / f"trash-{stage}-{key[:16]}-{secrets.token_hex(4)}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        shutil.rmtree(self.work_dir(stage, key), ignore_errors=True)
        return final

    def failed_dir(self, stage: str, key: str) -> Path:
        return self.root / "failed" / f"{stage}-{key[:16]}"

    def keep_failed(self, tmp: Path, stage: str, key: str) -> Path | None:
        """Move a failed build's temp folder to failed/ (replacing an older one) for inspection."""
        dest = self.failed_dir(stage, key)
        try:
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "out", dest)
        except OSError:
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def remove(self, stage: str, key: str) -> bool:
        entry = self.entry_dir(stage, key)
        if not entry.exists():
            return False
        trash = self.root / "tmp" / f"trash-{stage}-{key[:16]}-{secrets.token_hex(4)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, trash)  # atomic: the entry disappears at once, deletion can be slow
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # ------------------------------------------------------------------------------- reading
    def entries(self) -> Iterator[EntryRef]:
        base = self.root / "entries"
        if not base.is_dir():
            return
        for stage_dir in sorted(base.iterdir()):
            for entry in sorted(stage_dir.iterdir()):
                if (entry / "manifest.json").is_file():
                    yield EntryRef(stage_dir.name, entry.name)

    def verify(self, stage: str, key: str) -> list[str]:
        """Re-hash an entry's outputs; return a problem per missing, changed or unexpected file."""
        manifest = self.manifest(stage, key)
        if manifest is None:
            return ["manifest.json is missing or unreadable"]
        expected: dict[str, str] = manifest.get("outputs", {})
        actual = (
            tree_manifest(self.out_dir(stage, key)) if self.out_dir(stage, key).exists() else {}
        )
        problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
        problems += [
            f"changed: {p}"
            for p in sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p])
        ]
        problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
        return problems

    def size_bytes(self, stage: str, key: str) -> int:
        return sum(f.stat().st_size for f in self.entry_dir(stage, key).rglob("*") if f.is_file())

    # ------------------------------------------------------------------------------ cleaning
    def clean_tmp(self, older_than_s: float = 0) -> int:
        """Remove temp folders of builds whose process is gone (or all older than a threshold)."""
        tmp_root = self.root / "tmp"
        removed = 0
        if not tmp_root.is_dir():
            return 0
        for d in tmp_root.iterdir():
            pid = _pid_of(d.name)
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            if time.time() - d.stat().st_mtime < older_than_s:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        return removed


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    if name.startswith("trash-") or len(parts) < 4:
        return None
    try:
        return int(parts[-2])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
