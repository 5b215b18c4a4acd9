"""One export folder for one or more formats, written at once (hf.staged) from verified cache
entries:

- `hf`: the merged Hugging Face folder, byte-checked against the merge entry, plus README.md (card.py);
- `gguf`: `<name>.<type>.gguf` from the cached GGUF entry (gguf_entry.py);
- `ollama`: the GGUF plus a `Modelfile` (ollama.py) whose FROM names it.

`legalbuild-manifest.json` lists every file with its sha256, the recipe and the stage keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from legalbuild.errors import CacheCorruptError, LegalbuildError
from legalbuild.export.destination import check_destination, staged
from legalbuild.export.hf import copy_model, write_manifest

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded

FORMATS = ("hf", "gguf", "ollama")


@dataclass
class ExportResult:
    dest: Path
    files: list[str] = field(default_factory=list)
    gguf_key: str | None = None
    seconds: float = 0.0


def export_recipe(
    loaded: Loaded,
    store: Store,
    dest: Path,
    formats: list[str],
    *,
    force: bool = False,
    gguf_type: str = "f16",
    llama_cpp: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> ExportResult:
    from legalbuild.engine import pipeline
    from legalbuild.engine.lock import lock_path
    from legalbuild.export.provenance import build_manifest

    started = time.time()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise LegalbuildError(
            f"unknown export format {', '.join(unknown) or '(none)'}",
            hint=f"--format takes {', '.join(FORMATS)} (repeat it for several)",
        )
    protected = [loaded.recipe_path, lock_path(loaded.recipe_path)]
    check_destination(Path(dest), force, [store.root], protected)  # before any work
    if "gguf" in formats or "ollama" in formats:
        from legalbuild.export.gguf import check_out_type

        check_out_type(gguf_type)
    # the GGUF writer and the Modelfile read the merged folder: re-hash it first; an `hf` copy alone
    # is checked byte for byte as it is copied (copy_model), so it is not hashed twice
    reads_merged = "gguf" in formats or "ollama" in formats
    merged = pipeline.locate_output(loaded, store, "merge", verify=reads_merged) / "model"
    name = loaded.recipe.served_model_name or loaded.recipe.project.name
    gguf_name = f"{_safe(name)}.{gguf_type}.gguf"
    # the Modelfile first: a chat template Ollama cannot express fails before the GGUF is written
    ollama_text = ollama_modelfile(loaded, merged, gguf_name) if "ollama" in formats else None
    sources, gguf_dir, key = [merged], None, None
    if "gguf" in formats or "ollama" in formats:
        from legalbuild.export.gguf_entry import cached_gguf, llama_cpp_dir

        gguf_dir, key = cached_gguf(loaded, store, merged, gguf_type, llama_cpp_dir(llama_cpp), log)
        sources.append(gguf_dir)
    manifest = build_manifest(loaded, store)
    with staged(Path(dest), force, sources, protected) as staging:
        if "hf" in formats:
            expected = store.output_digests("merge", loaded.nodes["merge"].key, under="model")
            copy_model(merged, staging, expected)
        if gguf_dir is not None:
            _copy_checked(gguf_dir / "model.gguf", staging / gguf_name, store, key)
            manifest["gguf"] = {"key": key, "type": gguf_type, "file": gguf_name}
        if ollama_text is not None:
            (staging / "Modelfile").write_text(ollama_text, encoding="utf-8")
        if "hf" in formats:
            from legalbuild.export.card import model_card

            files = sorted(p.name for p in staging.iterdir()) + ["README.md"]
            (staging / "README.md").write_text(model_card(loaded, store, files), encoding="utf-8")
        manifest["formats"] = sorted(formats, key=FORMATS.index)
        write_manifest(staging, manifest)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    return ExportResult(Path(os.path.abspath(dest)), files, key, round(time.time() - started, 3))


def ollama_modelfile(loaded: Loaded, merged: Path, gguf_name: str) -> str:
    """The Modelfile text: the template derived from the merged tokenizer's chat template and
    checked on conversations like the ones legalbuild sends."""
    from transformers import AutoTokenizer

    from legalbuild.export.ollama import check_wrappers, derive_wrappers, modelfile
    from legalbuild.prompting import audit_instruction, chat_messages

    tokenizer = AutoTokenizer.from_pretrained(merged)

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )

    wrappers = derive_wrappers(render)
    system = loaded.recipe.data.system_prompt
    question = audit_instruction("Either party may terminate on 30 days notice.")
    check_wrappers(
        wrappers,
        render,
        [
            chat_messages(system or "s", question),
            [{"role": "user", "content": question}],
            [*chat_messages(system or "s", "a"), {"role": "assistant", "content": "b"}]
            + [{"role": "user", "content": "c"}],
        ],
    )
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    eos = gen.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in ids))
    num_ctx = min(int(config.get("max_position_embeddings", 4096)), 8192)
    return modelfile(gguf_name, wrappers, system, stops, num_ctx)


def _copy_checked(source: Path, target: Path, store: Store, key: str | None) -> None:
    from legalbuild.hashing import hash_file

    shutil.copyfile(source, target)
    recorded = store.output_digests("gguf", key or "").get("model.gguf")
    if recorded != hash_file(target):
        raise CacheCorruptError(
            f"the cached GGUF {source} differs from its manifest, nothing exported",
            hint="export again: a corrupted GGUF entry is rebuilt",
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
