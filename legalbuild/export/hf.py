"""Copy the merged model out of the cache into one deployable folder with a provenance manifest.

The folder is a plain Hugging Face model (safetensors, config, tokenizer, chat template,
generation_config) that vLLM, transformers or TGI load as is, plus `legalbuild-manifest.json`:
what the caller passes (recipe text, stage keys, digests, licences of the base model and the data)
and, under "artifact", the sha256 and size of every exported file so a deployer can verify the copy.
Every export is written in a sibling temporary folder (`staged`) and renamed into place, so an
interrupted export, or one that runs out of disk space, never leaves a half-written artifact behind
under the destination name, nor the temporary folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from legalbuild.errors import CacheCorruptError, LegalbuildError, NotBuiltError
from legalbuild.hashing import hash_file
from legalbuild.ownership import owner_alive

MANIFEST_NAME = "legalbuild-manifest.json"
MANIFEST_FORMAT = "legalbuild-export/1"


def export_artifact(
    merged_dir: Path,
    dest: Path,
    manifest: dict[str, Any],
    *,
    force: bool = False,
    expected: dict[str, str] | None = None,
) -> Path:
    """Copy `merged_dir` to `dest` and write the manifest there. Returns `dest`.

    Refuses a non-empty `dest` unless `force` (then it is replaced once the new copy is complete).
    `expected` ({relative path: sha256}, from the cache entry's manifest): the copied bytes must
    match it file for file, or CacheCorruptError is raised and nothing is left under `dest`."""
    merged_dir = Path(merged_dir).resolve()
    check_merged_folder(merged_dir)
    with staged(Path(dest), force, sources=[merged_dir]) as staging:
        copy_model(merged_dir, staging, expected)
        write_manifest(staging, manifest)
    return Path(dest).resolve()


@contextmanager
def staged(dest: Path, force: bool, sources: list[Path]) -> Iterator[Path]:
    """A fresh sibling folder to write the export in; renamed to `dest` when the block succeeds,
    removed whatever happens. A full disk (ENOSPC, EFBIG, EDQUOT) becomes an error saying so."""
    dest = dest.resolve()
    check_destination(dest, force, sources)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):  # left by killed exports
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not stale.is_symlink() and not owner_alive(int(pid), None):
            shutil.rmtree(stale, ignore_errors=True)
    staging = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(staging, dest)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise no_space(dest.parent, exc) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def no_space(where: Path, exc: OSError) -> LegalbuildError:
    return LegalbuildError(
        f"no space to write the export in {where} ({exc.strerror}); the partial files were removed",
        hint="free some space or export to another disk",
    )


def copy_model(merged_dir: Path, staging: Path, expected: dict[str, str] | None) -> None:
    copy_tree(merged_dir, staging)
    if expected is not None:
        check_copy(merged_dir, describe_files(staging)["files"], expected)


def write_manifest(staging: Path, manifest: dict[str, Any]) -> None:
    """The manifest, with the sha256 and size of every file already in `staging`."""
    document = {**manifest, "format": MANIFEST_FORMAT, "artifact": describe_files(staging)}
    (staging / MANIFEST_NAME).write_text(
        json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def check_merged_folder(merged_dir: Path) -> None:
    if not (merged_dir / "config.json").is_file() or not any(merged_dir.glob("*.safetensors")):
        raise NotBuiltError(
            f"{merged_dir} is not a merged model folder (config.json or *.safetensors missing)",
            hint="run `legalbuild build` so the merge stage produces the model",
        )


def check_destination(dest: Path, force: bool, sources: list[Path]) -> None:
    """A new or empty folder (any folder with `force`) that overlaps none of the `sources`."""
    dest = dest.resolve()
    for source in (s.resolve() for s in sources):
        if dest == source or source in dest.parents or dest in source.parents:
            raise LegalbuildError(
                f"export destination {dest} overlaps the cached folder {source}",
                hint="export to a folder outside the build cache",
            )
    if dest.is_file():
        raise LegalbuildError(f"export destination {dest} is a file", hint="name a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise LegalbuildError(
            f"export destination {dest} is not empty",
            hint="choose an empty or new folder, or pass --force to replace it",
        )


def check_copy(merged_dir: Path, copied: dict[str, Any], expected: dict[str, str]) -> None:
    """The copied files are exactly the ones the cache recorded, byte for byte."""
    actual = {path: entry["sha256"] for path, entry in copied.items()}
    problems = [f"missing: {p}" for p in sorted(expected.keys() - actual.keys())]
    problems += [
        f"changed: {p}" for p in sorted(expected.keys() & actual.keys()) if expected[p] != actual[p]
    ]
    problems += [f"unexpected: {p}" for p in sorted(actual.keys() - expected.keys())]
    if problems:
        raise CacheCorruptError(
            f"{merged_dir} differs from what the merge stage recorded, nothing exported: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            hint="`legalbuild build RECIPE --force merge` rebuilds the merged model",
        )


def copy_tree(source: Path, target: Path) -> None:
    """Copy file contents only: cache entries are read-only, the export should be writable."""
    for path in sorted(source.rglob("*")):
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
    target.mkdir(parents=True, exist_ok=True)


def describe_files(folder: Path) -> dict[str, Any]:
    files = {
        str(p.relative_to(folder)): {"sha256": hash_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return {"files": files, "total_bytes": sum(f["bytes"] for f in files.values())}
