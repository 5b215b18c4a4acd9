"""Metric functions on a hand-made set of answers whose scores are worked out by hand below."""

from __future__ import annotations

import math

import pytest

from legalbuild.answer_format import Audit, Finding, parse_audit, render_audit
from legalbuild.metrics import explanation_text, label_scores, label_set, mean, perplexity, rouge_l


def audit(*findings: tuple[str, str], why: str = "") -> str:
    """Render an answer with the given (rule_id, severity) findings; clean when none."""
    found = [
        Finding(title=f"Title {rid}", rule_id=rid, severity=sev, why=why) for rid, sev in findings
    ]
    order = {"high": 0, "medium": 1, "low": 2}
    risk = min((sev for _, sev in findings), key=order.__getitem__) if findings else "none"
    return render_audit(Audit(risk=risk, findings=found, note="The clause is balanced."))


REFERENCES = [
    audit(("a", "high")),  # 1: predicted exactly
    audit(("b", "medium"), ("c", "low")),  # 2: half found, right risk
    audit(),  # 3: clean, false alarm predicted
    audit(),  # 4: clean, predicted clean
    audit(("a", "high")),  # 5: unparseable prediction
    "Free text that is not an audit.",  # 6: unlabelled reference, ignored by label metrics
]
PREDICTIONS = [
    audit(("a", "high")),
    audit(("b", "medium")),
    audit(("c", "low")),
    audit(),
    "I think this clause is fine.",
    audit(("z", "low")),
]


def test_label_scores_match_hand_computed_values():
    scores = label_scores(
        [parse_audit(r) for r in REFERENCES], [parse_audit(p) for p in PREDICTIONS]
    )
    assert scores["labelled_rows"] == 5
    assert scores["label_accuracy"] == pytest.approx(2 / 5)  # rows 1 and 4
    assert scores["severity_accuracy"] == pytest.approx(3 / 5)  # rows 1, 2, 4
    assert scores["unparseable"] == 1 and scores["unparseable_rate"] == pytest.approx(1 / 5)
    assert scores["clean_rows"] == 2 and scores["false_alarms"] == 1
    assert scores["false_alarm_rate"] == pytest.approx(1 / 2)
    # per label F1 = 2tp / (2tp + fp + fn):
    #   a: tp 1 (row 1), fn 1 (row 5)            -> 2/3
    #   b: tp 1 (row 2)                           -> 1
    #   c: fn 1 (row 2), fp 1 (row 3)             -> 0
    #   (none): tp 1 (row 4), fn 1 (row 3)        -> 2/3
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 + 0 + 2 / 3) / 4)
    # micro: tp 3, fp 1, fn 3
    assert scores["micro_precision"] == pytest.approx(3 / 4)
    assert scores["micro_recall"] == pytest.approx(3 / 6)


def test_label_scores_of_a_perfect_model_and_of_no_labelled_rows():
    refs = [parse_audit(r) for r in REFERENCES]
    perfect = label_scores(refs, refs)
    assert perfect["label_accuracy"] == perfect["macro_f1"] == perfect["severity_accuracy"] == 1.0
    assert perfect["false_alarms"] == 0 and perfect["unparseable"] == 0
    empty = label_scores([None], [None])
    assert empty["labelled_rows"] == 0 and empty["label_accuracy"] is None
    with pytest.raises(ValueError):
        label_scores(refs, refs[:2])


def test_label_set_distinguishes_clean_from_unparseable():
    assert label_set(parse_audit(audit())) == {"(none)"}
    assert label_set(None) == frozenset()
    assert label_set(parse_audit(audit(("x", "low"), ("y", "high")))) == {"x", "y"}


def test_explanation_text_takes_why_lines_or_whole_answer():
    answer = render_audit(
        Audit(
            risk="high",
            findings=[
                Finding("T1", "r1", "high", why="First reason.", fix="Do this."),
                Finding("T2", "r2", "low", why="Second reason."),
            ],
        )
    )
    assert explanation_text(answer) == "First reason. Second reason."
    assert explanation_text("  plain text  ") == "plain text"


def test_rouge_l_matches_hand_computed_values():
    # row 1: "the cap is missing" vs "the cap is absent": LCS 3 of 4 and 4 -> F 0.75
    # row 2: "liability is unlimited" vs the whole clean answer (no Why):
    #   "risk none findings none liability is fine" (7 tokens); LCS "liability is" = 2
    #   P = 2/7, R = 2/3, F = 2PR/(P+R) = 0.4
    # row 3: no reference text -> skipped
    refs = [
        audit(("a", "high"), why="The cap is missing."),
        audit(("a", "high"), why="Liability is unlimited."),
        None,
    ]
    preds = [
        audit(("a", "high"), why="The cap is absent."),
        "Risk: none\nFindings: none. Liability is fine.",
        "anything",
    ]
    assert rouge_l(refs, preds) == pytest.approx((0.75 + 0.4) / 2)
    assert rouge_l([None], ["x"]) is None


def test_perplexity_and_mean():
    assert perplexity(math.log(4.0)) == pytest.approx(4.0)
    assert perplexity(None) is None
    assert math.isfinite(perplexity(1e6))
    assert mean([1.0, None, 3.0]) == 2.0 and mean([None]) is None


def test_an_unreadable_answer_on_a_clean_clause_is_a_false_alarm():
    refs = [parse_audit(audit()), parse_audit(audit())]
    scores = label_scores(refs, [parse_audit("Looks fine to me."), parse_audit(audit())])
    assert scores["false_alarms"] == 1 and scores["false_alarm_rate"] == pytest.approx(1 / 2)
