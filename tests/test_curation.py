"""Curation on the real packaged material: licensedcode texts, the Common Paper NDA, redline rules."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import stage_context

from legalbuild.answer_format import parse_audit
from legalbuild.curation.clauses import classify_clause, split_clauses
from legalbuild.curation.corpora import load_corpus
from legalbuild.curation.defects import inject_defect
from legalbuild.curation.pairs import generate_pairs
from legalbuild.curation.rulebook import PACKAGED_REDLINE, load_playbook, load_rulebooks
from legalbuild.errors import DataError
from legalbuild.recipe import ContractCorpus, CurateSection, Recipe

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def rulebook():
    return load_rulebooks([PACKAGED_REDLINE], HERE)


@pytest.fixture(scope="module")
def nda_docs():
    return load_corpus(ContractCorpus(kind="nda_review"), HERE)


@pytest.fixture(scope="module")
def licence_docs():
    return load_corpus(ContractCorpus(kind="licensedcode", max_documents=150), HERE)


def common_paper(nda_docs):
    return next(d for d in nda_docs if d.doc_id.endswith("common_paper_mutual_nda"))


# ------------------------------------------------------------------------------------ clauses
def test_common_paper_nda_splits_into_its_numbered_sections(nda_docs):
    clauses = split_clauses(common_paper(nda_docs).text, "d", "nda_review")
    starts = [c.text.split(".")[0] for c in clauses]
    for number in ("1", "2", "3", "5", "6", "9", "10"):  # 11 (General) is over 1,500 characters
        assert number in starts, f"section {number} missing from {starts}"
    by_number = {c.text.split(".")[0]: c for c in clauses}
    assert by_number["9"].clause_type == "governing_law"
    assert by_number["5"].clause_type == "termination"
    assert by_number["3"].clause_type == "confidentiality"
    assert not any(c.text.startswith(("#", "Standard Terms", "|")) for c in clauses)
    assert all(120 <= len(c.text) <= 1500 and "{{" not in c.text for c in clauses)


def test_licence_texts_give_typed_clauses(licence_docs):
    clauses = [c for d in licence_docs for c in split_clauses(d.text, d.doc_id, d.source)]
    types = Counter(c.clause_type for c in clauses)
    assert len(clauses) > 1000
    for kind in ("limitation_of_liability", "warranty", "termination", "governing_law", "payment"):
        assert types[kind] >= 20, types
    liability = [c for c in clauses if c.clause_type == "limitation_of_liability"]
    assert (
        sum("liab" in c.text.lower() or "damage" in c.text.lower() for c in liability)
        / len(liability)
        > 0.95
    )


def test_classifier_weighs_heading_and_ignores_definitions():
    assert (
        classify_clause("Governing Law", "This Agreement is governed by the laws of Delaware.")
        == "governing_law"
    )
    assert (
        classify_clause("Governing Law", '"Affiliate" means any entity that controls a party.')
        == "other"
    )
    assert (
        classify_clause("", "The Supplier may terminate this Agreement on thirty days notice.")
        == "termination"
    )


# ---------------------------------------------------------------------------------- rulebooks
def test_packaged_rulebook_loads_all_431_rules(rulebook):
    assert len(rulebook.rules) == 431
    assert len(rulebook.files) == 51
    assert len({r.id for r in rulebook.rules}) == 431  # qualified ids are unique
    assert {r.severity for r in rulebook.rules} == {"high", "medium", "low"}  # critical -> high
    cap = rulebook.get("saas-vendor.liability-cap")
    assert cap.clause_type == "limitation_of_liability"
    assert cap.violated("The Vendor is liable for all damages.")
    assert not cap.violated("Vendor's liability shall not exceed the fees paid.")


BAD_REGEX = """\
name: broken
rules:
  - id: good-rule
    title: Fine
    severity: low
    why: ok
    suggestion: ok
    check: {kind: forbids_any, patterns: [fine]}
  - id: bad-regex-rule
    title: Broken pattern
    severity: high
    why: because
    suggestion: fix it
    check:
      kind: forbids_any
      patterns: ["unclosed (group"]
