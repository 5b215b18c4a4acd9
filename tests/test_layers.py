"""The tree is the design: legalbuild's own imports, read from the source with `ast` (imports
inside functions and under `if TYPE_CHECKING:` count too), form no circle, and none runs up the
layers below (a module may import its own layer and those listed before it):

    foundation  errors files hashing hardware processes prompting answer_format metrics
    recipe      recipe/ (the recipe models, loading, the starter)
    libraries   data/ curation/ basemodel/ training/ merging/ evaluation/   (stage libraries)
    engine      engine/ (graph keys code_digest cache ownership lock pipeline status context)
    stages      stages/ (thin: DEPENDS_ON, key_inputs, run)
    deploy      serve/ contract/ export/ report/ review/ sweep/
    cli         cli.py commands/ __main__.py

The engine runs the stages it finds by name in `graph.STAGES` (importlib with a computed name),
never by a static import, so it sits below them."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

LAYERS = (
    (
        "foundation",
        (
            "legalbuild",
            "legalbuild.errors",
            "legalbuild.files",
            "legalbuild.hashing",
            "legalbuild.hardware",
            "legalbuild.processes",
            "legalbuild.prompting",
            "legalbuild.answer_format",
            "legalbuild.metrics",
        ),
    ),
    ("recipe", ("legalbuild.recipe",)),
    (
        "libraries",
        (
            "legalbuild.data",
            "legalbuild.curation",
            "legalbuild.basemodel",
            "legalbuild.training",
            "legalbuild.merging",
            "legalbuild.evaluation",
            "legalbuild.federated",
        ),
    ),
    ("engine", ("legalbuild.engine",)),
    ("stages", ("legalbuild.stages",)),
    (
        "deploy",
        (
            "legalbuild.serve",
            "legalbuild.contract",
            "legalbuild.export",
            "legalbuild.report",
            "legalbuild.review",
            "legalbuild.sweep",
        ),
    ),
    ("cli", ("legalbuild.cli", "legalbuild.commands", "legalbuild.__main__")),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "legalbuild").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The legalbuild modules `name` imports (a name imported from a module counts as the module,
    unless it is a submodule)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer(module: str) -> int:
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = module == prefix
            inside = module.startswith(prefix + ".") and prefix != "legalbuild"
            if (exact or inside) and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} is in no layer: add it to LAYERS"
    return index


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circle():
    edges = graph()
    assert len(edges) > 90  # the walk found the package
    assert circles(edges) == []


def test_no_import_runs_up_the_layers():
    upward = [
        f"{source} ({LAYERS[layer(source)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for source, targets in graph().items()
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_the_checks_can_fail():
    """The walker sees a circle and an upward import when there is one."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    known = modules()
    edges = imports_of("legalbuild.data.readers", known["legalbuild.data.readers"], known)
    assert "legalbuild.files" in edges and "legalbuild.errors" in edges
    assert layer("legalbuild.engine.pipeline") > layer("legalbuild.data.readers")
    assert layer("legalbuild.serve.auth") > layer("legalbuild.recipe.output")


def test_the_engine_loads_stages_only_by_name():
    edges = graph()
    engine = {m: t for m, t in edges.items() if m.startswith("legalbuild.engine")}
    assert not any(t.startswith("legalbuild.stages") for ts in engine.values() for t in ts)
