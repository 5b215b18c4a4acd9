"""The normalize stage: every data source becomes one clean, deduplicated train/validation split.

`run` gathers the recipe's `[[data.sources]]`, adds the curate stage's pairs.jsonl as the source
`curated` when that stage ran, and hands them to `legalbuild.data.normalize.normalize_sources`,
which writes `train.jsonl`, `val.jsonl`, `test.jsonl`, `rejects.jsonl` and `stats.json` under ctx.out_dir (the
decisions it makes are documented there).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.data.normalize import normalize_sources
from legalbuild.data.readers import source_files
from legalbuild.data.rows import CURATED_GROUP_FIELD, CURATED_META_FIELDS, CURATED_SOURCE
from legalbuild.engine.keys import file_set
from legalbuild.errors import DataError

if TYPE_CHECKING:
    from legalbuild.engine.context import StageContext
    from legalbuild.recipe import DataSource, Recipe

DEPENDS_ON = ("curate",)


def enabled(recipe: Recipe) -> bool:
    """Always, but for a federated recipe without data of the coordinator's own."""
    return bool(recipe.data.sources) or recipe.curate is not None


def run(ctx: StageContext) -> dict:
    """The stage: user sources, then the curated pairs when the curate stage ran."""
    sources = stage_sources(ctx.recipe, ctx.inputs)
    return normalize_sources(sources, ctx.recipe.data, ctx.resolve, ctx.out_dir, ctx.log)


def key_inputs(recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    """The data settings and, per source, the files it reads (where they lie is not hashed)."""
    from legalbuild.recipe import key_settings

    settings = key_settings(recipe.data)
    settings.pop("system_prompt")  # read by train/merge/eval, not by normalize
    sources = []
    for src, src_settings in zip(recipe.data.sources, settings.pop("sources"), strict=True):
        src_settings.pop("path")
        path = source_path(src, Path(recipe_path).parent)
        files = source_input_files(src, Path(recipe_path).parent)
        src_settings["data"] = file_set(files, root=path if path.is_dir() else path.parent)
        sources.append(src_settings)
    return {"settings": settings, "sources": sources}


def normalize_input_files(recipe: Recipe, recipe_path: Path) -> list[Path]:
    """Every file whose bytes the output depends on (for the cache key); cheap, reads nothing.

    Missing paths are left out: the stage itself then reports them as a DataError. The curated
    pairs are not listed: they enter the key through the curate stage's key."""
    base = Path(recipe_path).parent
    return sorted({f for src in recipe.data.sources for f in source_input_files(src, base)})


def source_input_files(src: DataSource, recipe_dir: Path) -> list[Path]:
    """The files one source reads (all files of a folder); [] when the path is missing."""
    return source_files(source_path(src, recipe_dir), src.format)


def source_path(src: DataSource, recipe_dir: Path) -> Path:
    path = Path(src.path).expanduser()
    return path if path.is_absolute() else (recipe_dir / path).resolve()


def stage_sources(recipe: Recipe, inputs: dict[str, Path]) -> list[DataSource]:
    """The recipe's sources, plus `curated` (the curate stage's pairs.jsonl) when it ran."""
    from legalbuild.recipe import DataSource

    sources = list(recipe.data.sources)
    if "curate" in inputs:
        if any(s.name == CURATED_SOURCE for s in sources):
            raise DataError(
                f"a data source is named {CURATED_SOURCE!r}, the name reserved for the [curate] pairs",
                hint="rename that [[data.sources]] entry",
            )
        sources.append(
            DataSource(
                name=CURATED_SOURCE,
                path=str(Path(inputs["curate"]) / "pairs.jsonl"),
                format="jsonl",
                input_field=None,
                group_field=CURATED_GROUP_FIELD,
                meta_fields=CURATED_META_FIELDS,
            )
        )
    return sources
