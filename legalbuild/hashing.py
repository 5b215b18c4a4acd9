"""Content digests.

`file_digest` is memoised by (path, size, mtime) so `plan` re-hashes no unchanged data file. That
memo is a speed-up for computing keys only: whatever checks integrity (`verify`, a stage reading an
upstream entry, `export`, the digests recorded at commit) reads every byte with `hash_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from legalbuild.files import check_input_path, tree_files

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same settings always give the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read now (never from a memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised in-process and in the on-disk hash memo (see HashMemo).
    For cache keys only: a byte changed with the mtime kept goes unnoticed here."""
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key in _memo:
        return _memo[memo_key]
    if (cached := HashMemo.shared().get(memo_key)) is not None:
        _memo[memo_key] = cached
        return cached
    digest = hash_file(path)
    _memo[memo_key] = digest
    HashMemo.shared().put(memo_key, digest)
    return digest


def tree_digest(root: str | Path) -> str:
    """Digest of a folder: relative paths and file digests (the folder's own location is not hashed)."""
    root = Path(root)
    if root.is_file():
        check_input_path(root)  # refuses /proc and /sys files: they change as they are read
        return file_digest(root)
    return digest_json({str(p.relative_to(root)): file_digest(p) for p in tree_files(root)})


def path_digest(recipe_dir: Path, path: str) -> str:
    """Digest of a file or folder named in the recipe (relative to its folder); "missing" when
    absent (the stage reports the missing path with a clear error when it runs)."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else recipe_dir / p
    if not p.exists():
        return "missing"
    return tree_digest(p)


def tree_manifest(root: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root, every byte read now (no memo): the digests
    cache manifests and the lock record, and what `verify` compares them with."""
    root = Path(root)
    files = tree_files(root)
    # hashlib releases the GIL on large buffers: a few threads hash a model's shards in parallel
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(hash_file, files))
    return {str(p.relative_to(root)): d for p, d in zip(files, digests, strict=True)}


class HashMemo:
    """A small JSON file remembering digests of big files (GGUF, safetensors) across processes."""

    _instance: HashMemo | None = None

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, list] = {}
        self.dirty = False
        if path and path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError):
                self.data = {}

    @classmethod
    def shared(cls) -> HashMemo:
        if cls._instance is None:
            cls._instance = HashMemo(None)
        return cls._instance

    @classmethod
    def attach(cls, path: Path | None) -> None:
        cls._instance = HashMemo(path)

    def get(self, key: tuple[str, int, int]) -> str | None:
        entry = self.data.get(key[0])
        return entry[2] if entry and entry[0] == key[1] and entry[1] == key[2] else None

    def put(self, key: tuple[str, int, int], digest: str) -> None:
        if self.path is None or os.path.getsize(key[0]) < (1 << 20):
            return  # small files are cheap to hash; keep the memo small
        self.data[key[0]] = [key[1], key[2], digest]
        self.dirty = True
        self.save()

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)
        self.dirty = False
