"""Which training checkpoint a killed build resumes from, and the samples file that goes with it.

The Trainer writes a checkpoint in place, file by file (adapter, optimizer, scheduler, RNG state,
`trainer_state.json` last), and `save_total_limit` deletes old ones with a plain recursive delete.
A build killed during either leaves a `checkpoint-N` folder that is not a checkpoint, and resuming
from it fails in every later build. `resumable_checkpoint` checks each one cheaply (JSON parses,
safetensors headers match the file sizes, torch files have their zip directory) and returns the
newest complete one; the broken ones are reported and removed, so the Trainer's own rotation never
counts them. No heavy import: only the standard library.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
REQUIRED_TORCH_FILES = ("optimizer.pt", "scheduler.pt")
OPTIONAL_TORCH_FILES = ("rng_state.pth", "scaler.pt")
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 << 20  # the safetensors format's own limit


def safetensors_problems(path: Path) -> list[str]:
    """Why a safetensors file is not whole ([] when its header parses and every tensor's bytes,
    and no more, are in the file)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            if header_len > min(MAX_HEADER, size - 8):
                return [f"{path.name}: truncated ({size:,} bytes, header says {header_len:,})"]
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, struct.error) as exc:
        return [f"{path.name}: unreadable header ({exc})"]
    if not isinstance(header, dict):
        return [f"{path.name}: header is not a JSON object"]
    data_bytes, end = size - 8 - header_len, 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = tensor["data_offsets"]
            need = math.prod(tensor["shape"]) * DTYPE_BYTES[tensor["dtype"]]
        except (KeyError, TypeError, ValueError):
            return [f"{path.name}: tensor {name!r} is described wrongly in the header"]
        if stop - begin != need:
            return [
                f"{path.name}: tensor {name!r} has {stop - begin} bytes, its shape needs {need}"
            ]
        end = max(end, stop)
    if end != data_bytes:
        return [f"{path.name}: {data_bytes:,} data bytes, the header describes {end:,} (truncated)"]
    return []


def torch_file_problems(path: Path) -> list[str]:
    """torch.save writes a zip archive whose directory sits at the end: a cut file has none."""
    try:
        with zipfile.ZipFile(path):
            return []
    except FileNotFoundError:
        return [f"{path.name} is missing"]
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{path.name}: not a whole torch file ({exc})"]


def checkpoint_problems(folder: Path) -> list[str]:
    """Why `folder` cannot be resumed from ([] when it can)."""
    problems = []
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        step = int(state["global_step"])
    except FileNotFoundError:
        problems.append("trainer_state.json is missing")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"trainer_state.json is unreadable ({type(exc).__name__}: {exc})")
    else:
        m = CHECKPOINT.fullmatch(folder.name)
        if m and int(m.group(1)) != step:
            problems.append(f"trainer_state.json says step {step}, the folder {m.group(1)}")
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    if not weights:
        problems.append(f"no {' or '.join(WEIGHT_FILES)}")
    for path in weights:
        problems += safetensors_problems(path)
    if (folder / WEIGHT_FILES[0]).exists():
        try:
            json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"adapter_config.json is missing or unreadable ({exc})")
    for name in REQUIRED_TORCH_FILES:
        problems += torch_file_problems(folder / name)
    for name in OPTIONAL_TORCH_FILES:
        if (folder / name).exists():
            problems += torch_file_problems(folder / name)
    return problems


def resumable_checkpoint(checkpoints: Path, log: Callable[[str], None]) -> Path | None:
    """The newest complete `checkpoint-N` under `checkpoints`, or None. Broken ones are logged
    with the reason and removed (they can never be resumed from)."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p)
        for p in checkpoints.iterdir()
        if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()
    )
    chosen = None
    for _step, folder in reversed(found):
        problems = checkpoint_problems(folder)
        if problems:
            log(f"skipping {folder.name} (incomplete, removed): {'; '.join(problems)}")
            shutil.rmtree(folder, ignore_errors=True)
        elif chosen is None:
            chosen = folder
    return chosen


def trim_samples(path: Path, step: int | None) -> int:
    """Samples survive a crash in work_dir: keep the whole lines of steps up to `step` (the
    resumed checkpoint; None: keep nothing), drop the ones a resumed run will redo and a last line
    torn by a kill. Returns how many torn or unreadable lines were dropped."""
    if not path.exists():
        return 0
    if step is None:
        path.unlink()
        return 0
    kept, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line)
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    return torn
