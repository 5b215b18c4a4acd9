"""What every command shares: the consoles, the recipe/cache/--json options, and opening a recipe
with its cache store (the store first: its memos make computing the keys cheap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe file (TOML).", show_default=False)]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Cache root (default: $LEGALBUILD_CACHE or the user cache dir).",
        show_default=False,
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Stop after this stage (e.g. normalize, train, merge)."),
]


AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def store_of(cache_dir: Path | None):
    from legalbuild.engine.cache import Store

    return Store.open(cache_dir)


def loaded_of(recipe: Path):
    from legalbuild.engine.pipeline import Loaded

    return Loaded.from_path(recipe)


def open_recipe(recipe: Path, cache_dir: Path | None):
    """The store first (its memos make computing the keys cheap), then the recipe's graph."""
    store = store_of(cache_dir)
    return loaded_of(recipe), store


def log(message: str) -> None:
    console.print(message, markup=False)
