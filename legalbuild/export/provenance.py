"""Where a built artifact came from: recipe, stage keys, output digests, versions and licences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild import __version__
from legalbuild.engine.lock import read_lock

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def licences(loaded: Loaded, store: Store) -> dict[str, Any]:
    """Licences of the base model and of every data source that went into the build."""
    out: dict[str, Any] = {"base_model": loaded.recipe.model.licence or "unknown", "data": []}
    if (base_out := loaded.output(store, "base")) is not None:
        base = _read_json(base_out / "base.json")
        # the recipe's licence wins: it is not part of the key, so base.json may predate an edit
        out["base_model"] = loaded.recipe.model.licence or base.get("licence") or "unknown"
    if (curate_out := loaded.output(store, "curate")) is not None:
        card = _read_json(curate_out / "card.json")
        out["data"] += [
            {k: s.get(k) for k in ("name", "kind", "licence", "attribution")}
            for s in card.get("sources", [])
        ]
        rulebooks = card.get("rulebooks") or {}
        if rulebooks:
            out["data"].append(
                {
                    "name": "rulebooks",
                    "licence": rulebooks.get("licence"),
                    "attribution": rulebooks.get("attribution"),
                }
            )
    out["data"] += [
        {"name": s.name, "path": s.path, "licence": "as declared by the data owner"}
        for s in loaded.recipe.data.sources
    ]
    return out


def build_manifest(loaded: Loaded, store: Store) -> dict[str, Any]:
    lock = read_lock(loaded.recipe_path)
    return {
        "legalbuild": __version__,
        "recipe_file": loaded.recipe_path.name,
        "recipe": loaded.recipe_path.read_text(encoding="utf-8"),
        "stages": {
            name: {
                "key": node.key,
                "outputs": (store.manifest(name, node.key) or {}).get("outputs", {}),
            }
            for name, node in loaded.nodes.items()
        },
        "lock": lock,
        "licences": licences(loaded, store),
        "served_model_name": loaded.recipe.served_model_name,
        "system_prompt": loaded.recipe.data.system_prompt,
    }
