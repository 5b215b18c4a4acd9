"""The GGUF file as a cached, stage-like store entry `entries/gguf/<key>/out/` (`model.gguf`,
`gguf.json`), so a second export of the same model and settings copies it at once and
`legalbuild verify` re-hashes it like any stage output.

Its key hashes the merge key, the GGUF type, the converter (built in: the legalbuild code it runs
and the gguf/torch/safetensors/numpy versions; llama.cpp: the digests of its convert_hf_to_gguf.py,
conversion/ and gguf-py/) and nothing about paths. The file is written into a temp entry and
renamed into place only when complete: a failure (a full disk too) leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legalbuild.engine.cache import entry_manifest
from legalbuild.engine.keys import library_versions
from legalbuild.engine.ownership import remove_tree
from legalbuild.errors import LegalbuildError
from legalbuild.export.destination import no_space
from legalbuild.export.gguf import check_out_type, check_supported, write_gguf
from legalbuild.hashing import digest_json, tree_digest

if TYPE_CHECKING:
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded

STAGE = "gguf"
FILE = "model.gguf"
LLAMA_CPP_ENV = "LEGALBUILD_LLAMA_CPP"


def llama_cpp_dir(option: Path | None) -> Path | None:
    """--llama-cpp, else $LEGALBUILD_LLAMA_CPP, else None (the built-in writer)."""
    chosen = option or (Path(os.environ[LLAMA_CPP_ENV]) if os.environ.get(LLAMA_CPP_ENV) else None)
    if chosen is None:
        return None
    chosen = chosen.expanduser().resolve()
    if not (chosen / "convert_hf_to_gguf.py").is_file():
        raise LegalbuildError(
            f"{chosen} is not a llama.cpp checkout (no convert_hf_to_gguf.py in it)",
            hint=f"point --llama-cpp (or {LLAMA_CPP_ENV}) at a clone of "
            "https://github.com/ggml-org/llama.cpp",
        )
    return chosen


def key_inputs(
    merge_key: str, out_type: str, llama_cpp: Path | None, metadata: dict[str, Any]
) -> dict[str, Any]:
    from legalbuild.engine.code_digest import code_files

    check_out_type(out_type)  # llama.cpp's converter writes the same three types itself
    if llama_cpp is None:
        converter: dict[str, Any] = {
            "builtin": digest_json(code_files(__name__)),
            "libraries": library_versions(("gguf", "torch", "safetensors", "numpy")),
        }
    else:
        converter = {
            f"llama.cpp/{part}": tree_digest(llama_cpp / part)
            if (llama_cpp / part).exists()
            else "absent"
            for part in ("convert_hf_to_gguf.py", "conversion", "gguf-py/gguf")
        }
    return {
        "stage": STAGE,
        "upstream": {"merge": merge_key},
        "out_type": out_type,
        "metadata": metadata,  # written into the file (built-in writer)
        **converter,
    }


def cached_gguf(
    loaded: Loaded,
    store: Store,
    merged_dir: Path,
    out_type: str,
    llama_cpp: Path | None,
    log: Callable[[str], None],
) -> tuple[Path, str]:
    """The entry's out/ folder and key, built when missing (or when the cached one is corrupted)."""
    metadata = {
        "name": loaded.recipe.served_model_name or loaded.recipe.project.name,
        "licence": loaded.recipe.model.licence,
    }
    if llama_cpp is None:
        check_supported(merged_dir)  # before anything is written
    else:
        metadata = {}  # llama.cpp's converter names the model itself
    inputs = key_inputs(loaded.nodes["merge"].key, out_type, llama_cpp, metadata)
    key = digest_json(inputs)
    with store.lock(STAGE, key):
        if store.has(STAGE, key):
            problems = store.verify(STAGE, key)
            if not problems:
                log(f"gguf       cache hit ({out_type}, key {key[:12]})")
                return store.out_dir(STAGE, key), key
            log(f"gguf       cached file corrupted ({'; '.join(problems[:3])}): rebuilding it")
        tmp = store.new_tmp(STAGE, key)
        started = time.time()
        try:
            out = tmp / "out"
            if llama_cpp is None:
                info = write_gguf(merged_dir, out / FILE, out_type, **metadata)
            else:
                info = run_llama_cpp(llama_cpp, merged_dir, out / FILE, out_type)
            seconds = round(time.time() - started, 3)
            info = {**info, "seconds": seconds, "bytes": (out / FILE).stat().st_size}
            (out / "gguf.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            store.commit(
                tmp, STAGE, key, entry_manifest(STAGE, key, inputs, info, started, seconds)
            )
        except BaseException as exc:
            remove_tree(tmp)  # a half-written GGUF never stays in the store
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise no_space(store.root, exc) from exc
            raise
    log(f"gguf       wrote {out_type} in {seconds:.1f} s ({info['bytes'] / 1e6:.1f} MB)")
    return store.out_dir(STAGE, key), key


def run_llama_cpp(llama_cpp: Path, model_dir: Path, out_file: Path, out_type: str) -> dict:
    """llama.cpp's own converter, in a subprocess with this Python."""
    cmd = [
        sys.executable,
        str(llama_cpp / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        out_type,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LegalbuildError(
            f"llama.cpp's convert_hf_to_gguf.py failed (exit {proc.returncode}): "
            + " | ".join(tail),
            hint="check that the checkout's requirements are installed, or drop --llama-cpp to use "
            "the built-in writer (Llama models)",
        )
    return {"converter": "llama.cpp", "out_type": out_type}