"""


def test_bad_regex_names_file_line_and_rule(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_REGEX)
    with pytest.raises(DataError) as err:
        load_rulebooks([str(path)], tmp_path)
    message = str(err.value)
    assert str(path) in message and "bad-regex-rule" in message and "patterns[0]" in message
    assert f"{path}:9:" in message  # the line where the rule starts


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (BAD_REGEX.replace("    why: because\n", ""), "missing required field `why`"),
        (BAD_REGEX.replace("severity: high", "severity: urgent"), "`severity` must be one of"),
        (
            BAD_REGEX.replace(
                "kind: forbids_any\n      patterns", "kind: sometimes\n      patterns"
            ),
            "check.kind",
        ),
        (BAD_REGEX.replace("    suggestion: fix it\n", ""), "needs a `suggestion` or a `fallback`"),
    ],
)
def test_malformed_rule_is_named(tmp_path, broken, expected):
    path = tmp_path / "book.yaml"
    path.write_text(broken)
    with pytest.raises(DataError, match="bad-regex-rule") as err:
        load_playbook(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_invalid_yaml_and_missing_file_are_data_errors(tmp_path):
    (tmp_path / "x.yaml").write_text("rules: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_rulebooks(["x.yaml"], tmp_path)
    with pytest.raises(DataError, match="rulebook not found"):
        load_rulebooks(["nope.yaml"], tmp_path)


# ------------------------------------------------------------------------------------ defects
def real_clauses(docs):
    return [c for d in docs for c in split_clauses(d.text, d.doc_id, d.source)]


def find_defect(rulebook, clauses, rule_ids, edit):
    for rule_id in rule_ids:
        rule = rulebook.get(rule_id)
        for clause in clauses:
            defect = inject_defect(clause.text, rule, random.Random(0))
            if defect is not None and defect.edit == edit:
                return rule, defect
    raise AssertionError(f"no real clause takes the edit {edit} for {rule_ids}")


@pytest.mark.parametrize(
    ("edit", "rule_ids"),
    [
        ("remove_liability_cap", ["saas-vendor.liability-cap", "software-licensor.liability-cap"]),
        ("make_liability_unlimited", ["dpa-processor.uncapped-breach-liability"]),
        ("add_silent_auto_renewal", ["saas-vendor.auto-renewal"]),
        (
            "one_sided_termination",
            ["tos-user.account-termination-any-reason", "saas-provider.termination-convenience"],
        ),
        ("one_sided_indemnity", ["saas-vendor.mutual-indemnification"]),
        ("drop_governing_law", ["consulting-msa.governing-law"]),
        ("stretch_number", ["saas-vendor.termination-notice", "nda-recipient.survival-too-long"]),
        ("stretch_notice_or_payment_terms", ["saas-vendor.termination-notice"]),
        ("weaken_confidentiality", ["nda-discloser.residuals-carve-out"]),
        ("unilateral_changes", ["tos-user.unilateral-changes"]),
    ],
)
def test_each_defect_edit_flips_its_rule(rulebook, nda_docs, licence_docs, edit, rule_ids):
    clauses = real_clauses(nda_docs) + real_clauses(licence_docs)
    rule, defect = find_defect(rulebook, clauses, rule_ids, edit)
    assert not rule.violated(defect.original)
    assert rule.violated(defect.edited)
    assert defect.edited != defect.original


def test_no_defect_on_a_clause_that_already_fails(rulebook):
    rule = rulebook.get("saas-vendor.liability-cap")
    assert (
        inject_defect(
            "The Vendor shall be liable for all losses of any kind whatsoever.",
            rule,
            random.Random(0),
        )
        is None
    )


# -------------------------------------------------------------------------------- generation
def small_settings(**changes) -> CurateSection:
    base = {
        "corpora": [
            ContractCorpus(kind="nda_review"),
            ContractCorpus(kind="licensedcode", max_documents=60),
        ],
        "target_pairs": 300,
    }
    return CurateSection(**{**base, **changes})


@pytest.fixture(scope="module")
def small_run(rulebook):
    settings = small_settings()
    docs = load_corpus(settings.corpora[0], HERE) + load_corpus(settings.corpora[1], HERE)
    pairs, _ = generate_pairs(docs, rulebook, settings)
    return settings, docs, pairs


def test_answers_parse_and_carry_the_labelled_rule(small_run, rulebook):
    _, _, pairs = small_run
    assert {p.task for p in pairs} == {"audit", "defect", "fix", "explain", "missing"}
    for p in pairs:
        assert p.clause and p.clause in p.instruction  # the instruction holds the clause text
        if p.task in ("audit", "defect", "missing"):
            audit = parse_audit(p.output)
            assert audit is not None, p.output
            assert audit.risk == p.severity if p.task != "missing" else audit.risk != "none"
            if p.rule_id:
                assert p.rule_id in audit.rule_ids
            for rule_id in audit.rule_ids:  # every finding is cross-checked by the rule's own regex
                assert rulebook.get(rule_id).violated(p.clause)
        if p.task == "fix":
            head, _, revised = p.output.partition("\n\nRevised clause:\n")
            assert parse_audit(head) is not None and revised
            assert not rulebook.get(p.rule_id).violated(revised)
        if p.task == "defect":
            assert p.verified_by == "construction" and p.edit


def test_phrasings_vary_within_each_task(small_run):
    _, _, pairs = small_run
    for task in ("audit", "defect", "fix", "explain", "missing"):
        openings = {p.instruction.split("\n")[0][:25] for p in pairs if p.task == task}
        assert len(openings) >= 4, (task, openings)


def test_caps_and_clean_share(small_run):
    settings, _, pairs = small_run
    rules = Counter(p.rule_id for p in pairs if p.rule_id)
    assert max(rules.values()) <= settings.max_rule_share * settings.target_pairs
    sources = Counter(p.source for p in pairs)
    assert max(sources.values()) <= settings.max_source_share * len(pairs)
    assert sum(p.clean for p in pairs) > 0
    assert len({p.instruction for p in pairs}) == len(pairs)


def test_same_seed_same_pairs_other_seed_other_pairs(small_run, rulebook):
    settings, docs, pairs = small_run
    again, _ = generate_pairs(docs, rulebook, settings)
    assert [p.row() for p in again] == [p.row() for p in pairs]
    other, _ = generate_pairs(docs, rulebook, settings.model_copy(update={"seed": 99}))
    assert [p.row() for p in other] != [p.row() for p in pairs]


def test_split_by_doc_id_keeps_documents_and_clauses_on_one_side(small_run):
    from legalbuild.data.split import unit_fraction  # the real split of the normalize stage

    _, _, pairs = small_run
    docs = {p.doc_id for p in pairs}
    val_docs = {d for d in docs if unit_fraction("legalbuild", ("group", d)) < 0.3}
    assert val_docs and len(val_docs) < len(docs)
    train_text = " ".join(p.instruction for p in pairs if p.doc_id not in val_docs)
    for p in pairs:  # no clause of a validation document is seen in training
        if p.doc_id in val_docs and p.task != "missing":
            assert p.clause not in train_text


# --------------------------------------------------------------------------------- the stage
def test_preview_and_input_files(tmp_path):
    from legalbuild.stages.curate import curate_input_files, preview_pairs

    recipe = Recipe(project={"name": "t"}, curate=small_settings())
    rows = preview_pairs(recipe, tmp_path / "recipe.toml", 5)
    assert len(rows) == 5
    assert set(rows[0]) >= {
        "instruction",
        "output",
        "doc_id",
        "source",
        "rule_id",
        "severity",
        "clause_type",
        "task",
        "verified_by",
    }
    files = curate_input_files(recipe, tmp_path / "recipe.toml")
    assert "saas-vendor.yaml" in {f.name for f in files["rulebooks"]}
    nda, licensedcode = ({f.name for f in paths} for paths in files["corpora"])  # recipe order
    assert "cc-by-4.0.LICENSE" in licensedcode and "common_paper_mutual_nda.md" in nda
    assert sum(f.suffix == ".LICENSE" for f in files["corpora"][1]) == 61


def test_user_folder_and_rulebook(tmp_path):
    from legalbuild.stages.curate import run

    (tmp_path / "contracts").mkdir()
    nda = load_corpus(ContractCorpus(kind="nda_review"), HERE)
    (tmp_path / "contracts" / "nda.md").write_text(common_paper(nda).text)
    (tmp_path / "rules.yaml").write_text(
        "name: house\nrules:\n  - id: no-residuals\n    title: Residuals clause\n    severity: high\n"
        "    why: It lets the recipient reuse what it remembers.\n    fallback: No residuals right applies.\n"
        "    check: {kind: forbids_any, patterns: [residual]}\n"
    )
    settings = CurateSection(
        corpora=[ContractCorpus(kind="folder", path="contracts", licence="CC-BY-4.0")],
        rulebooks=["rules.yaml"], target_pairs=20, max_rule_share=1.0,
    )  # fmt: skip
    ctx = stage_context(tmp_path, "curate", Recipe(project={"name": "t"}, curate=settings))
    out = ctx.out_dir
    metrics = run(ctx)
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert metrics["pairs"] == len(rows) > 0
    assert {r["rule_id"] for r in rows} <= {"house.no-residuals", None}
    assert all(r["doc_id"] == "folder:nda.md" for r in rows)
    card = json.loads((out / "card.json").read_text())
    assert card["sources"][0]["licence"] == "CC-BY-4.0"


@pytest.mark.slow
def test_default_settings_give_2000_to_5000_pairs(tmp_path):
    from legalbuild.stages.curate import run

    settings = CurateSection(
        corpora=[ContractCorpus(kind="licensedcode"), ContractCorpus(kind="nda_review")]
    )
    ctx = stage_context(tmp_path, "curate", Recipe(project={"name": "t"}, curate=settings))
    metrics = run(ctx)
    assert 2000 <= metrics["pairs"] <= 5000
    card = json.loads((ctx.out_dir / "card.json").read_text())
    assert card["shares"]["max_rule"] <= settings.max_rule_share + 1e-9
    assert card["shares"]["max_source"] <= settings.max_source_share + 1e-9
    assert (
        card["shares"]["max_severity"]
        <= settings.max_severity_share * settings.target_pairs / card["pairs"] + 1e-9
    )
    assert sum(card["counts"]["verified_by"].values()) == card["pairs"]
    assert "CC-BY-4.0" in (ctx.out_dir / "card.md").read_text()


# ------------------------------------------------------------------------------- data hygiene
def test_every_instruction_template_reads_cleanly_for_every_playbook(rulebook):
    """Each template filled with each playbook's perspective: no doubled word ("I'm reviewing
    reviewing"), no placeholder left, no stray spacing or punctuation, balanced parentheses."""
    from legalbuild.curation import pairs

    templates = [
        t
        for name in ("AUDIT", "DEFECT", "FIX", "EXPLAIN", "MISSING")
        for t in getattr(pairs, f"{name}_TEMPLATES")
    ]
    first_rule = {}
    for rule in rulebook.rules:
        first_rule.setdefault(rule.playbook, rule)
    assert len(first_rule) == 51
    problems = []
    for playbook, rule in sorted(first_rule.items()):
        view = pairs.perspective(rule)
        if not view.startswith("reviewing") or " — " in view:
            problems.append(f"{playbook}: perspective {view!r}")
        for template in templates:
            text = pairs.fill(
                template,
                clause="CLAUSE",
                type="limitation of liability",
                playbook=playbook,
                perspective=view,
                title="No cap",
                rule_id="x.no-cap",
                severity="high",
                contract="CONTRACT",
            )
            prose = text.replace("CLAUSE", "").replace("CONTRACT", "")
            bad = [
                ("doubled word", re.search(r"\b(\w+)[ ,]+\1\b", prose, re.I)),
                ("placeholder", re.search(r"[{}]", prose)),
                ("spacing", re.search(r"  |\s[,.;:)]|\(\s|,,|\.\.(?!\.)", prose)),
                ("parentheses", prose.count("(") != prose.count(")")),
            ]
            problems += [f"{playbook}: {what}: {text[:90]!r}" for what, hit in bad if hit]
    assert problems == []


