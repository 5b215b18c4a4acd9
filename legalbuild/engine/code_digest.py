"""The code in a stage's key: the legalbuild source files a stage runs, found from the source.

A stage module and every `legalbuild` module it imports, transitively, count: module-level
imports, imports inside functions, and `importlib.import_module("legalbuild...")` with a literal
name; each package `__init__.py` on the way too (Python runs it on import). Imports under
`if TYPE_CHECKING:` never run and do not count. Nothing is imported: the files are parsed with
`ast`, so computing a plan stays light.

A file's digest is the sha256 of its bytes, as `sha256sum` prints it: the same on every machine
and Python version (a digest of the syntax tree would ignore comments, but differ between Python
versions, and a lock must reproduce anywhere). Any edit counts, a comment too. Parsing costs
~3 ms a file, so the imports found in a file are remembered by the sha256 of its bytes, in this
process and in `code-memo.json` at the cache root (`attach_memo`): a cached plan parses nothing.
"""

from __future__ import annotations

import ast
import json
import os
from functools import cache
from pathlib import Path

from legalbuild.hashing import digest_json, sha256_bytes

PACKAGE = "legalbuild"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # legalbuild/
_MEMO_MAX = 4000  # entries; one per version of a file, ~150 bytes each

# "module sha256-of-bytes" -> the legalbuild modules it imports
_parsed: dict[str, frozenset[str]] = {}
_memo_path: Path | None = None
_memo_dirty = False


def attach_memo(path: Path) -> None:
    """Remember parse results in `path` across processes (the store calls this with its root)."""
    global _memo_path
    _memo_path = path
    try:
        stored = json.loads(path.read_text())
        _parsed.update({k: frozenset(v) for k, v in stored.items() if isinstance(v, list)})
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        pass  # no memo yet, or an unreadable one: parse again


def save_memo() -> None:
    global _memo_dirty
    if _memo_path is None or not _memo_dirty:
        return
    items = list(_parsed.items())[-_MEMO_MAX:]
    data = {k: sorted(imports) for k, imports in items}
    try:
        _memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _memo_path.with_name(f".{_memo_path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, _memo_path)
    except OSError:
        return  # a read-only cache only costs the parse next time
    _memo_dirty = False


def code_files(module: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{"legalbuild/stages/eval.py": digest, ...} for `module` and every legalbuild module it
    runs; names are relative to the package's parent folder, so they are the same on every machine.
    Modules named in `skip` (and their submodules) are neither listed nor followed: code the caller
    knows cannot change this result (the graph skips federated code for a recipe without it)."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        for mod in (*_parents(name), name):
            if mod in seen or _skipped(mod, skip) or (path := module_file(mod)) is None:
                continue
            seen.add(mod)
            digest, imports = _parse(mod, path)
            found[path.relative_to(PACKAGE_DIR.parent).as_posix()] = digest
            todo.extend(imports)
    save_memo()
    return dict(sorted(found.items()))


def _skipped(module: str, skip: tuple[str, ...]) -> bool:
    return any(module == s or module.startswith(s + ".") for s in skip)


def code_version(module: str) -> str:
    """A short digest of `code_files(module)`: names a folder of outputs made by that code."""
    return digest_json(code_files(module))[:12]


@cache
def module_file(module: str) -> Path | None:
    """The source file of a legalbuild module, or None when there is none (a name imported from a
    module, not a submodule)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _parse(module: str, path: Path) -> tuple[str, frozenset[str]]:
    """(sha256 of the file, the legalbuild modules it imports)."""
    global _memo_dirty
    data = path.read_bytes()
    digest = sha256_bytes(data)
    memo_key = f"{module} {digest}"
    if memo_key not in _parsed:
        tree = ast.parse(data, filename=str(path))
        _parsed[memo_key] = frozenset(_imports(tree, module, path.name == "__init__.py"))
        _memo_dirty = True
    return digest, _parsed[memo_key]


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runnable_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            found.add(base)
            # `from legalbuild import metrics` imports the submodule legalbuild.metrics
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _runnable_nodes(tree: ast.AST):
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
