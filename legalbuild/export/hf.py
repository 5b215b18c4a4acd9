"""Copy the merged model out of the cache into one deployable folder with a provenance manifest.

The folder is a plain Hugging Face model (safetensors, config, tokenizer, chat template,
generation_config) that vLLM, transformers or TGI load as is, plus `legalbuild-manifest.json`:
what the caller passes (recipe text, stage keys, digests, licences of the base model and the data)
and, under "artifact", the sha256 and size of every exported file so a deployer can verify the copy.
Every export is written in a sibling temporary folder (`destination.staged`) and renamed into
place, so an interrupted export, or one that runs out of disk space, never leaves a half-written
artifact behind under the destination name, nor the temporary folder; what may be replaced is
decided in `destination.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from legalbuild.errors import CacheCorruptError, NotBuiltError
from legalbuild.export.destination import MANIFEST_FORMAT, MANIFEST_NAME, staged
from legalbuild.hashing import hash_file


def export_artifact(
    merged_dir: Path,
    dest: Path,
    manifest: dict[str, Any],
    *,
    force: bool = False,
    expected: dict[str, str] | None = None,
) -> Path:
    """Copy `merged_dir` to `dest` and write the manifest there. Returns `dest`.

    Refuses a non-empty `dest` unless `force` and it is a previous export (then it is replaced
    once the new copy is complete).
    `expected` ({relative path: sha256}, from the cache entry's manifest): the copied bytes must
    match it file for file, or CacheCorruptError is raised and nothing is left under `dest`."""
    merged_dir = Path(merged_dir).resolve()
    check_merged_folder(merged_dir)
    with staged(Path(dest), force, sources=[merged_dir]) as staging:
        copy_model(merged_dir, staging, expected)
        write_manifest(staging, manifest)
    return Path(dest).resolve()


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
