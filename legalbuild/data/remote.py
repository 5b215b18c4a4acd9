"""Find a recipe's data file (`recipe.fields.RemoteFile`): the local path, a mirror, or a download.

In order: `path` (relative to the recipe) when it exists; a file of the URL's (or path's) name in
one of the LEGALBUILD_MIRROR folders; `downloads/<sha256>` in the cache, from an earlier download;
a download of `url`, streamed into a temp file, checked against `sha256`, then renamed into place.
Whatever is found is checked against `sha256` when the recipe gives one: a mismatch is a DataError,
never silently used. The cache key is the declared `sha256` (else the local file's digest), so the
same bytes give the same key wherever they were found.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legalbuild.errors import DataError
from legalbuild.files import check_input_path, display_path
from legalbuild.hashing import hash_file, path_digest

MIRROR_ENV = "LEGALBUILD_MIRROR"
TIMEOUT_S = 60
MAX_DOWNLOAD_BYTES = 4 << 30  # a data file, not a model: more is refused


def key_digest(spec: Any, recipe_dir: Path) -> str:
    """What the cache key holds for the file: its declared sha256, else the local file's digest
    ("missing" when there is none: the stage then fails with a clear error)."""
    if spec.sha256:
        return spec.sha256
    return path_digest(recipe_dir, spec.path) if spec.path else "missing"


def locate(
    spec: Any, recipe_dir: Path, downloads: Path | None, log: Callable[[str], None] = print
) -> Path:
    """The local file for `spec` (see the module docstring); DataError naming what was tried."""
    tried = []
    if spec.path:
        local = Path(spec.path).expanduser()
        local = local if local.is_absolute() else recipe_dir / local
        if local.exists():
            check_input_path(local, allow_dir=False)
            return _checked(local, spec.sha256)
        tried.append(f"{display_path(local)} (no such file)")
    name = Path(spec.url or spec.path or "").name
    for folder in filter(None, os.environ.get(MIRROR_ENV, "").split(os.pathsep)):
        candidate = Path(folder) / name
        if candidate.is_file():
            return _checked(candidate, spec.sha256)
        tried.append(f"{display_path(candidate)} ({MIRROR_ENV})")
    if spec.url and downloads is not None:
        stored = downloads / spec.sha256
        if stored.is_file() and hash_file(stored) == spec.sha256:
            return stored
        return _download(spec.url, spec.sha256, stored, log)
    raise DataError(
        f"data file not found: tried {'; '.join(tried) or 'nothing'}",
        hint=f"put the file at `path`, point {MIRROR_ENV} at a folder holding {name or 'it'}, or "
        "give `url` and `sha256` to download it",
    )


def _checked(path: Path, sha256: str | None) -> Path:
    if sha256 is not None and (actual := hash_file(path)) != sha256:
        raise DataError(
            f"{display_path(path)}: sha256 {actual[:16]}... differs from the recipe's {sha256[:16]}...",
            hint="the file changed or is another version: fetch the right one, or update `sha256` "
            "if this version is the one you want",
        )
    return path


def _download(url: str, sha256: str, dest: Path, log: Callable[[str], None]) -> Path:
    """Stream `url` into a temp file beside `dest`, check its digest, rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    digest, size = hashlib.sha256(), 0
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(temp, "wb") as out:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: larger than {MAX_DOWNLOAD_BYTES >> 30} GiB, refused")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url}: the download's sha256 {digest.hexdigest()[:16]}... differs from the "
                f"recipe's {sha256[:16]}...; nothing was kept",
                hint="the file at that URL changed: check the source, then update `sha256`",
            )
        os.replace(temp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"{url}: download failed ({getattr(exc, 'reason', None) or exc})",
            hint=f"check the network, or point {MIRROR_ENV} at a folder holding {Path(url).name}",
        ) from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
    log(f"downloaded {size:,} bytes, sha256 checked")
    return dest
