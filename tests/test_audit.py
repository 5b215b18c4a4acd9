"""The audit client's input handling and result shape; the real-server run is in test_serve.py
(it shares that module's one vLLM server)."""

from __future__ import annotations

import io

import pytest

from legalbuild.answer_format import Audit, Finding, render_audit
from legalbuild.audit import (
    audit_clauses,
    audit_result,
    format_results,
    load_clauses,
    openai_base_url,
    read_clauses,
)
from legalbuild.errors import DataError, ServeError
from legalbuild.prompting import AUDIT_INSTRUCTION, PLAYBOOK_SUFFIX
from legalbuild.serve import free_port

CLAUSES_TEXT = """The Supplier's liability under this Agreement is unlimited.

This Agreement renews automatically for successive
one-year terms unless terminated.
  \t
\r
Either party may terminate for convenience on 30 days' notice.
"""


def test_read_clauses_splits_on_blank_lines_and_keeps_wrapped_lines():
    assert read_clauses(CLAUSES_TEXT) == [
        "The Supplier's liability under this Agreement is unlimited.",
        "This Agreement renews automatically for successive\none-year terms unless terminated.",
        "Either party may terminate for convenience on 30 days' notice.",
    ]
    assert read_clauses("\n\n  \n") == []


def test_load_clauses_from_file_and_stdin(tmp_path, monkeypatch):
    path = tmp_path / "clauses.txt"
    path.write_text(CLAUSES_TEXT)
    assert len(load_clauses(path)) == 3
    monkeypatch.setattr("sys.stdin", io.StringIO("One clause.\n\nAnother clause.\n"))
    assert load_clauses("-") == ["One clause.", "Another clause."]
    with pytest.raises(DataError, match="no such file"):
        load_clauses(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no clause found"):
        load_clauses(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("Clause one.\n\nLa clause deux.".encode("cp1252") + b"\xe9", ":3:16: byte 0xe9 is not valid UTF-8"),
        ("Clause one.".encode("utf-16"), ": the file of clauses is UTF-16 text"),
    ],
)  # fmt: skip
def test_a_file_of_clauses_not_in_utf8_names_the_file_and_an_encoding(tmp_path, data, expected):
    path = tmp_path / "clauses.txt"
    path.write_bytes(data)
    with pytest.raises(DataError) as exc:
        load_clauses(path)
    assert f"{path}{expected}" in str(exc.value)
    assert "iconv -f" in exc.value.hint


def test_endpoint_forms_all_reach_the_v1_root():
    for endpoint in (
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/v1/",
    ):
        assert openai_base_url(endpoint) == "http://127.0.0.1:8000/v1"


def test_playbook_question_is_the_training_wording(tmp_path):
    """`audit --playbook` asks what curation trained on: the same wording, then the playbook's
    rules that apply to the clause; `--constrained` adds a regex citing only those rules."""
    import re

    from legalbuild.audit import playbook_questions, playbook_rules
    from legalbuild.curation.pairs import AUDIT_TEMPLATES, catalogue, rules_for_text
    from legalbuild.curation.rulebook import PACKAGED_REDLINE

    assert AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX in AUDIT_TEMPLATES
    rules = playbook_rules([PACKAGED_REDLINE], tmp_path, "saas-vendor")
    clause = "The Provider may increase the fees at any time in its sole discretion."
    question = playbook_questions([clause], "saas-vendor", rules, constrained=True)[0]
    applicable = rules_for_text(clause, rules)
    assert applicable and len(applicable) <= len(rules)
    expected = (AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX).format(clause=clause, playbook="saas-vendor")
    assert question.instruction == expected + catalogue(applicable)
    regex = question.extra_body()["structured_outputs"]["regex"]
    assert all(re.escape(r.id) in regex for r in applicable)
    plain = playbook_questions([clause], None, [], constrained=False)[0]
    assert plain.instruction == AUDIT_INSTRUCTION.format(clause=clause)
    assert plain.extra_body() is None
    with pytest.raises(DataError, match="choose one of"):
        playbook_rules([PACKAGED_REDLINE], tmp_path, "no-such-playbook")


def test_unreachable_endpoint_is_a_clear_error():
    # Nothing listens on a fresh free port: the real openai client gets connection refused.
    with pytest.raises(ServeError, match="cannot reach"):
        audit_clauses(["x"], f"http://127.0.0.1:{free_port()}", "m", "system", None, timeout_s=5)


def test_result_parses_an_audit_format_answer():
    answer = render_audit(
        Audit(
            risk="high",
            findings=[
                Finding(
                    "Uncapped liability",
                    "liability.uncapped",
                    "high",
                    fix="Cap it at 12 months of fees.",
                )
            ],
        )
    )
    result = audit_result("clause", answer, 0.25, finish_reason="stop")
    assert (
        result["risk"] == "high"
        and result["findings"]["findings"][0]["rule_id"] == "liability.uncapped"
    )
    assert "liability.uncapped" in format_results([result])
    garbled = audit_result("clause", "Sure! Here is my opinion.", 0.1)
    assert garbled["findings"] is None and garbled["answer"].startswith("Sure")
    assert "not in the audit format" in format_results([garbled])


def test_example_client_sends_what_the_model_was_trained_with():
    import importlib.util
    from pathlib import Path

    from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT

    path = Path(__file__).resolve().parents[1] / "serving" / "example_client.py"
    spec = importlib.util.spec_from_file_location("example_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SYSTEM_PROMPT == DEFAULT_SYSTEM_PROMPT
    assert module.INSTRUCTION == AUDIT_INSTRUCTION
