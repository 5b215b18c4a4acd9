"""The starter recipe written by `legalbuild init` (also shipped as recipes/legal-audit-smollm2.toml)."""

from __future__ import annotations

import re
from importlib import resources


def starter_recipe(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "legal-audit"
    text = (
        resources.files("legalbuild").joinpath("templates/recipe.toml").read_text(encoding="utf-8")
    )
    return text.replace("{name}", slug)
