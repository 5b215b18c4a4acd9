"""The normalize stage on real files of every format (parquet via pyarrow, hf_disk via datasets)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import stage_context, write_jsonl

from legalbuild.data.clean import clean_text, clean_text_fully, fold_text
from legalbuild.data.stats import percentiles
from legalbuild.errors import DataError
from legalbuild.recipe import Recipe
from legalbuild.stages import normalize
from legalbuild.stages.normalize import normalize_input_files


# ------------------------------------------------------------------------------------- helpers
def pair(i: int, **extra) -> dict:
    row = {
        "instruction": f"Audit clause {i}: the supplier may terminate at any time without notice.",
        "output": f"Risk: high\nFinding 1: Termination without notice [term.{i}] (severity: high)",
    }
    row.update(extra)
    return row


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


class Build:
    """The normalize stage's context (tests/helpers.stage_context) around a data section;
    `.run()` returns the metrics."""

    def __init__(
        self,
        tmp_path: Path,
        data: dict,
        inputs: dict | None = None,
        recipe_extra: dict | None = None,
    ):
        self.logs: list[str] = []
        recipe = Recipe.model_validate(
            {"project": {"name": "t"}, "data": data, **(recipe_extra or {})}
        )
        self.ctx = stage_context(tmp_path, "normalize", recipe, inputs, log=self.logs)
        self.out = self.ctx.out_dir

    def run(self) -> dict:
        self.metrics = normalize.run(self.ctx)
        return self.metrics

    def rows(self, name: str) -> list[dict]:
        return [
            json.loads(line) for line in (self.out / name).read_text(encoding="utf-8").splitlines()
        ]

    @property
    def stats(self) -> dict:
        return json.loads((self.out / "stats.json").read_text(encoding="utf-8"))

    def sides(self) -> dict[str, str]:
        return {r["id"]: side for side in ("train", "val") for r in self.rows(f"{side}.jsonl")}


def data_section(*sources: dict, **settings) -> dict:
    return {"sources": list(sources), "target_min_pairs": 1, **settings}


# ---------------------------------------------------------------------------------- formats
ROWS = [pair(i) for i in range(12)]


def make_source(tmp_path: Path, fmt: str, rows: list[dict]) -> str:
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", rows).name
    if fmt == "json":
        (tmp_path / "d.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return "d.json"
    if fmt == "csv":
        return write_csv(tmp_path / "d.csv", rows).name
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
        return "d.parquet"
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "d_hf"))
    return "d_hf"


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "hf_disk"])
def test_every_format_gives_the_same_split(tmp_path, fmt):
    reference = Build(
        tmp_path / "ref", data_section({"name": "s", "path": make_source(tmp_path, "jsonl", ROWS)})
    )
    reference.ctx.recipe_path = tmp_path / "recipe.toml"
    reference.run()
    build = Build(tmp_path, data_section({"name": "s", "path": make_source(tmp_path, fmt, ROWS)}))
    build.run()
    assert build.metrics["rows_in"] == 12 and build.metrics["train"] + build.metrics["val"] == 12
    assert build.rows("train.jsonl") == reference.rows("train.jsonl")
    assert build.rows("val.jsonl") == reference.rows("val.jsonl")
    assert normalize_input_files(build.ctx.recipe, build.ctx.recipe_path)  # the files are listed


def test_auto_format_reads_json_lines_saved_as_json(tmp_path):
    write_jsonl(tmp_path / "lines.json", ROWS[:4])
    build = Build(tmp_path, data_section({"name": "s", "path": "lines.json"}))
    assert build.run()["rows_in"] == 4


def test_unknown_extension_asks_for_a_format(tmp_path):
    write_jsonl(tmp_path / "d.txt", ROWS[:2])
    with pytest.raises(DataError, match="cannot tell the format") as err:
        Build(tmp_path, data_section({"name": "s", "path": "d.txt"})).run()
    assert "format" in err.value.hint
    build = Build(tmp_path, data_section({"name": "s", "path": "d.txt", "format": "jsonl"}))
    assert build.run()["rows_in"] == 2


def test_input_files_list_the_folder_files_and_skip_missing_ones(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "hf"))
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    recipe = Recipe.model_validate(
        {
            "project": {"name": "t"},
            "data": {
                "sources": [
                    {"name": "a", "path": "a.jsonl"},
                    {"name": "h", "path": "hf"},
                    {"name": "gone", "path": "missing.jsonl"},
                ]
            },
        }
    )
    files = normalize_input_files(recipe, tmp_path / "recipe.toml")
    assert tmp_path / "a.jsonl" in files
    assert {p.name for p in files if p.parent == tmp_path / "hf"} >= {
        "dataset_info.json",
        "state.json",
    }
    assert any(p.suffix == ".arrow" for p in files)
    assert not any("missing" in p.name for p in files)


# ----------------------------------------------------------------------------- field mapping
def test_field_mapping_alpaca_input_group_meta_and_limit(tmp_path):
    rows = [
        {
            "q": "Audit this indemnity clause.",
            "ctx": "The Customer indemnifies all losses.",
            "a": "Risk: high",
            "doc": 7,
            "rule": "r1",
        },
        {
            "q": "Audit this liability clause.",
            "ctx": "",
            "a": "Risk: none",
            "doc": "d2",
            "rule": "r2",
        },
        {"q": "Audit this notice clause.", "a": "Risk: low", "doc": "d3"},
        {"q": "Past the limit.", "a": "Risk: low", "doc": "d4"},
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    source = {
        "name": "mine", "path": "d.jsonl", "instruction_field": "q", "input_field": "ctx", "output_field": "a",
        "group_field": "doc", "meta_fields": ["rule"], "limit": 3,
    }  # fmt: skip
    build = Build(tmp_path, data_section(source, split={"by": "group"}))
    assert build.run()["rows_in"] == 3
    by_output = {r["output"]: r for r in build.rows("train.jsonl") + build.rows("val.jsonl")}
    folded = by_output["Risk: high"]
    assert (
        folded["instruction"]
        == "Audit this indemnity clause.\n\nThe Customer indemnifies all losses."
    )
    assert (
        folded["group"] == "7" and folded["meta"] == {"rule": "r1"} and folded["source"] == "mine"
    )
    assert (
        by_output["Risk: none"]["instruction"] == "Audit this liability clause."
    )  # empty input: no fold
    assert by_output["Risk: low"]["meta"] == {"rule": None}  # a missing meta field is null
    assert set(by_output["Risk: low"]) == {"id", "instruction", "output", "source", "group", "meta"}


def test_several_sources_keep_their_names(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:5])
    write_csv(tmp_path / "b.csv", ROWS[5:9])
    build = Build(
        tmp_path, data_section({"name": "a", "path": "a.jsonl"}, {"name": "b", "path": "b.csv"})
    )
    build.run()
    stats = build.stats
    assert stats["rows_in"] == {"a": 5, "b": 4}
    assert {s: sum(v.values()) for s, v in stats["pairs_per_source"].items()} == {"a": 5, "b": 4}
    sources = [r["source"] for r in build.rows("train.jsonl") + build.rows("val.jsonl")]
    assert sorted(sources) == ["a"] * 5 + ["b"] * 4


# ---------------------------------------------------------------------------------- cleaning
def test_clean_text_nfc_whitespace_and_blank_lines():
    assert clean_text("Caf\u0065\u0301 clause") == "Caf\u00e9 clause"  # NFC composes e + acute
    assert clean_text("  a\t\t b \u00a0 c  ") == "a b c"
    assert clean_text("line one  \r\n   line two\rthree") == "line one\nline two\nthree"
    assert clean_text("para one\n\n\n\n\npara two") == "para one\n\npara two"
    assert clean_text("para one\n \n \t\npara two") == "para one\n\npara two"
    assert clean_text("zero\u200bwidth\ufeff and\x00 control") == "zerowidth and control"
    assert (
        clean_text("cafe\u200b\u0301") == "caf\u00e9"
    )  # composed once the zero-width space is gone
    assert clean_text("keep\n\none blank line") == "keep\n\none blank line"


def test_fold_text_ignores_case_punctuation_and_spacing():
    assert fold_text("The Supplier's  LIABILITY — unlimited!") == fold_text(
        "the supplier s liability unlimited"
    )
    assert fold_text("Straße") == fold_text("STRASSE")
    assert fold_text("cap: 10") != fold_text("cap: 100")


def test_rows_are_cleaned_in_the_output(tmp_path):
    write_jsonl(
        tmp_path / "d.jsonl",
        [pair(0, instruction="  Audit\tthis   cafe\u0301 clause:\r\n\r\n\r\n\r\nPay on time.  ")],
    )
    build = Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"}))
    build.run()
    (row,) = build.rows("train.jsonl") + build.rows("val.jsonl")
    assert row["instruction"] == "Audit this caf\u00e9 clause:\n\nPay on time."


# ---------------------------------------------------------------------------------- filters
def test_each_length_filter_drops_with_its_reason(tmp_path):
    filters = {
        "min_instruction_chars": 10,
        "max_instruction_chars": 60,
        "min_output_chars": 5,
        "max_output_chars": 40,
    }
    rows = [
        {"instruction": "A fine instruction here.", "output": "A fine output."},
        {"instruction": "   \n\t ", "output": "An output."},
        {"instruction": "Good instruction text.", "output": "  \u200b "},
        {"instruction": "Too short", "output": "Fine output."},
        {"instruction": "x" * 61, "output": "Fine output."},
        {"instruction": "Another fine instruction.", "output": "tiny"},
        {"instruction": "Yet another instruction.", "output": "y" * 41},
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    build = Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"}, filters=filters))
    metrics = build.run()
    expected = [
        "empty_instruction",
        "empty_output",
        "instruction_too_short",
        "instruction_too_long",
        "output_too_short",
        "output_too_long",
    ]
    assert build.stats["drops"] == dict.fromkeys(expected, 1)
    assert metrics["filtered"] == 6 and metrics["train"] + metrics["val"] == 1
    rejects = build.rows("rejects.jsonl")
    assert [r["reason"] for r in rejects] == expected
    assert [r["line"] for r in rejects] == [2, 3, 4, 5, 6, 7]


# ------------------------------------------------------------------------------------ dedup
DEDUP_ROWS = [
    pair(1),
    pair(1),  # exact copy
    pair(
        1, instruction="AUDIT clause 1 -- the supplier may terminate at any time, without notice!"
    ),
    pair(
        1, output="Risk: none\nFindings: none."
    ),  # same instruction, another answer: not a duplicate
    pair(2),
]


@pytest.mark.parametrize(
    ("mode", "kept", "exact", "normalized"),
    [("none", 5, 0, 0), ("exact", 4, 1, 0), ("normalized", 3, 1, 1)],
)
def test_dedup_modes(tmp_path, mode, kept, exact, normalized):
    write_jsonl(tmp_path / "d.jsonl", DEDUP_ROWS)
    build = Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"}, dedup=mode))
    metrics = build.run()
    assert metrics["train"] + metrics["val"] == kept
    assert build.stats["duplicates"] == {"mode": mode, "exact": exact, "normalized": normalized}
    ids = [r["id"] for r in build.rows("train.jsonl") + build.rows("val.jsonl")]
    assert len(set(ids)) == len(ids)  # ids stay unique even with dedup = "none"
    duplicates = [r for r in build.rows("rejects.jsonl") if r["reason"].startswith("duplicate")]
    assert all(
        r["detail"].startswith("same as ") and r["detail"].endswith("d.jsonl:1") for r in duplicates
    )
    assert build.stats["instructions_with_several_outputs"] == 1


# ------------------------------------------------------------------------------------ split
def test_no_validation_instruction_in_train(tmp_path):
    # 40 documents each containing the same question with a document-specific answer: the group
    # split puts some documents in validation, so the question's train copies must go.
    rows = [pair(100 + g, doc=f"doc{g}") for g in range(40)]
    rows += [
        {
            "instruction": "What is the governing law of this agreement?",
            "output": f"The law of state {g}.",
            "doc": f"doc{g}",
        }
        for g in range(40)
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    source = {"name": "s", "path": "d.jsonl", "group_field": "doc"}
    build = Build(tmp_path, data_section(source, split={"by": "group", "val_fraction": 0.25}))
    metrics = build.run()
    train, val = build.rows("train.jsonl"), build.rows("val.jsonl")
    assert not {fold_text(r["instruction"]) for r in val} & {
        fold_text(r["instruction"]) for r in train
    }
    shared_in_val = sum(r["instruction"].startswith("What is the governing") for r in val)
    assert shared_in_val > 0 and metrics["cross_split_removed"] == 40 - shared_in_val
    assert build.stats["cross_split_removed"] == metrics["cross_split_removed"]
    assert (
        sum(r["reason"] == "in_validation" for r in build.rows("rejects.jsonl"))
        == metrics["cross_split_removed"]
    )


@pytest.mark.parametrize("by", ["row", "group"])
def test_split_is_stable_when_data_grows(tmp_path, by):
    old = [pair(i, doc=f"doc{i % 50}") for i in range(300)]
    new = [pair(i, doc=f"doc{i % 70}") for i in range(300, 700)]
    source = {"name": "s", "path": "d.jsonl", "group_field": "doc"}
    write_jsonl(tmp_path / "d.jsonl", old)
    before = Build(
        tmp_path / "before",
        data_section({**source, "path": str(tmp_path / "d.jsonl")}, split={"by": by}),
    )
    before.run()
    write_jsonl(tmp_path / "d.jsonl", new[:200] + old + new[200:])  # new rows before and after
    after = Build(
        tmp_path / "after",
        data_section({**source, "path": str(tmp_path / "d.jsonl")}, split={"by": by}),
    )
    after.run()
    old_sides, new_sides = before.sides(), after.sides()
    assert len(old_sides) == 300 and len(new_sides) == 700
    assert all(new_sides[i] == side for i, side in old_sides.items())
    assert 0.05 < list(new_sides.values()).count("val") / 700 < 0.17  # about val_fraction = 0.1


def test_group_split_keeps_groups_whole(tmp_path):
    rows = [pair(g * 10 + k, doc=f"contract-{g}") for g in range(30) for k in range(5)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    build = Build(
        tmp_path,
        data_section({"name": "s", "path": "d.jsonl", "group_field": "doc"}, split={"by": "group"}),
    )
    build.run()
    train_groups = {r["group"] for r in build.rows("train.jsonl")}
    val_groups = {r["group"] for r in build.rows("val.jsonl")}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(train_groups | val_groups) == 30
    units = {"train": len(train_groups), "val": len(val_groups), "test": 0}
    assert build.stats["split"]["units"] == units


def test_salt_draws_another_split(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [pair(i) for i in range(200)])
    source = {"name": "s", "path": str(tmp_path / "d.jsonl")}
    a = Build(tmp_path / "a", data_section(source))
    b = Build(tmp_path / "b", data_section(source, split={"salt": "another"}))
    a.run(), b.run()
    assert a.sides() != b.sides()


def test_tiny_data_still_gets_a_validation_row(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
    build = Build(
        tmp_path, data_section({"name": "s", "path": "d.jsonl"}, split={"val_fraction": 0.01})
    )
    metrics = build.run()
    assert metrics["val"] == 1 and metrics["train"] == 2
    assert any("moved there" in w for w in build.stats["warnings"])


def test_curated_pairs_join_as_a_source_split_by_document(tmp_path):
    curate_out = tmp_path / "curate_out"
    curate_out.mkdir()
    curated = [
        {
            **pair(d * 10 + k), "doc_id": f"nda-{d}", "source": "nda_review", "rule_id": f"rule.{k}",
            "severity": "high", "clause_type": "termination", "task": "audit", "verified_by": "checker", "clause": "the clause",
        }
        for d in range(25) for k in range(4)
    ]  # fmt: skip
    write_jsonl(curate_out / "pairs.jsonl", curated)
    write_jsonl(tmp_path / "mine.jsonl", [pair(1000 + i) for i in range(10)])
    build = Build(
        tmp_path,
        data_section({"name": "mine", "path": "mine.jsonl"}),  # split.by stays "row"
        inputs={"curate": curate_out},
        recipe_extra={"curate": {"corpora": [{"kind": "nda_review"}]}},
    )
    build.run()
    rows = build.rows("train.jsonl") + build.rows("val.jsonl")
    assert build.stats["rows_in"] == {"mine": 10, "curated": 100}
    curated_rows = [r for r in rows if r["source"] == "curated"]
    assert len(curated_rows) == 100
    assert curated_rows[0]["meta"] == {
        "rule_id": "rule.0", "severity": "high", "clause_type": "termination", "task": "audit",
        "verified_by": "checker", "source": "nda_review", "clause": "the clause",
    }  # fmt: skip
    val_docs = {r["group"] for r in build.rows("val.jsonl") if r["source"] == "curated"}
    train_docs = {r["group"] for r in build.rows("train.jsonl") if r["source"] == "curated"}
    assert val_docs and train_docs and not val_docs & train_docs  # whole contracts on one side
    assert any("split by doc_id" in line for line in build.logs)


def test_a_source_named_curated_clashes_with_the_curate_stage(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", ROWS[:2])
    build = Build(
        tmp_path, data_section({"name": "curated", "path": "c.jsonl"}), inputs={"curate": tmp_path},
        recipe_extra={"curate": {"corpora": [{"kind": "nda_review"}]}},
    )  # fmt: skip
    with pytest.raises(DataError, match="reserved"):
        build.run()


# ---------------------------------------------------------------------------------- bad rows
def bad_jsonl(tmp_path: Path) -> Path:
    lines = [
        json.dumps(pair(0)),
        "{not json",
        json.dumps({"instruction": "Audit this clause please."}),
        json.dumps(pair(3, output=42)),
        json.dumps([1, 2]),
        "",  # blank lines are not rows
        json.dumps(pair(6, output=None)),
    ]
    path = tmp_path / "bad.jsonl"
    data = ("\n".join(lines) + "\n").encode("utf-8")
    data += json.dumps(pair(7)).encode("utf-8").replace(b"Audit", b"Aud\xff\xfeit") + b"\n"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("keep_lines", "expected"),
    [
        ([0, 1], ["bad.jsonl:2:", "invalid JSON", "on_error"]),
        ([0, 2], ["bad.jsonl:2:", "field 'output'", "is missing", "fields present: instruction"]),
        ([0, 3], ["bad.jsonl:2:", "field 'output'", "expected text, got int 42"]),
        ([0, 4], ["bad.jsonl:2:", "expected a JSON object", "an array"]),
        ([0, 6], ["bad.jsonl:2:", "field 'output'", "is null"]),
        ([0, 7], ["bad.jsonl:2:", "field 'instruction'", "not valid UTF-8"]),
    ],
)
def test_on_error_fail_names_file_line_and_field(tmp_path, keep_lines, expected):
    all_lines = bad_jsonl(tmp_path).read_bytes().split(b"\n")
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(all_lines[i] for i in keep_lines) + b"\n")
    build = Build(tmp_path, data_section({"name": "s", "path": "bad.jsonl"}))
    with pytest.raises(DataError) as err:
        build.run()
    text = str(err.value)
    for part in expected:
        assert part in text, (part, text)
    assert 'data.on_error = "skip"' in err.value.hint


def test_skip_writes_every_bad_row_to_rejects_with_its_reason(tmp_path):
    bad_jsonl(tmp_path)
    build = Build(tmp_path, data_section({"name": "s", "path": "bad.jsonl"}, on_error="skip"))
    metrics = build.run()
    rejects = build.rows("rejects.jsonl")
    assert [(r["line"], r["reason"], r["field"]) for r in rejects] == [
        (2, "invalid_json", None),
        (3, "missing_field", "output"),
        (4, "not_a_string", "output"),
        (5, "not_an_object", None),
        (7, "missing_field", "output"),
        (8, "encoding", "instruction"),
    ]
    assert rejects[0]["raw"] == "{not json" and rejects[0]["source"] == "s"
    assert build.stats["drops"] == {
        "encoding": 1,
        "invalid_json": 1,
        "missing_field": 2,
        "not_a_string": 1,
        "not_an_object": 1,
    }
    assert metrics["bad_rows"] == 6 and metrics["rows_in"] == 7 == metrics["train"] + metrics[
        "val"
    ] + len(rejects)


def test_bad_rows_in_other_formats_name_their_position(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps([pair(0), pair(1), "oops"], indent=1), encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"a\.json\[2\] \(line 10\): expected a JSON object"):
        Build(tmp_path, data_section({"name": "s", "path": "a.json"})).run()

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([pair(0), pair(1, output=None)]), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet row 1: field 'output': is null"):
        Build(tmp_path, data_section({"name": "s", "path": "p.parquet"})).run()

    (tmp_path / "c.csv").write_text(
        'instruction,output\n"Audit clause one, please.","Risk: high"\n"Audit, two",Risk: low,extra\n'
    )
    with pytest.raises(DataError, match=r"c\.csv:3: 3 cells but the header has 2"):
        Build(tmp_path, data_section({"name": "s", "path": "c.csv"})).run()


def test_csv_multiline_fields_keep_the_starting_line(tmp_path):
    (tmp_path / "c.csv").write_text(
        'instruction,output\n"Audit this clause:\nline two of it","Risk: high, ok"\n"Audit another clause",\n',
        encoding="utf-8",
    )
    build = Build(tmp_path, data_section({"name": "s", "path": "c.csv"}, on_error="skip"))
    build.run()
    (reject,) = build.rows("rejects.jsonl")
    assert reject["line"] == 4 and reject["reason"] == "empty_output"


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_whole_source_problems_always_fail(tmp_path, on_error):
    write_csv(tmp_path / "c.csv", [{"question": "Audit this clause now.", "output": "Risk: high"}])
    with pytest.raises(DataError) as err:
        Build(tmp_path, data_section({"name": "s", "path": "c.csv"}, on_error=on_error)).run()
    assert (
        "c.csv:1" in str(err.value)
        and "'instruction'" in str(err.value)
        and "question" in str(err.value)
    )
    assert "instruction_field" in err.value.hint

    with pytest.raises(DataError, match="no such file"):
        Build(tmp_path, data_section({"name": "s", "path": "nope.jsonl"}, on_error=on_error)).run()
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        Build(
            tmp_path, data_section({"name": "s", "path": "junk.parquet"}, on_error=on_error)
        ).run()
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        Build(tmp_path, data_section({"name": "s", "path": "plain"}, on_error=on_error)).run()
    (tmp_path / "broken.json").write_text('[{"instruction": "x", ')
    with pytest.raises(DataError, match=r"broken\.json:1: invalid JSON in element \[0\]"):
        Build(tmp_path, data_section({"name": "s", "path": "broken.json"}, on_error=on_error)).run()


def test_empty_source_fails_or_warns(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    write_jsonl(tmp_path / "d.jsonl", ROWS[:4])
    sources = [{"name": "e", "path": "empty.jsonl"}, {"name": "d", "path": "d.jsonl"}]
    with pytest.raises(DataError, match="has no rows"):
        Build(tmp_path, data_section(*sources)).run()
    build = Build(tmp_path, data_section(*sources, on_error="skip"))
    assert build.run()["rows_in"] == 4
    assert any("has no rows" in w for w in build.stats["warnings"])
    assert any("has no rows" in line for line in build.logs)


def test_nothing_left_is_an_error_not_an_empty_dataset(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "answer": "y"}] * 3)
    with pytest.raises(DataError, match="no training rows left") as err:
        Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"}, on_error="skip")).run()
    assert "missing_field 3" in str(err.value)


# ---------------------------------------------------------------------------- stats, target
def test_stats_and_target_warning(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [pair(i) for i in range(50)])
    source = {"name": "s", "path": "d.jsonl"}
    build = Build(tmp_path, {"sources": [source]})  # default target 2,000-5,000
    metrics = build.run()
    stats = build.stats
    assert any("fewer than the target range 2000..5000" in w for w in stats["warnings"])
    assert any(line.startswith("warning:") and "target range" in line for line in build.logs)
    assert stats["rows_out"] == {"train": metrics["train"], "val": metrics["val"], "test": 0}
    lengths = stats["lengths"]["instruction"]
    assert (
        lengths["p5"]
        <= lengths["p50"]
        <= lengths["p95"]
        <= lengths["max"]
        == len(pair(49)["instruction"])
    )
    assert set(stats) >= {
        "rows_in",
        "drops",
        "duplicates",
        "cross_split_removed",
        "pairs_per_source",
        "warnings",
    }

    quiet = Build(
        tmp_path / "q",
        data_section({**source, "path": str(tmp_path / "d.jsonl")}, target_max_pairs=100),
    )
    quiet.run()
    assert not any("target range" in w for w in quiet.stats["warnings"])


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p5": 5, "p50": 50, "p95": 95, "max": 100}
    assert percentiles([]) == {"p5": 0, "p50": 0, "p95": 0, "max": 0}


def test_5000_rows_with_duplicates(tmp_path):
    # speed is measured by bench/noop_build.py; this checks the counts at that size
    rows = [
        pair(i, input=f"Context paragraph {i} about the parties.\t\tAnd  more.")
        for i in range(5000)
    ]
    rows += rows[:500]  # some duplicates to find
    write_jsonl(tmp_path / "d.jsonl", rows)
    metrics = Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"})).run()
    assert metrics["duplicates"] == 500 and metrics["train"] + metrics["val"] == 5000


def test_clean_text_shortcut_agrees_with_the_full_cleaning():
    import random

    rnd = random.Random(7)
    pieces = [
        "word",
        "Clause",
        "é",
        "e\u0301",
        "e",
        "\u0301",  # a bare combining accent: NFC must compose it even across a removed zero-width space
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t",
        "\r\n",
        "\u00a0",
        "\u200b",
        "§",
        "\x00",
        ",",
        "\u2028",
    ]
    for _ in range(3000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        cleaned = clean_text(text)
        assert cleaned == clean_text_fully(text), repr(text)
        assert clean_text(cleaned) == cleaned, repr(text)  # idempotent


# -------------------------------------------------------------------------- hostile inputs
def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [101, 1_000, 100_000])
def test_deeply_nested_json_is_a_bad_row_not_a_crash(tmp_path, depth):
    lines = [json.dumps(pair(0)), f'{{"instruction": {deep(depth)}, "output": "Risk: high"}}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines + [json.dumps(pair(1))]) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: JSON nested deeper than 100 levels"):
        Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"})).run()
    build = Build(tmp_path, data_section({"name": "s", "path": "d.jsonl"}, on_error="skip"))
    assert build.run()["train"] + build.metrics["val"] == 2
    (reject,) = build.rows("rejects.jsonl")
    assert (reject["line"], reject["reason"]) == (2, "too_deep")


def test_deep_elements_of_a_json_array(tmp_path):
    # decodable but deeper than 100 levels: one bad row; too deep to decode: the file stops there
    (tmp_path / "a.json").write_text(
        f'[{json.dumps(pair(0))},\n{{"instruction": {deep(150)}, "output": "x"}}]'
    )
    build = Build(tmp_path, data_section({"name": "s", "path": "a.json"}, on_error="skip"))
    build.run()
    assert [r["reason"] for r in build.rows("rejects.jsonl")] == ["too_deep"]
    (tmp_path / "b.json").write_text(f'[{json.dumps(pair(0))},\n{{"instruction": {deep(50_000)}}}]')
    with pytest.raises(DataError, match=r"b\.json:2: element \[1\] is nested too deeply"):
        Build(tmp_path, data_section({"name": "s", "path": "b.json"}, on_error="skip")).run()


def test_an_overlong_line_is_a_bad_row_read_in_bounded_memory(tmp_path):
    import tracemalloc

    from legalbuild.data.readers import iter_jsonl

    path = tmp_path / "d.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(pair(0)).encode() + b"\n")
        f.write(b'{"instruction": "' + b"x" * (20 << 20))  # 20 MiB without a newline
        f.write(b'"}\n' + json.dumps(pair(2)).encode() + b"\n")
    tracemalloc.start()
    items = list(iter_jsonl(path, max_line_bytes=1 << 20))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(i.line, i.error) for i in items] == [(1, None), (2, "line_too_long"), (3, None)]
    assert "1,048,576 bytes" in items[1].detail and len(items[1].text) < 300
    assert peak < 8 << 20, peak  # the 20 MiB line was never held whole


def test_fifo_device_proc_and_broken_links_are_refused_never_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jsonl")  # reading it would block forever
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    cases = {
        "pipe.jsonl": r"is a FIFO \(named pipe\), not a regular file",
        "gone.jsonl": r"nowhere\.jsonl: no such file or folder",  # the link resolved
        "/dev/zero": "is a character device",
        "/proc/self/status": "is under /proc",
    }
    for path, message in cases.items():
        source = {"name": "s", "path": path, "format": "jsonl"}
        with pytest.raises(DataError, match=message):
            Build(tmp_path, data_section(source, on_error="skip")).run()


def test_plan_refuses_special_files_inside_a_source_folder(tmp_path):
    """The cache key hashes every file of a folder source: a FIFO there hung `plan`."""
    import os

    from legalbuild.engine.pipeline import Loaded

    folder = tmp_path / "d_hf"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", ROWS)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[project]\nname = "x"\n[[data.sources]]\nname = "s"\npath = "d_hf"\n')
    assert Loaded.from_path(recipe).nodes["normalize"].key
    os.mkfifo(folder / "pipe")
    with pytest.raises(DataError, match=r"d_hf/pipe: is a FIFO"):
        Loaded.from_path(recipe)
    os.remove(folder / "pipe")
    (folder / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(DataError, match=r"d_hf/link: broken symbolic link"):
        Loaded.from_path(recipe)


def test_damaged_parquet_pages_name_the_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([pair(i) for i in range(30)]), path, row_group_size=10)
    data = bytearray(path.read_bytes())
    page = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data[page : page + 4] = bytes(b ^ 0xFF for b in data[page : page + 4])  # the page header
    path.write_bytes(bytes(data))
    for on_error in ("fail", "skip"):
        with pytest.raises(DataError, match=r"p\.parquet rows 10-19 \(row group 1\): unreadable"):
            Build(
                tmp_path, data_section({"name": "s", "path": "p.parquet"}, on_error=on_error)
            ).run()


def test_test_split_takes_whole_groups_and_never_moves_validation(tmp_path):
    rows = [pair(g * 10 + k, doc=f"contract-{g}") for g in range(60) for k in range(3)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    source = {"name": "s", "path": "d.jsonl", "group_field": "doc"}
    without = Build(
        tmp_path / "a",
        data_section({**source, "path": str(tmp_path / "d.jsonl")}, split={"by": "group"}),
    )
    without.run()
    split = {"by": "group", "test_fraction": 0.2}
    build = Build(
        tmp_path / "b", data_section({**source, "path": str(tmp_path / "d.jsonl")}, split=split)
    )
    build.run()
    groups = {
        side: {r["group"] for r in build.rows(f"{side}.jsonl")} for side in ("train", "val", "test")
    }
    assert groups["test"] and not groups["test"] & (groups["train"] | groups["val"])
    assert not groups["train"] & groups["val"]
    # adding a test split leaves validation exactly as it was; test rows come out of train
    assert build.rows("val.jsonl") == without.rows("val.jsonl")
    assert build.stats["rows_out"]["test"] == len(build.rows("test.jsonl")) > 0
