"""`legalbuild audit` on whole contracts: real PDF (fpdf2), DOCX (python-docx), Markdown and text
files made here, cut with curation's splitter; the concurrent client against a real HTTP server
speaking the OpenAI routes (tests/helpers.py OpenAIStub: the point is the client's order,
concurrency, retries and Ctrl-C); the outputs read back (DOCX comments with python-docx, JSON
against its schema, HTML parsed and rendered in headless Chromium). The real-vLLM run of the same
command is in test_serve.py, on that module's one server."""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from helpers import (
    CONTRACT,
    REPO,
    STUB_FLAGS,
    OpenAIStub,
    chromium,
    contract_clauses,
    contract_markdown,
    hostile_docx,
    render_in_chromium,
    write_contract_docx,
    write_contract_pdf,
    write_recipe,
)

from legalbuild.contract.client import (
    Endpoint,
    EndpointUnreachable,
    audit_concurrently,
    checked_url,
)
from legalbuild.contract.document import read_document
from legalbuild.contract.record import SCHEMA_PATH
from legalbuild.contract.split import document_clauses, read_clauses
from legalbuild.curation.clauses import document_paragraphs
from legalbuild.errors import DataError, LegalbuildError
from legalbuild.processes import free_port

CLAUSES = contract_clauses()
HEADINGS = [h.split(". ", 1)[1] for h, clauses in CONTRACT for _ in clauses]
NUMBERS = [c.split(" ", 1)[0] for c in CLAUSES]
FLAGGED = [i for i, c in enumerate(CLAUSES) if any(k in c for k in STUB_FLAGS)]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", **(env or {})}
    command = [sys.executable, "-m", "legalbuild", "audit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)


# ------------------------------------------------------------------------------- reading, splitting
def test_the_splitter_keeps_line_spans_and_numbers_through_markup():
    text = (
        "# AGREEMENT\n\n## 2. Fees\n\n2.1 The Customer pays <!-- a note\nover two lines --> the\n"
        "fees within thirty days.\n\n| a | b |\n\nThe Provider may:\n\n(a) raise the fees; and\n\n"
        "(b) change the Services on thirty days notice.\n"
    )
    paragraphs = document_paragraphs(text)
    assert [(p.number, p.heading, p.first_line, p.last_line) for p in paragraphs] == [
        ("2.1", "Fees", 4, 6),
        ("2", "Fees", 10, 14),  # the list items are folded into the sentence they continue
    ]
    assert paragraphs[0].text == "2.1 The Customer pays the fees within thirty days."
    lines = text.split("\n")
    assert lines[4].startswith("2.1") and lines[14].startswith("(b)")


@pytest.mark.parametrize("kind", ["pdf", "docx", "md", "txt"])
def test_every_format_gives_the_clauses_in_order_with_number_heading_and_location(tmp_path, kind):
    path = tmp_path / f"contract.{kind}"
    if kind == "pdf":
        write_contract_pdf(path)
    elif kind == "docx":
        write_contract_docx(path)
    else:
        path.write_text(contract_markdown(), encoding="utf-8")
    document = read_document(path)
    clauses = document_clauses(document)
    assert [c.text for c in clauses] == CLAUSES  # the PDF's wrapped lines joined back
    assert [c.number for c in clauses] == NUMBERS
    assert [c.heading for c in clauses] == HEADINGS
    assert [c.index for c in clauses] == list(range(1, len(CLAUSES) + 1))
    where = [c.first for c in clauses]
    if kind == "pdf":  # one page per section
        assert where == [i + 1 for i, (_, cs) in enumerate(CONTRACT) for _ in cs]
    elif kind == "docx":  # indexes into python-docx's paragraphs
        import docx

        paragraphs = docx.Document(str(path)).paragraphs
        assert [paragraphs[i].text for i in where] == CLAUSES
    else:
        lines = path.read_text().split("\n")
        assert [lines[i - 1] for i in where] == CLAUSES


def test_docx_automatic_numbering_and_heading_styles_are_kept(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Payment Terms", level=1)
    for text in ("The Customer shall pay each invoice within thirty days of its date.",
                 "The Provider may increase the fees at any time in its sole discretion."):  # fmt: skip
        document.add_paragraph(text, style="List Number")
    document.save(str(tmp_path / "n.docx"))
    clauses = document_clauses(read_document(tmp_path / "n.docx"))
    assert [(c.number, c.heading, c.first) for c in clauses] == [
        ("1", "Payment Terms", 1),
        ("2", "Payment Terms", 2),
    ]
    assert clauses[1].text.startswith("2. The Provider may increase")


def test_stdin_and_other_encodings(tmp_path, monkeypatch):
    text = contract_markdown()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert [c.text for c in document_clauses(read_document("-"))] == CLAUSES
    (tmp_path / "utf16.txt").write_bytes(text.encode("utf-16"))  # with its byte-order mark
    assert len(document_clauses(read_document(tmp_path / "utf16.txt"))) == len(CLAUSES)
    (tmp_path / "mac.txt").write_bytes(text.replace("\n", "\r").encode())  # old Mac line ends
    assert [c.first for c in document_clauses(read_document(tmp_path / "mac.txt"))] == [
        c.first for c in document_clauses(read_document(tmp_path / "utf16.txt"))
    ]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(
        ("Le Fournisseur doit payer la redevance annuelle à échéance.\n").encode("cp1252")
    )
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_document(latin)
    assert "--encoding cp1252" in info.value.hint
    assert "redevance annuelle à échéance" in read_document(latin, encoding="cp1252").text


def pdf_bytes(text: bool = True) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if text:
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, CLAUSES[0])
    else:
        pdf.rect(10, 10, 100, 100)  # a page with no text layer, like a scan
    return bytes(pdf.output())


def encrypted_pdf(user_password: str) -> bytes:
    import pypdf

    writer = pypdf.PdfWriter()
    writer.append(pypdf.PdfReader(io.BytesIO(pdf_bytes())))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def zip_of(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message", "hint"),
    [
        ("locked.pdf", encrypted_pdf("secret"), "encrypted with a password", "qpdf --decrypt"),
        ("scan.pdf", pdf_bytes(text=False), "no text layer.*needs OCR", "ocrmypdf"),
        ("fake.pdf", b"hello, this is not a PDF at all", "not a PDF", "check"),
        ("empty.txt", b"  \n\n", "the file is empty", "contract"),
        ("blob.txt", b"\x00\x01\x02binary\x00" * 10, "binary file", ".docx"),
        ("sheet.docx", zip_of("xl/workbook.xml", b"<workbook/>"), "not a Word document", "Word"),
        ("text.docx", b"just text, named .docx", "not a DOCX file", "Word"),
        ("old.doc", b"\xd0\xcf\x11\xe0 legacy", "legacy Word .doc", "convert-to docx"),
        ("nothing.md", b"# Title\n\nShort.\n", "no clause found", "contract"),
    ],
    ids=["encrypted", "no-text-layer", "not-a-pdf", "empty", "binary", "zip-not-docx",
         "text-named-docx", "legacy-doc", "no-clause"],
)  # fmt: skip
def test_bad_input_is_a_data_error_with_a_hint(tmp_path, name, data, message, hint):
    path = tmp_path / name
    path.write_bytes(data)
    result = cli(str(path), "--model", "m", "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3, result.stderr
    assert re.search(message, result.stderr.replace("\n", " ")), result.stderr
    assert hint in result.stderr


def test_a_pdf_encrypted_without_a_user_password_is_read(tmp_path):
    (tmp_path / "perm.pdf").write_bytes(encrypted_pdf(""))  # permissions only: opens for anyone
    assert document_clauses(read_document(tmp_path / "perm.pdf"))[0].text == CLAUSES[0]


# ------------------------------------------------------------------------------- hostile files
# Every hostile kind is also run as a measured process (exit 3, seconds, peak RSS) in test_fuzz.py.
def test_xml_external_entities_stay_unresolved(tmp_path):
    from legalbuild.contract.docx_in import open_docx

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-FROM-THE-DISK")
    path = hostile_docx(tmp_path / "xxe.docx", "xxe", secret)
    with pytest.raises(DataError, match="has a DTD") as info:
        read_document(path)
    assert "SECRET" not in str(info.value)
    # python-docx (the commented copy) never resolves it either
    paragraphs = open_docx(path.read_bytes(), "xxe.docx").paragraphs
    assert any("shall pay" in p.text for p in paragraphs)
    assert not any("SECRET" in p.text for p in paragraphs)


def test_reading_stops_at_the_clause_cap(tmp_path):
    path = hostile_docx(tmp_path / "long.docx", "empty-paragraphs-3m")  # 28 clauses, 3M more
    started = time.perf_counter()
    document, clauses = read_clauses(path, max_clauses=20)
    assert time.perf_counter() - started < 10
    assert len(clauses) > 20 and not document.complete
    assert len(document.units) < 2_000  # read: a few hundred of 3 million paragraphs
    with pytest.raises(DataError, match="more than 100,000 paragraphs") as info:
        read_clauses(path)
    assert "--max-clauses" in info.value.hint


def test_an_audit_cut_at_the_cap_writes_its_clauses_not_the_contract(tmp_path):
    import docx

    path = hostile_docx(tmp_path / "long.docx", "empty-paragraphs-3m")
    outs = [tmp_path / "r.docx", tmp_path / "r.json"]
    with OpenAIStub() as stub:
        result = cli(str(path), "--endpoint", stub.url, "--model", "stub", "--max-clauses", "5",
                     *(f"--out={o}" for o in outs))  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(outs[1].read_text())
    assert record["document"]["complete"] is False and len(record["clauses"]) == 5
    assert "the clauses with" in result.stderr
    texts = [p.text for p in docx.Document(str(outs[0])).paragraphs]
    assert texts[0] == "Audit of " + str(path) and len(texts) < 20


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://127.0.0.1:99999/v1", "ftp://host/v1", "http://exa mple/v1",
            "http:///v1", "http://h:0/v1", "http://ho\tst/v1"],
)  # fmt: skip
def test_a_malformed_endpoint_is_refused_before_any_request(tmp_path, url):
    (tmp_path / "c.md").write_text(contract_markdown())
    with pytest.raises(DataError, match="not a server URL"):
        checked_url(url)
    result = cli(str(tmp_path / "c.md"), "--model", "m", "--endpoint", url)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert "--endpoint" in result.stderr and "hint:" in result.stderr