def test_the_doubled_word_check_can_fail():
    assert re.search(r"\b(\w+)[ ,]+\1\b", "I'm reviewing reviewing, as licensee", re.I)


# ------------------------------------------------------------------- beyond the rulebook's labels
def test_a_plain_share_of_audits_is_asked_without_playbook_or_rule_list(rulebook):
    settings = small_settings(plain_share=1.0, target_pairs=150)
    docs = load_corpus(settings.corpora[0], HERE) + load_corpus(settings.corpora[1], HERE)
    pairs, _ = generate_pairs(docs, rulebook, settings)
    audits = [p for p in pairs if p.task == "audit"]
    assert audits and all(
        p.instruction.startswith("Audit this contract clause:\n\n") for p in audits
    )
    assert not any(
        "Rules to check:" in p.instruction or "Playbook" in p.instruction for p in audits
    )
    clean = [p for p in audits if p.clean]
    assert clean and all("No red flag found in this" in p.output for p in clean)
    assert not any("checks that apply" in p.output for p in clean)  # no list was shown
    defects = [p for p in pairs if p.task == "defect"]
    assert defects and all("Rules to check:" in p.instruction for p in defects)  # audits only


LABELLED_CLAUSES = [  # written for the tests, in CUAD's clause-level shape
    ("a1", "k1", "This Agreement shall automatically renew for successive one-year terms unless "
     "either party gives notice of non-renewal.", ["Renewal Term"]),
    ("a2", "k1", "This Agreement shall be governed by the laws of the State of New York.",
     ["Governing Law"]),
    ("a3", "k2", "The Licensee may use the Software at its facilities worldwide.",
     ["License Grant"]),
    ("a4", "k2", "Neither party may assign this Agreement without the prior written consent of "
     "the other party.", ["Anti-Assignment"]),
]  # fmt: skip


