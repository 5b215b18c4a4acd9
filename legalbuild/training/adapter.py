"""The adapter names its base by identity, never by the folder it was trained from.

PEFT's `save_pretrained` writes the base model's local folder into `adapter_config.json`
(`base_model_name_or_path`) and `README.md`. That folder is a cache path of one machine, so the
train entry's bytes would differ per machine and point nowhere elsewhere. After saving, the train
stage replaces it with the base stage's identity (base.json `identity`: `org/name@<commit>`,
`package:<module>/<file>@sha256:<digest>`...); whoever loads the adapter (the merge stage) takes
the base folder from the base stage's entry and checks that the identities match.
"""

from __future__ import annotations

import json
from pathlib import Path

from legalbuild.errors import StageFailedError

_TEXT_SUFFIXES = {".json", ".md", ".txt", ".jinja"}


def base_identity_of(base_entry: Path) -> str:
    """The identity recorded in a base stage output folder's base.json."""
    from legalbuild.basemodel.sources import base_identity

    info = json.loads((base_entry / "base.json").read_text(encoding="utf-8"))
    return info.get("identity") or base_identity(info)


def record_base_identity(adapter_dir: Path, base_entry: Path) -> list[str]:
    """Replace the base's local folder with its identity in every text file of `adapter_dir`.
    Returns the names of the files rewritten. A base folder not made by the base stage (no
    base.json: hand-built test contexts) has no identity, and the adapter keeps PEFT's text."""
    if not (base_entry / "base.json").is_file():
        return []
    identity = base_identity_of(base_entry)
    folders = {str(base_entry / "model"), str((base_entry / "model").resolve())}
    rewritten = []
    for path in sorted(adapter_dir.iterdir()):
        if path.suffix not in _TEXT_SUFFIXES or not path.is_file():
            continue
        text = original = path.read_text(encoding="utf-8")
        if path.name == "adapter_config.json":
            config = json.loads(text)
            config["base_model_name_or_path"] = identity
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        for folder in sorted(folders, key=len, reverse=True):
            text = text.replace(folder, identity)
        if text != original:
            path.write_text(text, encoding="utf-8")
            rewritten.append(path.name)
    return rewritten


def sort_set_fields(adapter_dir: Path) -> None:
    """PEFT keeps `target_modules` (and `exclude_modules`) as a set and writes it in the set's
    order, which follows Python's per-process string hashing: two identical trainings wrote
    ["q_proj", "v_proj"] and ["v_proj", "q_proj"]. Sorted, the file is the same every time."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for name in ("target_modules", "exclude_modules"):
        value = config.get(name)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[name] = sorted(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_adapter_base(adapter_dir: Path, base_entry: Path) -> None:
    """Refuse to load an adapter onto another base than the one it was trained on. Adapters made
    outside legalbuild (a folder path in `base_model_name_or_path`) are not checked."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file() or not (base_entry / "base.json").is_file():
        return  # the stage's own input checks name what is missing
    recorded = str(
        json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    )
    if "@" not in recorded:
        return
    expected = base_identity_of(base_entry)
    if recorded != expected:
        raise StageFailedError(
            f"the adapter in {adapter_dir} was trained on {recorded}, not on this base ({expected})",
            hint="rebuild the train stage against this base",
        )