def test_good_endpoints_pass_the_check():
    for url in ("http://127.0.0.1:8000/v1", "https://api.example.com/v1", "http://[::1]:8000",
                "http://localhost", "http://user:pw@host.internal:443/v1/"):  # fmt: skip
        assert checked_url(url) == url


# ------------------------------------------------------------------------------- the client
def test_answers_keep_document_order_at_bounded_concurrency():
    # later clauses answer first: arrival order is the reverse of document order
    delays = {c: 0.1 + 0.08 * (len(CLAUSES) - i) for i, c in enumerate(CLAUSES)}
    done_order = []
    with OpenAIStub(delay=delays.get) as stub:
        outcome = audit_concurrently(
            CLAUSES, None, Endpoint(stub.url, "stub", "system"), concurrency=3,
            on_done=lambda i, r: done_order.append(i),
        )  # fmt: skip
    assert [r["clause"] for r in outcome.results] == CLAUSES
    assert stub.peak == 3 and not outcome.interrupted
    assert done_order != sorted(done_order)  # they did finish out of order
    risks = [r["risk"] for r in outcome.results]
    assert [risks[i] for i in FLAGGED] == ["medium", "low", "high"] and risks.count("none") == 4


def test_failed_requests_are_retried_then_reported_for_their_clause_only():
    flaky, broken, rejected = CLAUSES[0], CLAUSES[1], CLAUSES[2]

    def fail(clause: str, attempt: int) -> int | None:
        if clause == flaky and attempt <= 2:
            return 503  # twice, then it answers
        if clause == broken:
            return 500  # always
        if clause == rejected:
            return 400  # the server refuses this request: no retry
        return None

    with OpenAIStub(fail=fail) as stub:
        outcome = audit_concurrently(
            CLAUSES, None, Endpoint(stub.url, "stub", "system"), retries=2, backoff_s=0.05
        )
    by_clause = {r["clause"]: r for r in outcome.results}
    assert by_clause[flaky]["attempts"] == 3 and by_clause[flaky]["error"] is None
    assert by_clause[broken]["attempts"] == 3 and "HTTP 500" in by_clause[broken]["error"]
    assert by_clause[rejected]["attempts"] == 1 and "HTTP 400" in by_clause[rejected]["error"]
    assert stub.attempts[rejected] == 1
    others = [r for r in outcome.results if r["clause"] not in (broken, rejected)]
    assert len(others) == len(CLAUSES) - 2 and all(r["answer"] for r in others)