def labelled_file(tmp_path: Path) -> Path:
    rows = [{"id": i, "document": d, "text": t, "categories": c} for i, d, t, c in LABELLED_CLAUSES]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labelled_clauses_become_pairs_whose_answers_come_from_the_labels(rulebook, tmp_path):
    from legalbuild.curation import cuad
    from legalbuild.curation.labelled import labelled_pairs
    from legalbuild.recipe.data import LabelledSource

    path = labelled_file(tmp_path)
    plain = LabelledSource(name="mine", path=str(path), plain_share=1.0, pairs=10)
    pairs = labelled_pairs(plain, path, rulebook.by_playbook(), seed=3)
    assert len(pairs) == 4 and {p.task for p in pairs} == {"labelled"}
    by_clause = {p.clause: p for p in pairs}
    for _, doc, text, cats in LABELLED_CLAUSES:
        p = by_clause[text]
        assert p.instruction == f"Audit this contract clause:\n\n{text}"
        assert p.output == cuad.answer_for(cats) and p.doc_id == f"mine:{doc}"
        assert p.clean == (not cuad.CATEGORIES[cats[0]].red_flag)
    # asked with a playbook: its applicable rules are listed and a listed rule that means the
    # red flag is cited instead of the table's default finding
    asked = LabelledSource(
        name="mine", path=str(path), plain_share=0.0, playbooks=["saas-vendor"], pairs=10
    )
    renewal = next(
        p for p in labelled_pairs(asked, path, rulebook.by_playbook(), 3) if "renew" in p.clause
    )
    assert (
        "Playbook: saas-vendor." in renewal.instruction and "Rules to check:" in renewal.instruction
    )
    audit = parse_audit(renewal.output)
    assert audit.rule_ids == ["saas-vendor.auto-renewal"] and audit.clause_type == "Renewal Term"
    assert "- saas-vendor.auto-renewal:" in renewal.instruction
    with pytest.raises(Exception, match="unknown playbook"):
        labelled_pairs(asked.model_copy(update={"playbooks": ["nope"]}), path, {}, 3)


def test_the_curate_stage_adds_labelled_pairs_and_credits_them(tmp_path):
    from legalbuild.stages import curate

    labelled_file(tmp_path)
    recipe = Recipe.model_validate(
        {
            "project": {"name": "t"},
            "curate": {
                "corpora": [{"kind": "nda_review"}],
                "target_pairs": 20,
                "labelled": [{"name": "mine", "path": "labelled.jsonl", "pairs": 3}],
            },
        }
    )
    ctx = stage_context(tmp_path, "curate", recipe)
    metrics = curate.run(ctx)
    rows = [json.loads(x) for x in (ctx.out_dir / "pairs.jsonl").read_text().splitlines()]
    assert sum(r["task"] == "labelled" for r in rows) == 3 and metrics["tasks"]["labelled"] == 3
    card = json.loads((ctx.out_dir / "card.json").read_text())
    entry = next(s for s in card["sources"] if s["name"] == "mine")
    assert entry["pairs"] == 3 and "CUAD v1, The Atticus Project" in entry["attribution"]
    # the key holds the file's digest, not its path
    keys = curate.key_inputs(recipe, tmp_path / "recipe.toml")["settings"]["labelled"][0]
    assert "path" not in keys and len(keys["digest"]) == 64
