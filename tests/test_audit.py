"""What the audit asks and how an answer is read; documents and the concurrent client are in
test_contract_audit.py, the real-server run in test_serve.py (it shares that module's one vLLM
server)."""

from __future__ import annotations

import pytest

from legalbuild.answer_format import Audit, Finding, render_audit
from legalbuild.contract.client import audit_clauses, audit_result, openai_base_url
from legalbuild.contract.document import read_document
from legalbuild.contract.record import clause_row, comment_text, render_markdown
from legalbuild.contract.split import ContractClause, document_clauses
from legalbuild.errors import DataError, ServeError
from legalbuild.processes import free_port
from legalbuild.prompting import AUDIT_INSTRUCTION, PLAYBOOK_SUFFIX

CLAUSES_TEXT = """The Supplier's liability under this Agreement is unlimited.

This Agreement renews automatically for successive
one-year terms unless terminated.
  \t
\r
Either party may terminate for convenience on 30 days' notice.
"""


def test_a_file_of_clauses_separated_by_blank_lines_still_works(tmp_path):
    path = tmp_path / "clauses.txt"
    path.write_text(CLAUSES_TEXT)
    clauses = document_clauses(read_document(path))
    assert [(c.text, c.first, c.last) for c in clauses] == [
        ("The Supplier's liability under this Agreement is unlimited.", 1, 1),
        (
            "This Agreement renews automatically for successive one-year terms unless terminated.",
            3,
            4,
        ),
        ("Either party may terminate for convenience on 30 days' notice.", 7, 7),
    ]
    with pytest.raises(DataError, match="no such file"):
        read_document(tmp_path / "missing.txt")


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

    from legalbuild.contract.questions import playbook_questions, playbook_rules
    from legalbuild.curation.review import catalogue, rules_for_text
    from legalbuild.curation.rulebook import PACKAGED_REDLINE
    from legalbuild.curation.templates import AUDIT_TEMPLATES

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
    clause = ContractClause(
        1, "4.1", "Liability", "clause", "limitation_of_liability", "page", 2, 2
    )
    row = clause_row(clause, result)
    assert row["status"] == "audited" and row["location"] == {"unit": "page", "first": 2, "last": 2}
    assert comment_text(row) == (
        "Risk: high\nUncapped liability [liability.uncapped] (high)\nFix: Cap it at 12 months of fees."
    )
    garbled = clause_row(clause, audit_result("clause", "Sure! Here is my opinion.", 0.1))
    assert garbled["status"] == "unparsed" and garbled["findings"] is None
    assert garbled["answer"].startswith("Sure")
    record = {"document": {"name": "c.pdf"}, "model": "m", "endpoint": "e", "elapsed_s": 1.0,
              "interrupted": False, "summary": {"high": 1, "unparsed": 1}, "clauses": [row, garbled]}  # fmt: skip
    markdown = render_markdown(record)
    assert "**risk: high**" in markdown and "answer not in the audit format" in markdown


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
