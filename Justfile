# legalbuild developer tasks (`just --list`). `just` itself comes with the dev extra (rust-just).
recipe := "recipes/legal-audit-smollm2.toml"

# create .venv from the pinned environment (requirements/cpu.txt); `just setup --dev` adds the
# test tools (requirements/dev-cpu.txt)
setup *args:
    bash scripts/setup.sh {{args}}

# regenerate every lock under requirements/ from pyproject.toml (`just lock --upgrade`: newest
# allowed versions; `just lock --check`: are they current?)
lock *args:
    python3 scripts/lock.py {{args}}

# the whole test suite, slow tests included (what CI runs)
test *args:
    .venv/bin/python -m pytest {{args}}

# the fast tests only
test-fast *args:
    .venv/bin/python -m pytest -m "not slow" {{args}}

lint:
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .

fmt:
    .venv/bin/ruff check --fix .
    .venv/bin/ruff format .

# build the embedded default recipe (curate -> normalize -> base -> train -> merge -> eval)
build recipe=recipe:
    .venv/bin/legalbuild build {{recipe}}

plan recipe=recipe:
    .venv/bin/legalbuild plan {{recipe}}

serve recipe=recipe:
    .venv/bin/legalbuild serve {{recipe}}

report recipe=recipe:
    .venv/bin/legalbuild report {{recipe}}

# benchmarks: each prints its figures as ratios measured in one run
bench:
    .venv/bin/python bench/noop_build.py
    .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_distributed.py
    .venv/bin/python bench/serve_bench.py
