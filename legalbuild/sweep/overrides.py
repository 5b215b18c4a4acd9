"""Recipe settings named by dotted keys ("train.learning_rate", "curate.task_mix.audit"): checked
against the recipe's models, read from a recipe, and written into the recipe's own TOML text with
tomlkit (its comments and layout stay), so a trial is the base recipe with its values in it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from legalbuild.errors import RecipeError
from legalbuild.recipe import Recipe
from legalbuild.recipe.loading import parse_recipe


@dataclass(frozen=True)
class KeyPath:
    """A dotted key resolved against the recipe's models: `parts`, and where a dict-valued field
    (curate.task_mix) ends when the key goes into one (its entries are written as one table)."""

    key: str
    parts: tuple[str, ...]
    dict_field: int | None = None  # index in parts of the dict-valued field the key goes into

    @property
    def section(self) -> str:
        return self.parts[0]

    @property
    def head(self) -> KeyPath:
        """The dict-valued field itself (the key when it goes into none)."""
        if self.dict_field is None:
            return self
        return KeyPath(self.key, self.parts[: self.dict_field + 1])


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _is_dict(annotation: Any) -> bool:
    if get_origin(annotation) is dict:
        return True
    return any(_is_dict(a) for a in get_args(annotation))


def resolve_key(key: str, where: str) -> KeyPath:
    """The key checked against the recipe's models: RecipeError naming `where` and the key when a
    part is not a setting, or the key names a whole section rather than a setting."""
    parts = tuple(key.split("."))
    model: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        prefix = ".".join(parts[:i]) or "(top level)"
        if field is None:
            allowed = ", ".join(sorted(model.model_fields))
            raise RecipeError(
                f'{where} "{key}": unknown recipe key ({prefix} has no setting {part!r})',
                hint=f"settings of {prefix}: {allowed}; `legalbuild schema` lists every key",
            )
        last = i == len(parts) - 1
        if _is_dict(field.annotation) and not last:
            if i + 2 != len(parts):
                raise RecipeError(f'{where} "{key}": {".".join(parts[: i + 1])} holds one level')
            return KeyPath(key, parts, dict_field=i)
        sub = _model_in(field.annotation)
        if last:
            if sub is not None and not _is_dict(field.annotation):
                names = ", ".join(f"{key}.{n}" for n in sorted(sub.model_fields))
                raise RecipeError(
                    f'{where} "{key}": a whole section, not a setting', hint=f"name one: {names}"
                )
            return KeyPath(key, parts)
        if sub is None:
            raise RecipeError(
                f'{where} "{key}": {".".join(parts[: i + 1])} is a single setting, it has no keys'
            )
        model = sub
    raise RecipeError(f'{where} "{key}": empty key')  # unreachable: split gives one part at least


def value_at(recipe: Recipe, path: KeyPath) -> Any:
    """The recipe's value of the setting (None when a section on the way is absent)."""
    value: Any = recipe
    for part in path.parts:
        if value is None:
            return None
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)
    return value


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _item(value: Any) -> Any:
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update({k: _item(v) for k, v in value.items()})
        return table
    return tomlkit.item(value)


def write_overrides(text: str, base: Recipe, overrides: dict[str, Any]) -> str:
    """The recipe text with each override written at its key (tables created where absent; a key
    into a dict-valued field writes the whole dict, the recipe's other entries kept)."""
    import tomlkit

    doc = tomlkit.parse(text)
    for key, value in overrides.items():
        path = resolve_key(key, "override")
        table: Any = doc
        stop = path.dict_field if path.dict_field is not None else len(path.parts) - 1
        for part in path.parts[:stop]:
            if part not in table:
                table[part] = tomlkit.table()
            table = table[part]
        if path.dict_field is None:
            table[path.parts[-1]] = _item(value)
            continue
        name = path.parts[path.dict_field]
        current = table[name].unwrap() if name in table else _plain(value_at(base, path.head))
        table[name] = _item({**(current or {}), path.parts[-1]: value})
    new_text = tomlkit.dumps(doc)
    _check_written(new_text, overrides)
    return new_text


def _check_written(text: str, overrides: dict[str, Any]) -> None:
    """The TOML as parsed holds every override where it was meant to go (tomlkit cannot place a
    key in every layout, e.g. a table defined by dotted keys elsewhere): refuse, never guess."""
    data = tomllib.loads(text)
    for key, value in overrides.items():
        found: Any = data
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value:
            raise RecipeError(
                f'cannot write "{key}" into the recipe text (its tables are laid out in a way the '
                "TOML editor cannot extend)",
                hint=f"write the [{key.rsplit('.', 1)[0]}] table as a plain table in the recipe",
            )


def recipe_with(
    text: str, base: Recipe, overrides: dict[str, Any], shown: str
) -> tuple[str, Recipe]:
    """(text, recipe) of the base recipe with the overrides; RecipeError when a value is refused."""
    new_text = write_overrides(text, base, overrides)
    return new_text, parse_recipe(new_text, shown)
