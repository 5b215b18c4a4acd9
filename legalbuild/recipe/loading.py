"""Reading a recipe file: any problem, down to its encoding, becomes a RecipeError that names the
file, the line, the key path and the bad value (never the value of a field that may hold a
secret: `NEVER_ECHOED`)."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from legalbuild.errors import DataError, RecipeError
from legalbuild.files import decode_utf8, display_path, read_regular_bytes
from legalbuild.recipe import Recipe

# Key paths whose values an error never repeats: vLLM flags may carry an API key.
NEVER_ECHOED = {("serve", "extra_args")}

INIT_HINT = "`legalbuild init recipe.toml` writes a starter recipe"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; any problem becomes a RecipeError naming file, line and key."""
    path = Path(path)
    shown = display_path(path) if len(str(path)) > 300 else str(path)
    try:
        data = read_regular_bytes(path)  # a folder, FIFO or device is refused, never read
    except DataError as exc:
        if not os.path.lexists(path):
            raise RecipeError(f"{shown}: no such recipe file", hint=INIT_HINT) from None
        raise RecipeError(exc.message, hint=exc.hint) from None
    text = decode_utf8(data, shown, RecipeError, what="recipe")
    return parse_recipe(text, shown)


def parse_recipe(text: str, shown: str) -> Recipe:
    """Validate recipe text (`shown` names it in errors): what `load_recipe` does once the file is
    read, and what a sweep trial does with the base recipe's text and its overrides."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{shown}: not valid TOML: {exc}") from None
    except RecursionError:
        line = _line_of_max(text, lambda ln: ln.count("[") + ln.count("{"))
        raise RecipeError(
            f"{shown}:{line}: not valid TOML: arrays or tables nested too deeply to read"
        ) from None
    except ValueError as exc:  # Python refuses to convert an integer of more than 4,300 digits
        if "digits" not in str(exc):
            raise RecipeError(f"{shown}: not valid TOML: {exc}") from None
        line = _line_of_max(text, lambda ln: max(map(len, re.findall(r"[0-9_]+", ln)), default=0))
        raise RecipeError(
            f"{shown}:{line}: an integer of thousands of digits; no setting takes more than 19"
        ) from None
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(shown, text, exc)) from None
    except RecursionError:  # deeply nested arrays or inline tables as a value
        raise RecipeError(f"{shown}: a value is nested too deeply to validate") from None


@dataclasses.dataclass
class Validated:
    recipe: Recipe
    notes: list[str]  # what was checked beyond the recipe's own rules (or why not)


def validate_recipe(path: str | Path) -> Validated:
    """`load_recipe`, then what only `legalbuild validate` checks: `[serve] extra_args` parsed by
    vLLM's own argument parser (vllm_parse.py), where vLLM is installed."""
    recipe = load_recipe(path)
    args, notes = recipe.serve.extra_args, []
    if args and recipe.serve.allow_code_loading_flags:
        notes.append(
            "[serve] extra_args not parsed by vLLM's parser: allow_code_loading_flags is set, "
            "and parsing would import the code they name"
        )
    elif args:
        from legalbuild.recipe.vllm_parse import check_with_vllm

        done, problems = check_with_vllm(args)
        if problems:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
            line = find_key_line(text, ["serve", "extra_args"])
            where = f"{path}:{line}" if line else str(path)
            raise RecipeError(
                f"{where}: [serve.extra_args] vLLM's parser refuses them: {'; '.join(problems)}",
                hint="`python -m vllm.entrypoints.openai.api_server --help` lists vLLM's options",
            )
        notes.append(f"[serve] extra_args {done}")
    return Validated(recipe, notes)


def _line_of_max(text: str, score: Any) -> int:
    """1-based number of the line with the highest score (where an unparsable value most likely is)."""
    lines = text.splitlines() or [""]
    return max(range(len(lines)), key=lambda i: score(lines[i])) + 1


def format_validation_error(path: Path | str, text: str, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s) in the recipe"]
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
        key = _dotted(loc)
        line = find_key_line(text, loc)
        where = f"{path}:{line}" if line else str(path)
        secret = tuple(p for p in loc if isinstance(p, str))[:2] in NEVER_ECHOED
        value = (
            "" if err["type"] == "missing" or secret else f" (got {_clip(repr(err.get('input')))})"
        )
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(_allowed_keys(loc[:-1]))}"
            value = ""
        lines.append(f"  {where}: [{key}] {msg}{value}")
    return "\n".join(lines)


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else f"{text[:width]}… ({len(text):,} characters)"


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker for a bad dict key: the key itself is the part before it
        part = part if isinstance(part, int) else _clip(str(part), 80)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _allowed_keys(loc: list[Any]) -> list[str]:
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_of(field.annotation)
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


_HEADER_CHARS = frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-" ')


def _table_header(line: str) -> str | None:
    """The name in a `[table]` or `[[array.of.tables]]` line (quotes dropped), else None. Plain
    string scanning, linear in the line: a 50k-character key costs microseconds."""
    body = line.lstrip()
    if not body.startswith("["):
        return None
    body = body[2:] if body.startswith("[[") else body[1:]
    end = body.find("]")
    if end < 0:
        return None
    name, rest = body[:end].strip(), body[end + 1 :]
    rest = (rest[1:] if rest.startswith("]") else rest).strip()
    if not name or (rest and not rest.startswith("#")) or not _HEADER_CHARS.issuperset(name):
        return None
    return name.replace('"', "")


def find_key_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number (1-based) of a key path such as ("train", "learning_rate") or
    ("data", "sources", 1, "path") in TOML text. Falls back to the nearest enclosing table."""
    names = [p for p in loc if isinstance(p, str) and p != "[key]"]
    index = next((p for p in loc if isinstance(p, int)), None)
    lines = text.splitlines()
    headers = [(i, name) for i, ln in enumerate(lines) if (name := _table_header(ln)) is not None]
    # the deepest table header that is a prefix of the path
    for depth in range(len(names), 0, -1):
        table = ".".join(names[:depth])
        hits = [i for i, name in headers if name == table]
        if not hits:
            continue
        start = (
            hits[index] if (index is not None and len(hits) > 1 and index < len(hits)) else hits[0]
        )
        rest = names[depth:]
        if rest:
            end = next((i for i, _ in headers if i > start), len(lines))
            found = _key_line(lines, rest[0], start + 1, end)
            if found:
                return found
        return start + 1
    if names:  # a top-level key or an inline/dotted key before any table
        return _key_line(lines, names[-1], 0, len(lines))
    return None


def _key_line(lines: list[str], key: str, start: int, end: int) -> int | None:
    for j in range(start, end):
        body = lines[j].lstrip()
        if body.startswith(key) and body[len(key) :].lstrip().startswith("="):
            return j + 1
    return None