def test_unreachable_endpoint_names_the_serve_command(tmp_path):
    with pytest.raises(EndpointUnreachable, match="cannot reach"):
        audit_concurrently(["x"], None, Endpoint(f"http://127.0.0.1:{free_port()}", "m", "s"))
    port = free_port()
    recipe = write_recipe(tmp_path / "r.toml", serve={"port": port})
    (tmp_path / "c.md").write_text(contract_markdown())
    result = cli(str(tmp_path / "c.md"), "--recipe", str(recipe))
    assert result.returncode == 7, result.stderr
    flat = " ".join(result.stderr.split())
    assert f"cannot reach http://127.0.0.1:{port}/v1" in flat  # the recipe's [serve] port
    assert f"`legalbuild serve {recipe}`" in flat and "--serve" in flat


# ------------------------------------------------------------------------------- outputs
class Resources(html.parser.HTMLParser):
    """Every tag that could load something from elsewhere."""

    def __init__(self):
        super().__init__()
        self.external: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if (
                name in ("src", "href", "action", "data", "poster")
                and value
                and not value.startswith("#")
            ):
                self.external.append(f"<{tag} {name}={value}>")
        if tag in ("script", "link", "iframe", "object", "embed", "img"):
            self.external.append(f"<{tag}>")


@pytest.mark.parametrize("kind", ["docx", "pdf"])
def test_cli_writes_commented_docx_html_md_and_json(tmp_path, kind):
    import docx
    import jsonschema

    source = tmp_path / f"contract.{kind}"
    write_contract_docx(source) if kind == "docx" else write_contract_pdf(source)
    outs = [tmp_path / f"out.{ext}" for ext in ("docx", "html", "md", "json")]
    with OpenAIStub() as stub:
        result = cli(
            str(source), "--endpoint", stub.url, "--model", "stub",
            *[arg for out in outs for arg in ("--out", str(out))],
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the terminal summary is sorted by severity
    table = [ln for ln in result.stdout.splitlines() if ln.startswith("│")]
    assert [ln.split("│")[1].strip() for ln in table[:4]] == ["high", "medium", "low", "none"]
    record = json.loads(outs[3].read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    assert [r["text"] for r in record["clauses"]] == CLAUSES
    assert record["summary"] == {"high": 1, "medium": 1, "low": 1, "none": 4, "unparsed": 0,
                                 "failed": 0, "not_audited": 0}  # fmt: skip
    assert record["clauses"][FLAGGED[-1]]["findings"][0]["rule_id"] == "liability.uncapped"

    reviewed = docx.Document(str(outs[0]))
    comments = list(reviewed.comments)
    assert len(comments) == len(FLAGGED)
    assert "Uncapped liability [liability.uncapped] (high)" in comments[-1].text
    commented = [p.text for p in reviewed.paragraphs if p._p.xpath(".//w:commentRangeStart")]
    if kind == "docx":  # the contract itself, comments on the flagged paragraphs
        assert [p.text for p in reviewed.paragraphs] == [
            p.text for p in docx.Document(str(source)).paragraphs
        ]
        assert commented == [CLAUSES[i] for i in FLAGGED]
    else:  # a new document of the clauses
        assert [c.split("  [page")[0] for c in commented] == [CLAUSES[i] for i in FLAGGED]

    page = outs[1].read_text()
    parser = Resources()
    parser.feed(page)
    assert parser.external == [] and "style" in parser.tags
    assert page.count('class="badge high"') >= 2 and "Summary by severity" in page
    assert "## 5. 4.1 Limitation of Liability (page 4)" in outs[2].read_text() or kind == "docx"


def test_html_renders_in_headless_chromium_without_console_errors(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    (tmp_path / "c.md").write_text(contract_markdown())
    with OpenAIStub() as stub:
        result = cli(str(tmp_path / "c.md"), "--endpoint", stub.url, "--model", "stub",
                     "--out", str(tmp_path / "a.html"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    shot = tmp_path / "audit.png"
    assert render_in_chromium(browser, tmp_path / "a.html", shot, tmp_path / "profile") == []
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_large_document_warns_and_max_clauses_caps(tmp_path):
    clause = "The Supplier shall deliver the goods listed in Schedule {} within ten business days."
    (tmp_path / "big.txt").write_text("\n\n".join(clause.format(i) for i in range(150)))
    with OpenAIStub() as stub:
        result = cli(str(tmp_path / "big.txt"), "--endpoint", stub.url, "--model", "stub",
                     "--max-clauses", "120", "--out", str(tmp_path / "a.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stderr.split())
    assert "150 clauses (auditing the first 120: --max-clauses)" in flat
    assert "warning: 120 clauses: about" in flat and "min" in flat
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["document"]["clauses"] == 150 and len(record["clauses"]) == 120


def test_ctrl_c_stops_and_still_writes_what_finished(tmp_path):
    from legalbuild.processes import spawn_group

    (tmp_path / "c.md").write_text(contract_markdown())
    out = tmp_path / "a.json"
    delays = {c: 0.3 if i < 2 else 30.0 for i, c in enumerate(CLAUSES)}
    with OpenAIStub(delay=delays.get) as stub:
        argv = [sys.executable, "-m", "legalbuild", "audit", str(tmp_path / "c.md"),
                "--endpoint", stub.url, "--model", "stub", "--concurrency", "2", "--out", str(out)]  # fmt: skip
        process = spawn_group(argv, {**os.environ, "PYTHONPATH": str(REPO)})  # SIGINT at default
        deadline = time.monotonic() + 60
        while sum(stub.attempts.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)  # two answered, the next two hang
        assert sum(stub.attempts.values()) >= 4
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
    record = json.loads(out.read_text())
    assert record["interrupted"] is True
    statuses = [r["status"] for r in record["clauses"]]
    assert statuses[:2] == ["audited", "audited"] and set(statuses[2:]) == {"not_audited"}


def test_recipe_gives_endpoint_model_prompt_and_the_locked_model_key(tmp_path):
    from legalbuild.contract.run import resolve

    recipe = write_recipe(
        tmp_path / "r.toml", serve={"port": 8123, "served_model_name": "legal-x"},
        data={"sources": [{"name": "x", "path": "x.jsonl"}], "system_prompt": "Be careful."},
    )  # fmt: skip
    (tmp_path / "r.lock").write_text(f'version = 1\n[stages.merge]\nkey = "{"ab" * 32}"\n')
    asked = resolve(recipe, None, None, None, serve=False)
    assert (asked.url, asked.model, asked.system_prompt) == (
        "http://127.0.0.1:8123/v1",
        "legal-x",
        "Be careful.",
    )
    assert asked.recipe_key == "ab" * 32
    assert resolve(recipe, "other", "http://h:1", None, serve=False).model == "other"
    with pytest.raises(LegalbuildError, match="--serve needs --recipe"):
        resolve(None, "m", None, None, serve=True)
