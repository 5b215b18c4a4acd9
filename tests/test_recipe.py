"""Recipes: every shipped one validates; errors name file, line, key and value; keys skip NO_KEY fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from legalbuild.errors import RecipeError
from legalbuild.recipe import Recipe, key_settings
from legalbuild.recipe.loading import load_recipe
from legalbuild.recipe.starter import starter_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.toml"))


def test_there_are_shipped_recipes():
    assert len(SHIPPED) >= 2, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.project.name


def test_the_default_on_cuad_is_the_default_recipe_but_for_its_name_and_label_set():
    import tomllib

    from legalbuild.engine.pipeline import Loaded

    default, on_cuad = (
        REPO / "recipes" / n
        for n in ("legal-audit-smollm2.toml", "legal-audit-smollm2-on-cuad.toml")
    )
    a, b = (tomllib.loads(p.read_text()) for p in (default, on_cuad))
    assert {k: v for k, v in a.items() if k not in ("project", "eval")} == {
        k: v for k, v in b.items() if k not in ("project", "eval")
    }
    assert a["eval"] == {k: v for k, v in b["eval"].items() if k != "label_sets"}
    keys = [
        {n: node.key for n, node in Loaded.from_path(p).nodes.items()} for p in (default, on_cuad)
    ]
    assert {n: k for n, k in keys[0].items() if n != "eval"} == {
        n: k for n, k in keys[1].items() if n != "eval"
    }


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


# ------------------------------------------------------------------------------ strict values
MINIMAL = {
    "project": {"name": "x"},
    "data": {"sources": [{"name": "a", "path": "a.jsonl"}]},
    "curate": {"corpora": [{"kind": "nda_review"}]},
}


def _fields_of_type(model, kind: type, prefix: tuple = ()):
    """Every (path, field) of `kind` (int or float, alone or with None) under a model, lists of
    models entered at index 0: new fields are covered as soon as they are added."""
    from typing import get_args

    from legalbuild.recipe.loading import _model_of

    for name, field in model.model_fields.items():
        path = (*prefix, name)
        args = set(get_args(field.annotation)) or {field.annotation}
        if kind in args:
            yield path
        nested = _model_of(field.annotation)
        if nested is not None:
            is_list = "list[" in str(field.annotation)
            yield from _fields_of_type(nested, kind, (*path, 0) if is_list else path)


def _with(path: tuple, value) -> dict:
    import copy

    raw = copy.deepcopy(MINIMAL)
    node = raw
    for part in path[:-1]:
        if isinstance(part, int):
            node = node[part]
        else:
            node = node.setdefault(
                part, {} if not isinstance(path[path.index(part) + 1], int) else [{}]
            )
    node[path[-1]] = value
    return raw


def _rejected_at(raw: dict, path: tuple) -> bool:
    from pydantic import ValidationError

    try:
        Recipe.model_validate(raw)
    except ValidationError as exc:
        return any(tuple(e["loc"][: len(path)]) == path for e in exc.errors())
    return False


def test_every_integer_is_strict_and_every_float_finite():
    Recipe.model_validate(MINIMAL)
    ints = list(_fields_of_type(Recipe, int))
    floats = list(_fields_of_type(Recipe, float))
    assert ("serve", "port") in ints and ("lora", "alpha") in ints and len(ints) > 25
    assert ("train", "weight_decay") in floats and ("merge", "max_logit_diff") in floats
    lax = [p for p in ints for v in (True, 2.0, "8", 2**64) if not _rejected_at(_with(p, v), p)]
    assert not lax, f"integer fields accepting true, 2.0, '8' or 2**64: {lax}"
    lax = [
        p
        for p in floats
        for v in (float("inf"), float("nan"), True)
        if not _rejected_at(_with(p, v), p)
    ]
    assert not lax, f"float fields accepting inf, nan or true: {lax}"


@pytest.mark.parametrize(
    ("mix", "expected"),
    [
        ("{}", "at least one task a share above 0"),
        ("{audit = 0, fix = 0}", "at least one task a share above 0"),
        ("{audit = -1, fix = 2}", "[curate.task_mix.audit] Input should be greater than or equal to 0 (got -1)"),
        ("{audit = nan}", "[curate.task_mix.audit] Input should be a finite number (got nan)"),
        ("{audit = inf}", "finite number (got inf)"),
        ("{audit = 1, summarize = 1}", "[curate.task_mix.summarize] Input should be 'audit', 'defect'"),
    ],
)  # fmt: skip
def test_task_mix_must_name_known_tasks_with_some_weight(tmp_path, mix, expected):
    p = _write(
        tmp_path,
        f'[project]\nname = "x"\n[curate]\ncorpora = [{{kind = "nda_review"}}]\ntask_mix = {mix}\n',
    )
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert f"{p}:5:" in str(exc.value) and expected in str(exc.value)


def test_task_names_match_the_curation_tasks():
    from typing import get_args

    from legalbuild.curation.selection import TASKS
    from legalbuild.recipe import TaskName

    assert get_args(TaskName) == TASKS


@pytest.mark.parametrize(
    ("section", "low", "high"),
    [
        ('[curate]\ncorpora = [{kind = "nda_review"}]', "min_clause_chars", "max_clause_chars"),
        ("[data.filters]", "min_instruction_chars", "max_instruction_chars"),
        ("[data.filters]", "min_output_chars", "max_output_chars"),
        ("[data]", "target_min_pairs", "target_max_pairs"),
    ],
)
def test_a_minimum_above_its_maximum_is_refused(tmp_path, section, low, high):
    text = f'[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n{section}\n{low} = 2000\n{high} = 1500\n'
    p = _write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    line = text.count("\n", 0, text.index(f"{high} =")) + 1
    msg = str(exc.value)
    assert (
        f"{p}:{line}:" in msg
        and f".{high}]" in msg
        and f"{low} (2000)" in msg
        and "got 1500" in msg
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('[project]\nname = "x"\n'.encode("utf-16"), "is UTF-16 text"),
        ('[project]\nname = "x"\n'.encode("utf-32"), "is UTF-32 text"),
        ('[project]\nname = "x"\n'.encode("utf-16-le"), ":1:2: the recipe holds NUL bytes"),
        (b'[project]\nname = "caf\xe9"\n', ":2:12: byte 0xe9 is not valid UTF-8"),
        (b"\x7fELF\x02\x01\x01\x00\x00", ":1:8: the recipe holds NUL bytes"),
    ],
)
def test_a_recipe_not_in_utf8_says_where_and_how_to_convert(tmp_path, data, expected):
    p = tmp_path / "r.toml"
    p.write_bytes(data)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert str(p) in str(exc.value) and expected in str(exc.value)
    assert "iconv" in exc.value.hint and "UTF-8" in exc.value.hint


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    p = tmp_path / "r.toml"
    p.write_bytes(b'\xef\xbb\xbf[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a"\n')
    assert load_recipe(p).project.name == "x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[" * 5000 + "]" * 5000, ":3: not valid TOML: arrays or tables nested too deeply"),
        ("9" * 5000, ":3: an integer of thousands of digits"),
        ("9" * 4000, ":3: [train.seed] Input should be less than or equal to 4294967295"),
    ],
)
def test_absurd_values_give_a_line_not_a_traceback(tmp_path, value, expected):
    p = _write(tmp_path, f"[train]\nx = 1\nseed = {value}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert f"{p}{expected}" in str(exc.value)
    assert len(str(exc.value)) < 2000  # the value is clipped, not printed whole


def test_a_50k_character_key_is_reported_fast_and_clipped(tmp_path):
    import time

    base = '[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n'
    p = _write(tmp_path, base + f'["a{" " * 50_000}b"]\nx = 1\n[train]\n"{" " * 50_000}y" = 1\n')
    started = time.perf_counter()
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert time.perf_counter() - started < 0.5  # the line finder's regex took 2-13 s
    msg = str(exc.value)
    assert f"{p}:6: [a" in msg and f"{p}:8: [train." in msg and "unknown key" in msg
    assert len(msg) < 3000


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ('""', "String should have at least 1 character"),
        ('"a\\u0000b"', "a path cannot contain a NUL character"),
        (f'"{"a" * 100_000}"', "String should have at most 4096 characters"),
    ],
)
def test_impossible_paths_are_recipe_errors(tmp_path, path, expected):
    p = _write(tmp_path, f'[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = {path}\n')
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert f"{p}:5: [data.sources[0].path] " in str(exc.value) and expected in str(exc.value)


def test_a_recipe_that_is_a_folder_or_fifo_is_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.toml")
    with pytest.raises(RecipeError, match=r"pipe\.toml: is a FIFO"):
        load_recipe(tmp_path / "pipe.toml")
    with pytest.raises(RecipeError, match="is a folder"):
        load_recipe(tmp_path)


def test_cli_usage_errors_and_port_range_without_traceback(tmp_path):
    p = _write(tmp_path, '[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n')
    for args, expected in [
        (["serve", str(p), "--port", "70000"], "70000 is not a TCP port (use 1 to 65535)"),
        (["serve", str(p), "--port", "-1"], "-1 is not a TCP port"),
        (["plan"], "Missing argument"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "legalbuild", *args], capture_output=True, text=True
        )
        assert proc.returncode == 2 and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


BASE = '[project]\nname = "x"\n[[data.sources]]\nname = "a"\npath = "a.jsonl"\n'


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[serve]\napi_key_env = "PATH"', "[serve.api_key_env] Value error, PATH holds something"),
        ('[serve]\napi_key_env = "HOME"', "HOME holds something other than a secret"),
        ('[serve]\napi_key_env = "user"', "user holds something other than a secret"),
        ('[serve]\napi_key_env = "LC_ALL"', "LC_ALL holds something other than a secret"),
        ('[serve]\napi_key_env = "MY KEY"', "[serve.api_key_env] String should match pattern"),
        ('[serve]\nserved_model_name = ""', "[serve.served_model_name] Value error, the served"),
        ('[serve]\nserved_model_name = "  "', "is blank or holds control characters"),
        ('[serve]\nserved_model_name = "a\\nb"', "is blank or holds control characters"),
        ("[train.distributed]\nnproc_per_node = 100000", "less than or equal to 256"),
        (f"[train.distributed]\nnproc_per_node = {2**63 - 1}", "less than or equal to 256"),
        (f"[train.distributed]\nnproc_per_node = {2**63}", "less than or equal to 256"),
        ("[train.distributed]\nnnodes = 1000000", "[train.distributed.nnodes] Input should be"),
        ('[train.distributed]\nnnodes = 2\nrdzv_endpoint = "n0:99999"', "port 99999 is not a TCP"),
        ('[train.distributed]\nnnodes = 2\nrdzv_endpoint = "n0:0"', "port 0 is not a TCP port"),
    ],
)
def test_impossible_serving_and_launch_settings_are_refused_when_read(tmp_path, section, expected):
    p = _write(tmp_path, BASE + section + "\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    line = BASE.count("\n") + section.count("\n") + 1  # the section's last line holds the value
    assert f"{p}:{line}: [" in str(exc.value) and expected in str(exc.value), str(exc.value)


def test_possible_ones_pass(tmp_path):
    section = (
        '[serve]\napi_key_env = "MY_SERVER_KEY"\nserved_model_name = "legal audit"\n'
        '[train.distributed]\nnproc_per_node = 2\nnnodes = 2\nrdzv_endpoint = "node0:29400"\n'
    )
    recipe = load_recipe(_write(tmp_path, BASE + section))
    assert recipe.served_model_name == "legal audit" and recipe.train.distributed.nnodes == 2


def test_a_missing_deepspeed_json_is_refused_by_plan_naming_the_key(tmp_path):
    from legalbuild.engine.pipeline import Loaded

    (tmp_path / "a.jsonl").write_text('{"instruction": "a b c d", "output": "Risk: none"}\n')
    section = (
        '[train.distributed]\nnproc_per_node = 2\nstrategy = "deepspeed"\ndeepspeed = "ds.json"\n'
    )
    p = _write(tmp_path, BASE + section)
    with pytest.raises(RecipeError) as exc:
        Loaded.from_path(p)  # what `plan` computes first: every stage's key
    assert "[train.distributed] deepspeed = 'ds.json'" in str(exc.value)
    assert str(tmp_path / "ds.json") in str(exc.value) and "zero2" in exc.value.hint
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert Loaded.from_path(p).nodes["train"].key
