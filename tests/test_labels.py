"""Labels the rulebook did not write: the CUAD table (answers and topics), balanced accuracy with
its intervals, data files found by path, mirror or checked download, and label sets scored in the
eval stage. Clauses here are written for the tests; the real CUAD rows are read in place from
../shared/data/cuad/ (skipped when absent) and never copied."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from helpers import REPO, write_jsonl

from legalbuild.answer_format import Audit, Finding, parse_audit
from legalbuild.curation import cuad
from legalbuild.errors import DataError
from legalbuild.evaluation.balanced import balanced_binary, balanced_table
from legalbuild.hashing import hash_file

CUAD_DIR = REPO.parent / "shared" / "data" / "cuad"
needs_cuad = pytest.mark.skipif(not CUAD_DIR.is_dir(), reason=f"no CUAD copy at {CUAD_DIR}")


# ------------------------------------------------------------------------------ the CUAD table
def test_the_table_covers_the_37_categories_and_16_red_flags():
    assert len(cuad.CATEGORIES) == 37 and len(cuad.RED_FLAGS) == 16
    for name in cuad.RED_FLAGS:
        c = cuad.CATEGORIES[name]
        assert c.severity in ("high", "medium", "low") and c.title and c.why and c.fix and c.side
    assert all(c.note for c in cuad.CATEGORIES.values() if not c.red_flag)


def test_every_rulebook_id_the_table_names_exists_with_its_severity():
    from legalbuild.curation.rulebook import PACKAGED_REDLINE, load_rulebooks

    rules = {r.id: r for r in load_rulebooks([PACKAGED_REDLINE], REPO).rules}
    for rule_id in cuad.RULE_TOPICS:
        assert rule_id.startswith("cuad.") or rule_id in rules, rule_id
    for name in cuad.RED_FLAGS:
        c = cuad.CATEGORIES[name]
        if not c.rule_id.startswith("cuad."):
            assert rules[c.rule_id].severity == c.severity, name


@needs_cuad
def test_the_table_knows_every_category_of_the_cuad_files():
    names = {c["name"] for c in json.loads((CUAD_DIR / "categories.json").read_text())}
    assert names == set(cuad.CATEGORIES)
    rows = cuad.read_labelled(CUAD_DIR / "dev.jsonl")
    assert len(rows) == 601 and all(r.categories for r in rows)


def test_answer_for_names_the_type_first_and_raises_each_red_flag():
    answer = cuad.answer_for(["License Grant", "Non-Compete", "Exclusivity"])
    audit = parse_audit(answer)
    assert answer.startswith("Clause type: Non-Compete; Exclusivity; License Grant\nRisk: high")
    assert [f.severity for f in audit.findings] == ["high", "medium"]  # worst first
    assert cuad.finding_topics(audit) == {"Non-Compete", "Exclusivity"}
    assert cuad.type_topics(audit) == {"Non-Compete", "Exclusivity", "License Grant"}
    clean = parse_audit(cuad.answer_for(["Expiration Date"]))
    assert (
        clean.risk == "none"
        and not clean.findings
        and cuad.type_topics(clean) == {"Expiration Date"}
    )


def test_topics_are_read_from_ids_and_titles_never_from_the_why_text():
    echo = Finding(
        "Unclear term", "x.unclear", "low", why="It is a non-compete and an exclusivity."
    )
    assert cuad.finding_topics(Audit("low", [echo])) == set()
    by_title = Finding("Non-compete restriction", "made.up-id", "high")
    assert cuad.finding_topics(Audit("high", [by_title])) == {"Non-Compete"}
    by_rule = Finding("Whatever", "saas-vendor.auto-renewal", "medium")
    assert cuad.finding_topics(Audit("medium", [by_rule])) == {"Renewal Term"}
    assert cuad.finding_topics(None) == set() and cuad.type_topics(None) == set()
    assert cuad.type_topics(Audit("none", clause_type="governing law")) == {"Governing Law"}
    assert cuad.type_topics(Audit("none", clause_type="Governing law of Delaware")) == set()


def test_a_row_with_an_unknown_category_is_a_data_error(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl", [{"id": "a", "document": "d", "text": "t", "categories": ["Nope"]}]
    )
    with pytest.raises(DataError, match=r"x.jsonl:1: unknown CUAD category \['Nope'\]"):
        cuad.read_labelled(path)


# -------------------------------------------------------------------------- balanced accuracy
def test_balanced_accuracy_matches_a_hand_computation():
    labels = [{"A"}, {"A"}, {"B"}, {"B"}, {"B"}, set()]
    guess = [{"A"}, set(), {"A"}, {"B"}, {"B"}, set()]
    table = balanced_table(labels, guess, ["A", "B"], draws=200)
    a, b = table["categories"]["A"], table["categories"]["B"]
    # A: TPR 1/2, TNR 3/4 -> 0.625; B: TPR 2/3, TNR 3/3 -> 0.8333
    assert (a["positives"], a["negatives"], a["ba"]) == (2, 4, 0.625)
    assert b["ba"] == pytest.approx(0.8333, abs=1e-4)
    assert table["macro_ba"] == pytest.approx((0.625 + 0.8333) / 2, abs=1e-4)
    low, high = table["macro_interval"]
    assert 0 <= low <= table["macro_ba"] <= high <= 1
    # answering "no" everywhere is chance, whatever the class balance
    assert balanced_table(labels, [set()] * 6, ["A", "B"])["macro_ba"] == 0.5
    assert balanced_binary([True, True, False], [True, False, False])["ba"] == 0.75


def test_a_category_without_negatives_is_not_scored():
    table = balanced_table([{"A"}, {"A"}], [{"A"}, set()], ["A"])
    assert table["categories"]["A"]["ba"] is None and table["macro_ba"] is None


# ------------------------------------------------------------------------- finding the file
def _spec(**fields):
    from legalbuild.recipe.output import LabelSet

    return LabelSet(name="s", **fields)


def test_a_local_file_is_used_and_checked(tmp_path):
    from legalbuild.data.remote import key_digest, locate

    data = write_jsonl(tmp_path / "set.jsonl", [{"a": 1}])
    digest = hash_file(data)
    assert locate(_spec(path="set.jsonl", sha256=digest), tmp_path, None) == data
    assert key_digest(_spec(path="set.jsonl"), tmp_path) == key_digest(
        _spec(path=str(data)), REPO
    )  # the key holds the bytes' digest, not where they lie
    with pytest.raises(DataError, match="differs from the recipe's"):
        locate(_spec(path="set.jsonl", sha256="0" * 64), tmp_path, None)


def test_a_mirror_folder_and_a_checked_download(tmp_path, monkeypatch):
    from legalbuild.data.remote import MIRROR_ENV, locate

    served = tmp_path / "site"
    served.mkdir()
    data = write_jsonl(served / "set.jsonl", [{"clause": "x"}] * 3)
    digest = hash_file(data)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/set.jsonl"
    try:
        downloads = tmp_path / "downloads"
        got = locate(_spec(url=url, sha256=digest), tmp_path, downloads, log=lambda _m: None)
        assert got == downloads / digest and got.read_bytes() == data.read_bytes()
        data.write_text("changed\n")  # a second locate reuses the download, no request needed
        assert locate(_spec(url=url, sha256=digest), tmp_path, downloads, lambda _m: None) == got
        with pytest.raises(DataError, match="the download's sha256"):
            locate(_spec(url=url, sha256="1" * 64), tmp_path, downloads, lambda _m: None)
        assert not list(downloads.glob(".*"))  # no temp file left
        mirror = tmp_path / "mirror"
        mirror.mkdir()
        (mirror / "set.jsonl").write_bytes(got.read_bytes())
        monkeypatch.setenv(MIRROR_ENV, str(mirror))
        assert locate(_spec(url=url, sha256=digest), tmp_path, None) == mirror / "set.jsonl"
    finally:
        server.shutdown()
    monkeypatch.delenv(MIRROR_ENV)
    with pytest.raises(DataError, match="data file not found"):
        locate(_spec(path="absent.jsonl"), tmp_path, None)


def test_a_url_without_sha256_is_refused_when_the_recipe_is_read():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs `sha256`"):
        _spec(url="https://example.org/set.jsonl")
    with pytest.raises(ValidationError, match="give `path`"):
        _spec()
