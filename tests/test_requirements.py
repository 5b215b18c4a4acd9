"""The pinned environment (requirements/, made by `just lock`) and the recipe locks cannot drift
apart: every library version a committed recipes/*.lock records is the version pinned for its
platform, the pin files were made from this pyproject.toml, and a venv that scripts/setup.sh
installed holds exactly the pinned versions."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from helpers import REPO

REQUIREMENTS = REPO / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s|;|$)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of a lock file's `name==version` lines."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := _PIN.match(line):
            out[_name(m.group(1))] = m.group(2)
    return out


def _libraries(lock: dict) -> list[tuple[str, str, str]]:
    """(stage, library, version) for every `libraries.*` input of a recipe lock."""
    return [
        (stage, key.split(".", 1)[1], value)
        for stage, entry in lock.get("stages", {}).items()
        for key, value in entry.get("inputs", {}).items()
        if key.startswith("libraries.")
    ]


def test_every_library_a_recipe_lock_records_is_the_pinned_version():
    locks = sorted((REPO / "recipes").glob("*.lock"))
    assert locks, "no committed recipe lock to compare"
    drift = []
    for path in locks:
        lock = tomllib.loads(path.read_text(encoding="utf-8"))
        gpu = any(
            e.get("inputs", {}).get("accelerator", "cpu") != "cpu"
            for e in lock.get("stages", {}).values()
        )
        pinned_in = REQUIREMENTS / ("gpu.txt" if gpu else "cpu.txt")
        pinned = pins(pinned_in)
        for stage, library, version in _libraries(lock):
            expected = pinned.get(_name(library), "absent")
            if version != expected:
                drift.append(
                    f"{path.name} [stages.{stage}] libraries.{library} = {version!r}, "
                    f"{pinned_in.name} pins {expected!r}"
                )
    assert not drift, (
        "the recipe locks and requirements/ disagree:\n"
        + "\n".join(drift)
        + "\nrebuild the recipe in a venv made by `bash scripts/setup.sh` (and commit its lock), "
        "or pin those versions in pyproject.toml and run `just lock`"
    )


def test_the_pin_files_were_made_from_this_pyproject():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lock.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_changed_or_new_extra_is_told_to_run_just_lock():
    lock = runpy.run_path(str(REPO / "scripts" / "lock.py"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert lock["problems"](pyproject) == []
    extras = pyproject["project"]["optional-dependencies"]
    extras["dev"] = [*extras["dev"], "optuna>=5"]
    extras["tune"] = ["optuna>=5"]
    assert lock["problems"](pyproject) == [
        "pyproject.toml's extra 'tune' is in no lock: add it to LOCKS (or UNLOCKED) in "
        "scripts/lock.py",
        "requirements/dev-cpu.txt was not made from this pyproject.toml: run `just lock`",
    ]


def test_the_locks_pin_torch_builds_and_share_their_pins():
    cpu, dev, gpu = (pins(REQUIREMENTS / n) for n in ("cpu.txt", "dev-cpu.txt", "gpu.txt"))
    assert cpu["torch"] == "2.13.0+cpu" and gpu["torch"] == "2.13.0"
    assert {k: dev[k] for k in cpu} == cpu  # the test venv runs what README command 1 installs
    assert "llama-cpp-python" in dev and "llama-cpp-python" not in cpu  # llama.cpp: tests only
    for name in ("torchvision", "torchaudio", "torchcodec", "llm"):  # they break vLLM on CPU
        assert name not in cpu and name not in dev
    for name in ("cpu.txt", "dev-cpu.txt", "gpu.txt"):
        text = (REQUIREMENTS / name).read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 4)[-1])
        unhashed = [e.split()[0] for e in entries if _PIN.match(e) and "--hash=sha256:" not in e]
        assert unhashed == [], f"{name}: pinned without a hash: {unhashed}"


def test_the_running_venv_holds_the_pinned_versions():
    marker = Path(sys.prefix) / "legalbuild-lock"
    if not marker.is_file():
        pytest.skip(
            f"this venv ({sys.prefix}) was not installed from a lock by scripts/setup.sh "
            f"(no {marker.name} in it): only the recipe locks were compared with requirements/"
        )
    lock = REPO / marker.read_text(encoding="utf-8").strip()
    wrong = []
    for name, version in pins(lock).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            wrong.append(f"{name}: installed {installed}, {lock.name} pins {version}")
    assert not wrong, "\n".join(wrong) + "\nrerun `bash scripts/setup.sh` (with --dev for tests)"
