"""The eval stage on real tiny models: a random one and one trained here to answer 'clean'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_recipe, stage_context, write_jsonl

from legalbuild.answer_format import Audit, Finding, audit_regex, render_audit
from legalbuild.engine.context import StageContext
from legalbuild.errors import DataError, StageFailedError
from legalbuild.evaluation import baseline, generate, rows, scoring, table
from legalbuild.recipe import Recipe
from legalbuild.stages import eval as eval_stage

PLAYBOOK = """\
name: test-book
description: Test rules.
rules:
  - id: liability-unlimited
    title: Unlimited liability
    severity: high
    description: The limitation of liability clause leaves liability unlimited.
    why: Unlimited liability exposes the customer to losses beyond the contract value.
    suggestion: Cap liability at the fees paid in the prior twelve months.
    check:
      kind: forbids_any
      patterns: ['liability\\s+(is|shall\\s+be)\\s+unlimited']
"""
RULE = "test-book.liability-unlimited"
CLEAN = render_audit(Audit(risk="none", note="The clause is balanced."))
FLAGGED = render_audit(
    Audit(
        risk="high",
        findings=[
            Finding(
                "Unlimited liability",
                RULE,
                "high",
                why="Unlimited liability exposes the customer to losses.",
            )
        ],
    )
)


def val_row(i: int, clause: str, output: str, task: str, severity: str) -> dict:
    meta = {"rule_id": RULE if output == FLAGGED else None, "severity": severity, "task": task}
    meta |= {"clause_type": "limitation_of_liability", "verified_by": "regex"}
    return {
        "id": f"r{i}",
        "instruction": f"Audit this contract clause:\n\n{clause}",
        "output": output,
        "source": "curated",
        "group": f"doc{i}",
        "meta": meta,
    }


VAL_ROWS = [
    val_row(0, "The Supplier's liability is unlimited for any damages.", FLAGGED, "audit", "high"),
    val_row(1, "Each party's liability shall not exceed the fees paid.", CLEAN, "audit", "none"),
    val_row(
        2, "The Customer's liability shall be unlimited in all cases.", FLAGGED, "defect", "high"
    ),
    val_row(
        3, "Liability for damages is capped at the fees paid in 12 months.", CLEAN, "defect", "none"
    ),
]


def make_ctx(tmp_path: Path, base_model: Path, merged_model: Path, **eval_settings) -> StageContext:
    """The eval stage over VAL_ROWS, with the test playbook as its rulebook."""
    (tmp_path / "rules.yaml").write_text(PLAYBOOK)
    val = write_jsonl(tmp_path / "split" / "val.jsonl", VAL_ROWS)
    recipe = make_recipe(
        curate={"corpora": [{"kind": "folder", "path": "c"}], "rulebooks": ["rules.yaml"]},
        eval={"batch_size": 3, "max_new_tokens": 24, "engine": "transformers", **eval_settings},
    )
    inputs = {
        "normalize": {"val.jsonl": val},
        "base": {"model": base_model},
        "merge": {"model": merged_model},
    }
    return stage_context(tmp_path, "eval", recipe, inputs)


@pytest.fixture(scope="module")
def clean_answer_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model trained (a few seconds) to answer every prompt with the clean verdict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    system = Recipe.model_validate(
        {"project": {"name": "t"}, "curate": {"corpora": [{"kind": "nda_review"}]}}
    )
    system_prompt = system.data.system_prompt
    eval_rows = [
        rows.load_split_rows(write_jsonl(tmp_path_factory.mktemp("v") / "v.jsonl", VAL_ROWS), "val")
    ][0]
    examples = []
    for row in eval_rows:
        prompt = generate.prompt_text(tokenizer, system_prompt, row.instruction)
        answer = generate.templated_answer(tokenizer, system_prompt, row.instruction, prompt, CLEAN)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        examples.append(
            (torch.tensor([p_ids + a_ids]), torch.tensor([[-100] * len(p_ids) + a_ids]))
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(60):
        ids, labels = examples[step % len(examples)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    dest = tmp_path_factory.mktemp("clean") / "model"
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


# ------------------------------------------------------------------------------------ rows
def test_extra_set_accepts_both_shapes(tmp_path):
    path = write_jsonl(
        tmp_path / "extra.jsonl",
        [
            {
                "clause": "Liability is unlimited.",
                "expected": [RULE],
                "severity": "high",
                "clause_type": "x",
            },
            {"clause": "A fair clause.", "expected": []},
            {"instruction": "Audit: foo", "output": CLEAN, "meta": {"task": "audit"}},
        ],
    )
    extra = rows.load_extra_set(path)
    assert [r.set for r in extra] == ["extra:extra"] * 3
    assert extra[0].reference.rule_ids == [RULE] and extra[0].reference.risk == "high"
    assert extra[0].reference_text is None and extra[0].clause == "Liability is unlimited."
    assert (
        extra[0].instruction.endswith("Liability is unlimited.")
        and extra[0].meta["clause_type"] == "x"
    )
    assert extra[1].reference.risk == "none" and not extra[1].reference.findings
    assert extra[2].reference_text == CLEAN and extra[2].category("task") == "audit"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"clause": "x", "expected": "r1", "severity": "high"}', "'expected' must be a list"),
        ('{"clause": "x", "expected": ["r1"]}', "'severity' must be one of"),
        ('{"clause": "x", "expected": [], "severity": "high"}', "contradicts"),
        ('{"instruction": "x", "output": ""}', "'output' must be a non-empty string"),
        ('{"text": "x"}', "either 'clause'"),
    ],
)
def test_extra_set_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"clause": "ok", "expected": []}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        rows.load_extra_set(path)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)
    with pytest.raises(DataError, match="not found"):
        rows.load_extra_set(tmp_path / "missing.jsonl")


def test_select_rows_is_balanced_and_deterministic(tmp_path):
    pool = rows.load_split_rows(
        write_jsonl(
            tmp_path / "v.jsonl",
            [val_row(i, f"clause {i}", FLAGGED, "audit", "high") for i in range(10)],
        ),
        "test",
    )
    pool += rows.load_split_rows(
        write_jsonl(
            tmp_path / "w.jsonl",
            [val_row(10 + i, f"c{i}", CLEAN, "audit", "none") for i in range(2)],
        ),
        "test",
    )
    picked = rows.select_rows(pool, 6)
    # clean clauses are a stratum of their own: the 2 of 12 are kept whole in a pick of 6
    assert sum(r.clean for r in picked) == 2 and len(picked) == 6
    assert [r.id for r in picked] == [r.id for r in rows.select_rows(pool, 6)]
    assert len(rows.select_rows(pool, 100)) == 12


def test_clause_from_instruction():
    assert rows.clause_from_instruction("Audit this clause:\n\nThe clause.") == "The clause."
    assert rows.clause_from_instruction("No lead-in here.") == "No lead-in here."


SECOND_PLAYBOOK = """\
name: other-book
description: Other rules.
rules:
  - id: liability-unlimited-too
    title: Liability without a cap
    severity: medium
    description: The limitation of liability clause leaves liability unlimited.
    why: No cap.
    suggestion: Add a cap.
    check:
      kind: forbids_any
      patterns: ['liability\\s+(is|shall\\s+be)\\s+unlimited']
