"""Recipes: every shipped one validates; errors name file, line, key and value; keys skip NO_KEY fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from legalbuild.errors import RecipeError
from legalbuild.recipe import Recipe, key_settings, load_recipe
from legalbuild.starter import starter_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.toml"))


def test_there_are_shipped_recipes():
    assert len(SHIPPED) >= 2, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.project.name


def test_starter_recipe_validates_and_matches_the_default(tmp_path):
    path = tmp_path / "legal-audit-smollm2.toml"
    path.write_text(starter_recipe("legal-audit-smollm2"))
    assert load_recipe(path) == load_recipe(REPO / "recipes" / "legal-audit-smollm2.toml")


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_bad_value_names_file_line_key_and_value(tmp_path):
    p = _write(
        tmp_path,
        '[project]\nname = "x"\n\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n\n[train]\nlearning_rate = "fast"\n',
    )
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert f"{p}:9:" in msg and "train.learning_rate" in msg and "'fast'" in msg


def test_unknown_key_lists_allowed_keys_and_points_at_the_right_table(tmp_path):
    p = _write(
        tmp_path,
        '[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n[[data.sources]]\nname = "b"\npaht = "b.jsonl"\n',
    )
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert f"{p}:8: [data.sources[1].paht] unknown key" in msg
    assert "instruction_field" in msg and "path" in msg
    assert "data.sources[1].path] Field required" in msg


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[project\nname = 1"))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.toml")


def test_a_recipe_needs_data(tmp_path):
    with pytest.raises(RecipeError, match="at least one"):
        load_recipe(_write(tmp_path, '[project]\nname = "x"\n'))


def test_cli_reports_user_errors_without_traceback(tmp_path):
    p = _write(
        tmp_path,
        '[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n[lora]\nr = 0\n',
    )
    proc = subprocess.run(
        [sys.executable, "-m", "legalbuild", "validate", str(p)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{p}:7: [lora.r]" in proc.stderr and "greater than or equal to 1" in proc.stderr


def test_every_field_is_documented():
    schema = Recipe.model_json_schema()
    missing = []
    for model_name, model in schema["$defs"].items():
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{model_name}.{field}")
    assert not missing, f"fields without description: {missing}"
    assert json.dumps(schema)  # the schema command prints this


def test_tracking_and_serving_fields_never_enter_keys():
    r = Recipe.model_validate(
        {"project": {"name": "x"}, "data": {"sources": [{"name": "a", "path": "a.jsonl"}]}}
    )
    train = key_settings(r.train)
    assert "report_to" not in train and "logging_steps" not in train and "samples" not in train
    assert "learning_rate" in train and "seed" in train
    assert "licence" not in key_settings(r.model)
