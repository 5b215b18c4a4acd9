"""The curate stage: contracts + red-flag rulebooks -> pairs.jsonl, card.json, card.md.

Reads `[curate]` (legalbuild.recipe.CurateSection); nothing upstream. The pairs depend only on the
settings, the seed and the bytes of the files `curate_input_files` lists, so the cache key hashes
exactly those: per source a digest and a file count (what the lock shows), and the per-file list
in the entry's manifest.

The curation modules (YAML, ~70 ms to import) are imported by the functions that use them: every
`plan` imports this module to ask `enabled`, also for recipes without `[curate]`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from legalbuild.data.remote import key_digest
from legalbuild.engine.keys import file_set
from legalbuild.errors import DataError
from legalbuild.recipe import key_settings

if TYPE_CHECKING:
    from legalbuild.curation.corpora import Document

DEPENDS_ON: tuple[str, ...] = ()
PREVIEW_DOCUMENTS_PER_CORPUS = 12


def enabled(recipe) -> bool:
    return recipe.curate is not None


def key_inputs(recipe, recipe_path: Path) -> dict:
    settings = key_settings(recipe.curate)
    for corpus in settings["corpora"]:
        corpus.pop("path", None)  # a folder's bytes are hashed below; its location is not
    settings["rulebooks"] = [r for r in settings["rulebooks"] if r.startswith("package:")]
    for entry, source in zip(settings["labelled"], recipe.curate.labelled, strict=True):
        entry["digest"] = key_digest(source, recipe_path.parent)  # its bytes, not where they lie
    files = curate_input_files(recipe, recipe_path)
    return {
        "settings": settings,
        "rulebooks": file_set(files["rulebooks"]),
        "corpora": [file_set(paths) for paths in files["corpora"]],
    }


def run(ctx) -> dict:
    from legalbuild.curation.card import build_card, render_card_markdown
    from legalbuild.curation.labelled import card_entry, labelled_sources
    from legalbuild.curation.pairs import generate_pairs
    from legalbuild.curation.rulebook import load_rulebooks

    settings = ctx.recipe.curate
    if settings is None:
        raise DataError("the curate stage needs a [curate] section in the recipe")
    started = time.perf_counter()
    rulebook = load_rulebooks(list(settings.rulebooks), ctx.recipe_dir)
    documents = load_documents(settings.corpora, ctx.recipe_dir)
    ctx.log(
        f"{len(rulebook.rules)} rules from {len(rulebook.files)} playbook file(s); {len(documents)} documents"
    )
    pairs, stats = generate_pairs(documents, rulebook, settings, log=ctx.log)
    labelled = labelled_sources(settings, rulebook, ctx.recipe_dir, ctx.downloads_dir, ctx.log)
    pairs += [p for source_pairs in labelled.values() for p in source_pairs]
    if not pairs:
        raise DataError(
            "[curate] produced no pair", hint="check the corpora: no clause matched any rule"
        )
    seconds = time.perf_counter() - started
    with (ctx.out_dir / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.row(), ensure_ascii=False) + "\n")
    card = build_card(pairs, documents, rulebook, settings, settings.corpora, stats, seconds)
    card["sources"] += [card_entry(s, len(labelled[s.name])) for s in settings.labelled]
    (ctx.out_dir / "card.json").write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (ctx.out_dir / "card.md").write_text(render_card_markdown(card), encoding="utf-8")
    if len(pairs) < settings.target_pairs * 0.9:
        ctx.log(
            f"warning: {len(pairs)} pairs, below the target of {settings.target_pairs} (see card.md for the caps)"
        )
    ctx.log(f"{len(pairs)} pairs in {seconds:.1f} s")
    return {
        "pairs": len(pairs),
        "seconds": round(seconds, 2),
        "tasks": card["counts"]["task"],
        "verified_by": card["counts"]["verified_by"],
        "documents": card["counts"]["documents"],
    }


def load_documents(corpora, base_dir: Path, per_corpus: int | None = None) -> list[Document]:
    from legalbuild.curation.corpora import load_corpus

    docs: list[Document] = []
    for corpus in corpora:
        found = load_corpus(corpus, base_dir)
        docs += found[:per_corpus] if per_corpus else found
    return docs


def preview_pairs(recipe, recipe_path: Path, n: int) -> list[dict]:
    """N sample pairs from a small subset of the documents; builds and caches nothing."""
    from legalbuild.curation.pairs import generate_pairs
    from legalbuild.curation.rulebook import load_rulebooks

    settings = recipe.curate
    if settings is None:
        raise DataError(f"{recipe_path}: no [curate] section to preview")
    base_dir = Path(recipe_path).parent
    rulebook = load_rulebooks(list(settings.rulebooks), base_dir)
    documents = load_documents(settings.corpora, base_dir, per_corpus=PREVIEW_DOCUMENTS_PER_CORPUS)
    small = settings.model_copy(update={"target_pairs": max(n, 10)})
    pairs, _ = generate_pairs(documents, rulebook, small)
    return [p.row() for p in pairs[:n]]


def curate_input_files(recipe, recipe_path: Path) -> dict[str, list]:
    """Every file whose bytes the pairs depend on, per source: {"rulebooks": [...] (the playbook
    files), "corpora": [[...] per `[[curate.corpora]]` entry, in recipe order]}."""
    from legalbuild.curation.corpora import corpus_files
    from legalbuild.curation.rulebook import rulebook_files

    settings = recipe.curate
    base_dir = Path(recipe_path).parent
    return {
        "rulebooks": rulebook_files(list(settings.rulebooks), base_dir),
        "corpora": [corpus_files(corpus, base_dir) for corpus in settings.corpora],
    }