"""


def baseline_row(clause: str, instruction: str | None = None, clause_type=None) -> rows.EvalRow:
    return rows.EvalRow(
        id="r",
        set="test",
        instruction=instruction or f"Audit this contract clause:\n\n{clause}",
        clause=clause,
        reference_text=None,
        reference=None,
        meta={"clause_type": clause_type} if clause_type else {},
    )


def test_regex_baselines_use_the_curation_rulebook(tmp_path):
    (tmp_path / "rules.yaml").write_text(PLAYBOOK)
    (tmp_path / "other.yaml").write_text(SECOND_PLAYBOOK)
    from legalbuild.curation.review import audit_answer
    from legalbuild.curation.rulebook import load_rulebooks
    from legalbuild.prompting import audit_instruction

    book = load_rulebooks(["rules.yaml", "other.yaml"], tmp_path)
    answers = baseline.make_regex_baselines(book.rules)
    fair, unscoped = answers["regex"], answers["regex-unscoped"]
    unlimited = "The Supplier's liability is unlimited."
    flagged = unscoped(baseline_row(unlimited, clause_type="limitation_of_liability"))
    assert flagged.startswith("Risk: high") and f"[{RULE}]" in flagged
    assert "[other-book.liability-unlimited-too]" in flagged  # every playbook's rules fire
    capped = baseline_row(
        "Liability is capped at the fees paid.", clause_type="limitation_of_liability"
    )
    assert unscoped(capped).startswith("Risk: none")
    assert unscoped(baseline_row(unlimited, clause_type="payment")).startswith("Risk: none")
    assert f"[{RULE}]" in unscoped(baseline_row("The liability is unlimited for damages."))
    # told the listed rules, the fair baseline checks those and only those
    rule = next(r for r in book.rules if r.id == RULE)
    told = audit_instruction(unlimited, "test-book", [(rule.id, rule.title, rule.severity)])
    assert fair(baseline_row(unlimited, told)) == audit_answer([rule], "")
    # told a playbook without a catalogue: that playbook's rules that apply to the clause
    named = audit_instruction(unlimited, "other-book")
    assert "[other-book.liability-unlimited-too]" in fair(baseline_row(unlimited, named))
    assert f"[{RULE}]" not in fair(baseline_row(unlimited, named))
    # a plain question: nothing to scope by, every playbook
    assert fair(baseline_row(unlimited, clause_type="limitation_of_liability")) == flagged


# ------------------------------------------------------------------------------- the stage
def test_eval_stage_compares_models_and_traces_rows(tmp_path, tiny_model_dir, clean_answer_model):
    base, merged = tiny_model_dir, clean_answer_model
    extra = write_jsonl(
        tmp_path / "extra.jsonl",
        [
            {
                "clause": "The Supplier's liability is unlimited under this Agreement.",
                "expected": [RULE],
                "severity": "high",
            }
        ],
    )
    ctx = make_ctx(tmp_path, base, merged, extra_sets=[str(extra)])
    headline = eval_stage.run(ctx)

    result = json.loads((ctx.out_dir / "eval.json").read_text())
    assert result["models"] == ["base", "merged", "regex", "regex-unscoped"]
    assert result["rows"] == 5
    assert result["sets"] == {"extra:extra": 1, "val": 4} and result["split"] == "val"
    assert any("no test split" in w for w in result["warnings"])
    assert result["clean_rows"] == 2
    merged_m, base_m, regex_m = (result["metrics"][m] for m in ("merged", "base", "regex"))
    # the trained model says "clean" everywhere: right on the 2 clean rows out of 5 labelled rows
    assert merged_m["label_accuracy"] == pytest.approx(2 / 5) and merged_m["false_alarms"] == 0
    assert merged_m["unparseable"] == 0 and merged_m["severity_accuracy"] == pytest.approx(2 / 5)
    assert base_m["unparseable"] == 5 and base_m["label_accuracy"] == 0  # random weights: gibberish
    assert regex_m["label_accuracy"] == 1.0 and regex_m["val_loss"] is None
    # teacher-forced loss on the 4 val references (the extra row has no reference text)
    assert merged_m["val_loss"] < base_m["val_loss"] and merged_m["perplexity"] > 1
    assert merged_m["loss_tokens"] > 0 and base_m["loss_tokens"] == merged_m["loss_tokens"]
    assert 0 <= merged_m["rouge_l"] <= 1 and merged_m["mean_latency_s"] > 0
    assert set(result["by_category"]) == {"task", "ask", "clause_type", "severity", "set"}
    assert set(result["by_category"]["ask"]) == {"plain"}  # the val rows ask without a rule list
    assert result["by_category"]["task"]["defect"]["merged"]["rows"] == 2
    assert result["regression"] is None and headline["merged_label_accuracy"] == pytest.approx(
        2 / 5
    )

    answers = [
        json.loads(line) for line in (ctx.out_dir / "answers.jsonl").read_text().splitlines()
    ]
    assert len(answers) == 5
    assert set(answers[0]["answers"]) == {"base", "merged", "regex", "regex-unscoped"}
    assert all(a["answers"]["merged"]["text"].startswith("Risk: none") for a in answers)
    extra_row = next(a for a in answers if a["set"] == "extra:extra")
    assert (
        extra_row["reference_labels"] == [RULE] and extra_row["answers"]["merged"]["loss"] is None
    )

    text = table.format_comparison_table(result)
    assert "finding-label accuracy" in text and "40.0%" in text and "+40.0 pt better" in text
    # a 95% bootstrap interval beside label accuracy and macro-F1
    low, high = merged_m["intervals"]["label_accuracy"]
    assert 0 <= low <= 2 / 5 <= high <= 1 and f"[{low:.0%}–{high:.0%}]" in text


def test_fail_if_worse_raises_when_merged_regresses(tmp_path, tiny_model_dir, clean_answer_model):
    base, merged = clean_answer_model, tiny_model_dir
    ctx = make_ctx(tmp_path, base, merged, fail_if_worse=True, max_new_tokens=16)
    with pytest.raises(StageFailedError, match="REGRESSION"):
        eval_stage.run(ctx)
    result = json.loads((ctx.out_dir / "eval.json").read_text())
    assert result["regression"] and result["warnings"][0].startswith("REGRESSION")


def test_eval_reports_on_the_test_split_when_there_is_one(
    tmp_path, tiny_model_dir, clean_answer_model
):
    base, merged = tiny_model_dir, clean_answer_model
    ctx = make_ctx(tmp_path, base, merged, compare_base=False, max_new_tokens=8)
    write_jsonl(ctx.inputs["normalize"] / "test.jsonl", VAL_ROWS[:2])
    eval_stage.run(ctx)
    result = json.loads((ctx.out_dir / "eval.json").read_text())
    assert result["split"] == "test" and result["sets"] == {"test": 2}
    assert not any("no test split" in w for w in result["warnings"])


# ----------------------------------------------------------------------- constrained decoding
def test_audit_regex_accepts_the_format_and_only_listed_rules():
    import re

    from legalbuild.prompting import audit_instruction, catalogue_rules

    listed = [(RULE, "Unlimited liability", "high"), ("test-book.other", "Other: x (y)", "low")]
    question = audit_instruction("Liability is unlimited.", "test-book", listed)
    assert catalogue_rules(question) == listed  # the catalogue block round-trips
    pattern = audit_regex([(rule_id, severity) for rule_id, _, severity in listed])
    revised = f"{FLAGGED}\nFix: Cap it.\n\nRevised clause:\nLiability is capped."
    assert re.fullmatch(pattern, revised) and re.fullmatch(pattern, CLEAN)
    assert not re.fullmatch(pattern, FLAGGED.replace(RULE, "test-book.invented"))  # not listed
    assert not re.fullmatch(pattern, FLAGGED.replace("(severity: high)", "(severity: low)"))
    assert not re.fullmatch(pattern, "The clause looks risky.")
    assert re.fullmatch(audit_regex(), FLAGGED.replace(RULE, "any.rule-id") + "\nFix: f")


def test_constrained_generation_follows_the_regex(tiny_model_dir):
    """The random tiny model writes gibberish freely; held to a regex it can only write a match."""
    import re

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = [generate.prompt_text(tokenizer, "", f"Audit clause {i}") for i in range(3)]
    regexes = ["Risk: (?:high|low)", "Risk: none", "Risk: (?:high|low)"]
    caps = [12] * len(prompts)
    free = generate.generate_transformers(model, tokenizer, prompts, 3, caps)
    held = generate.generate_transformers(model, tokenizer, prompts, 3, caps, regexes)
    assert all(re.fullmatch(r, a.text) for r, a in zip(regexes, held, strict=True))
    assert not any(re.fullmatch(r, a.text) for r, a in zip(regexes, free, strict=True))


def test_eval_reports_constrained_answers_beside_the_free_ones(
    tmp_path, tiny_model_dir, clean_answer_model
):
    base, merged = tiny_model_dir, clean_answer_model
    ctx = make_ctx(tmp_path, base, merged, compare_base=False, constrained=True, max_new_tokens=40)
    eval_stage.run(ctx)
    result = json.loads((ctx.out_dir / "eval.json").read_text())
    assert result["models"] == ["merged", "merged+constrained", "regex", "regex-unscoped"]
    held = result["metrics"]["merged+constrained"]
    assert held["unparseable"] == 0 and held["false_alarms"] == 0
    assert "constrained" in table.format_comparison_table(result)


# ----------------------------------------------------------------------------------- scoring
def test_bootstrap_intervals_bracket_the_figure_and_repeat():
    pool = [
        rows.EvalRow(f"r{i}", "test", "q", "c", None, Audit(risk="none"), meta={"task": "audit"})
        for i in range(20)
    ]
    answers = [
        generate.Answer(text=CLEAN if i % 4 else "gibberish", tokens=1, seconds=0.0)
        for i in range(20)
    ]
    accuracy = scoring.score(pool, answers)["label_accuracy"]
    first = scoring.bootstrap_intervals(pool, answers, samples=200)
    assert first == scoring.bootstrap_intervals(pool, answers, samples=200)  # seeded
    low, high = first["label_accuracy"]
    assert accuracy == 0.75 and low < accuracy < high and low > 0.4 and high <= 1.0


# --------------------------------------------------------------------- labels the rulebook did not write
LABELLED = [  # clauses written for this test, in CUAD's clause-level shape
    (
        "c1",
        "d1",
        "The Supplier's liability is unlimited under this Agreement.",
        ["Uncapped Liability"],
    ),
    (
        "c2",
        "d1",
        "This Agreement is governed by the laws of the State of Delaware.",
        ["Governing Law"],
    ),
    (
        "c3",
        "d2",
        "The Distributor shall not sell competing products in the Territory.",
        ["Non-Compete"],
    ),
    (
        "c4",
        "d2",
        "This Agreement expires on the fifth anniversary of the Effective Date.",
        ["Expiration Date"],
    ),
    ("c5", "d3", "Licensor grants Licensee a licence to use the Software.", ["License Grant"]),
]


@pytest.mark.slow
def test_label_sets_are_asked_plainly_and_per_playbook_and_scored_by_topic(
    tmp_path, tiny_model_dir, clean_answer_model
):
    labelled = write_jsonl(
        tmp_path / "labelled.jsonl",
        [{"id": i, "document": d, "text": t, "categories": c} for i, d, t, c in LABELLED],
    )
    label_set = {"name": "mini", "path": str(labelled), "playbooks": ["test-book"]}
    ctx = make_ctx(
        tmp_path, tiny_model_dir, clean_answer_model, compare_base=False, label_sets=[label_set]
    )
    eval_stage.run(ctx)
    result = json.loads((ctx.out_dir / "eval.json").read_text())
    scores = result["label_sets"]["mini"]
    assert scores["clauses"] == 5 and set(scores["asks"]) == {"plain", "test-book"}
    merged = scores["asks"]["plain"]["merged"]
    # the clean-answer model raises nothing: chance on topic and on "flags any risk"
    assert merged["topic"]["macro_ba"] == 0.5 and merged["flags_any_risk"]["ba"] == 0.5
    assert merged["topic"]["red_flag_categories_scored"] == 3
    assert merged["topic"]["categories"]["Non-Compete"]["positives"] == 1
    asked = [json.loads(x) for x in (ctx.out_dir / "answers.jsonl").read_text().splitlines()]
    playbook_rows = [a for a in asked if a["set"] == "mini:test-book"]
    assert len(playbook_rows) == 5 and all("categories" in a for a in playbook_rows)
    told = next(a for a in playbook_rows if a["id"] == "c1:test-book")
    assert f"- {RULE}:" in told["instruction"]  # the playbook's applicable rules are listed
    # the regex told test-book's rules fires on c1, but a rule the table does not map raises no
    # CUAD topic: the mapping is conservative
    assert f"[{RULE}]" in told["answers"]["regex"]["text"]
    fair = scores["asks"]["test-book"]["regex"]["topic"]["categories"]["Uncapped Liability"]
    assert fair["tpr"] == 0 and fair["ba"] == 0.5
    assert result["rows"] == 4  # the held-out figures stay on the held-out rows
    text = table.format_comparison_table(result)
    assert "labels the rulebook did not write" in text
    assert "mini (5)" in text and "merged" in text and "0.500 [" in text
