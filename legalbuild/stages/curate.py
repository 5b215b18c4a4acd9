"""The curate stage: contracts + red-flag rulebooks -> pairs.jsonl, card.json, card.md.

Reads `[curate]` (legalbuild.recipe.CurateSection); nothing upstream. The pairs depend only on the
settings, the seed and the bytes of the files `curate_input_files` lists, so the cache key hashes
exactly those.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from legalbuild.curation.card import build_card, render_card_markdown
from legalbuild.curation.corpora import (
    Document,
    licensedcode_cc_by_file,
    load_corpus,
)
from legalbuild.curation.pairs import generate_pairs
from legalbuild.curation.rulebook import load_rulebooks, rulebook_files
from legalbuild.errors import DataError

VERSION = "4"
PREVIEW_DOCUMENTS_PER_CORPUS = 12


def run(ctx) -> dict:
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
    if not pairs:
        raise DataError(
            "[curate] produced no pair", hint="check the corpora: no clause matched any rule"
        )
    seconds = time.perf_counter() - started
    with (ctx.out_dir / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.row(), ensure_ascii=False) + "\n")
    card = build_card(pairs, documents, rulebook, settings, settings.corpora, stats, seconds)
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
    docs: list[Document] = []
    for corpus in corpora:
        found = load_corpus(corpus, base_dir)
        docs += found[:per_corpus] if per_corpus else found
    return docs


def preview_pairs(recipe, recipe_path: Path, n: int) -> list[dict]:
    """N sample pairs from a small subset of the documents; builds and caches nothing."""
    settings = recipe.curate
    if settings is None:
        raise DataError(f"{recipe_path}: no [curate] section to preview")
    base_dir = Path(recipe_path).parent
    rulebook = load_rulebooks(list(settings.rulebooks), base_dir)
    documents = load_documents(settings.corpora, base_dir, per_corpus=PREVIEW_DOCUMENTS_PER_CORPUS)
    small = settings.model_copy(update={"target_pairs": max(n, 10)})
    pairs, _ = generate_pairs(documents, rulebook, small)
    return [p.row() for p in pairs[:n]]


def curate_input_files(recipe, recipe_path: Path) -> list[Path]:
    """Every file whose bytes the pairs depend on: the contracts read, the rulebook files."""
    settings = recipe.curate
    if settings is None:
        return []
    base_dir = Path(recipe_path).parent
    files = set(rulebook_files(list(settings.rulebooks), base_dir))
    for corpus in settings.corpora:
        files.update(doc.path for doc in load_corpus(corpus, base_dir))
        if corpus.kind == "licensedcode":
            files.add(licensedcode_cc_by_file())
    return sorted(files)
