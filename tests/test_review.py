"""`legalbuild review`: the page served by the real command (a subprocess), driven in Debian's
Chromium by Playwright, against the OpenAI stub (tests/helpers.py; its findings are known) and,
slow, against a real vLLM serving a tiny model taught the stub's answers (the page starts that
server itself). The downloads are read back: the DOCX with python-docx (comments, and the
tracked change as w:del/w:ins), the JSON against the audit schema. Hostile uploads answer 4xx with
their message while the same server goes on serving; reviews reopen after a restart; a public
bind asks for the API key."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import (
    REPO,
    OpenAIStub,
    build_servable_base,
    chromium,
    contract_clauses,
    contract_markdown,
    recipe_with_merged_model,
    stub_answer,
    teach_tiny_model,
    write_contract_docx,
    write_contract_pdf,
    write_recipe,
)

from legalbuild.contract.record import SCHEMA_PATH
from legalbuild.processes import free_port

BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
EDITED = "The Supplier's total liability is capped at the fees paid in the twelve months before the claim."
API = {"X-Legalbuild": "1"}
LIABILITY, FEES, RENEWAL = 5, 2, 4  # clause indexes of the stub's three findings


class Page:
    """`legalbuild review` as a user starts it, in its own session; `stop()` sends Ctrl-C."""

    def __init__(self, recipe: Path, reviews: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = reviews.parent / f"page-{self.port}.log"
        argv = [sys.executable, "-m", "legalbuild", "review", str(recipe), "--port",
                str(self.port), "--reviews", str(reviews), *args]  # fmt: skip
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            # the test's own cache, not the caller's (.ci/run exports LEGALBUILD_CACHE)
            "LEGALBUILD_CACHE": str(reviews.parent / "cache"),
            **(env or {}),
        }
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )

    def wait(self, timeout: float = 120, host: str = "127.0.0.1") -> Page:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                httpx.get(f"http://{host}:{self.port}/", timeout=2)
                return self
            except httpx.TransportError:
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.3)

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise
        return self.log.read_text()


def upload(url: str, name: str, data: bytes, playbook: str = ""):
    import httpx

    headers = {**API, "X-Filename": name}
    return httpx.post(
        f"{url}/api/reviews?playbook={playbook}", content=data, headers=headers, timeout=60
    )


def wait_done(url: str, review_id: str, timeout: float = 120) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{url}/api/reviews/{review_id}/progress").json()
        if state["status"] not in ("queued", "running"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stub():
    with OpenAIStub() as server:
        yield server


@pytest.fixture
def stub_page(tmp_path, stub):
    recipe = write_recipe(tmp_path / "recipe.toml")
    page = Page(recipe, tmp_path / "reviews", "--endpoint", stub.url, "--model", "stub")
    yield page.wait()
    page.stop()


@pytest.fixture(scope="module")
def browser():
    found = chromium()
    if found is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=found, args=BROWSER_FLAGS)
        yield launched
        launched.close()


# ------------------------------------------------------------------------------ in a browser
def review_in_browser(browser, url: str, contract: Path, tmp_path: Path) -> dict[str, Path]:
    """What a reviewer does: upload, watch the findings arrive, filter, accept an edited fix and
    reject another, download everything. Returns the downloads by name."""
    page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.set_input_files("#file", str(contract))
    page.click("#upload-button")
    page.wait_for_url("**/reviews/r-*")
    page.wait_for_selector('#progress[data-status="done"]', timeout=600_000)
    assert "7 of 7 clauses answered" in page.inner_text("#progress-text")
    cards = page.locator("article.finding")
    assert cards.count() == 3
    # worst first, and each flagged clause highlighted by its severity
    assert [c.get_attribute("data-severity") for c in cards.all()] == ["high", "medium", "low"]
    assert "risk-high" in page.get_attribute(f"#clause-{LIABILITY}", "class")
    assert "risk-low" in page.get_attribute(f"#clause-{RENEWAL}", "class")

    visible = page.locator("article.finding:not(.hidden)")
    page.select_option("#filter-severity", "medium")
    assert visible.count() == 1 and visible.first.get_attribute("data-clause") == str(FEES)
    page.select_option("#filter-severity", "")
    page.select_option("#filter-rule", "renewal.auto")
    assert visible.count() == 1 and page.inner_text("#shown") == "showing 1 of 3 findings"
    page.select_option("#filter-rule", "")
    assert visible.count() == 3

    # a finding scrolls to its clause, a clause to its finding
    page.click(f"#finding-{LIABILITY}-1 .goto")
    page.wait_for_selector(f"#clause-{LIABILITY}.flash")
    page.click(f"#clause-{RENEWAL}")
    page.wait_for_selector(f"#finding-{RENEWAL}-1.flash")

    page.fill(f"#finding-{LIABILITY}-1 textarea", EDITED)
    page.click(f'#finding-{LIABILITY}-1 button[data-decision="accept"]')
    page.wait_for_selector(f'#finding-{LIABILITY}-1[data-state="accepted"]')
    page.click(f'#finding-{FEES}-1 button[data-decision="reject"]')
    page.wait_for_selector(f'#finding-{FEES}-1[data-state="rejected"]')
    assert page.inner_text(f"#clause-{LIABILITY} ins") == EDITED
    page.evaluate(
        "window.scrollTo(0, 0); document.querySelectorAll('.pane').forEach(p => p.scrollTop = 0)"
    )
    page.wait_for_selector(".flash", state="detached")
    page.screenshot(path=str(tmp_path / "review.png"))
    if os.environ.get("LEGALBUILD_UPDATE_SCREENSHOT"):  # docs/review.png, in 64 colours
        from PIL import Image

        shot = Image.open(tmp_path / "review.png").convert("RGB").quantize(colors=64)
        shot.save(REPO / "docs" / "review.png", optimize=True)

    downloads = {}
    for name in ("reviewed.docx", "report.html", "record.json"):
        with page.expect_download() as info:
            page.click(f'a[href$="/download/{name}"]')
        downloads[name] = tmp_path / f"downloaded-{name}"
        info.value.save_as(downloads[name])
    assert errors == []
    page.close()
    return downloads


def check_downloads(downloads: dict[str, Path], original: Path) -> None:
    import docx
    import jsonschema

    reviewed = docx.Document(str(downloads["reviewed.docx"]))
    comments = [c.text for c in reviewed.comments]
    assert len(comments) == 2  # the fee finding was rejected
    assert "Uncapped liability [liability.uncapped]" in comments[1]
    assert "Accepted in review" in comments[1] and "Automatic renewal" in comments[0]
    assert not any("Unilateral fee increase" in c for c in comments)
    liability = contract_clauses()[LIABILITY - 1]
    changed = [p._p for p in reviewed.paragraphs if p._p.xpath(".//w:ins")]
    assert len(changed) == 1
    assert "".join(changed[0].xpath(".//w:del//w:delText/text()")) == liability
    assert "".join(changed[0].xpath(".//w:ins//w:t/text()")) == f"4.1 {EDITED}"
    assert changed[0].xpath(".//w:ins/@w:author") == ["legalbuild review"]
    # nothing else of the contract changed
    before = [p.text for p in docx.Document(str(original)).paragraphs]
    after = [p.text for p in reviewed.paragraphs]
    assert [a for a, b in zip(after, before, strict=True) if a != b] == [""]

    record = json.loads(downloads["record.json"].read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    rows = {r["index"]: r for r in record["clauses"]}
    assert rows[FEES]["findings"] == [] and rows[FEES]["risk"] == "none"
    assert rows[LIABILITY]["findings"][0]["suggested_clause"] == EDITED
    assert (record["summary"]["high"], record["summary"]["low"], record["summary"]["none"]) == (
        1,
        1,
        5,
    )
    page = downloads["report.html"].read_text()
    assert EDITED.replace("'", "&#x27;") in page and "Unilateral fee increase" not in page


def test_a_reviewer_uploads_filters_decides_and_downloads(browser, stub_page, tmp_path):
    contract = write_contract_docx(tmp_path / "contract.docx")
    downloads = review_in_browser(browser, stub_page.url, contract, tmp_path)
    check_downloads(downloads, contract)
    assert (tmp_path / "review.png").stat().st_size > 30_000


# ------------------------------------------------------------------------------ hostile uploads
def docx_with_document_xml(tmp_path: Path, transform) -> bytes:
    """The test contract as a DOCX whose word/document.xml went through `transform`."""
    source = write_contract_docx(tmp_path / "base.docx")
    out = io.BytesIO()
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, transform(data) if item.filename == "word/document.xml" else data)
    return out.getvalue()


def with_dtd(dtd: str, reference: str):
    def transform(xml: bytes) -> bytes:
        head, _, body = xml.partition(b"?>")
        body = body.replace(b"<w:t>1.1 ", f"<w:t>{reference} 1.1 ".encode(), 1)
        return head + b"?>" + f"<!DOCTYPE w:document [{dtd}]>".encode() + body

    return transform


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def flate_bomb_pdf(unpacked: int = 80 * 2**20) -> bytes:
    """A one-page PDF whose content stream inflates to `unpacked` bytes (pypdf stops at 75 MB)."""
    import zlib

    packer = zlib.compressobj(9)
    stream = b"".join(packer.compress(b"\0" * 2**20) for _ in range(unpacked // 2**20))
    stream += packer.flush()
    return (
        b"%PDF-1.4\n1 0 obj <</Type/Catalog/Pages 2 0 R>> endobj\n"
        b"2 0 obj <</Type/Pages/Kids[3 0 R]/Count 1>> endobj\n"
        b"3 0 obj <</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Contents 4 0 R>> endobj\n"
        + f"4 0 obj <</Length {len(stream)}/Filter/FlateDecode>> stream\n".encode()
        + stream
        + b"\nendstream endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
    )


def pdf_bytes(tmp_path: Path, name: str, build) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    build(pdf)
    pdf.output(str(tmp_path / name))
    return (tmp_path / name).read_bytes()


def encrypted(pdf) -> None:
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, contract_clauses()[0])


def hostile_uploads(tmp_path: Path) -> list[tuple[str, bytes, int, str]]:
    """(file name, bytes, the status the page answers, words of its message)."""
    xxe = with_dtd('<!ENTITY xxe SYSTEM "file:///etc/passwd">', "&xxe;")
    laughs = "".join(
        f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10 if i else "lol"}">' for i in range(10)
    )
    contract = write_contract_pdf(tmp_path / "contract.pdf").read_bytes()
    return [
        ("xxe.docx", docx_with_document_xml(tmp_path, xxe), 422, "has a DTD"),
        ("laughs.docx", docx_with_document_xml(tmp_path, with_dtd(laughs, "&l9;")), 422, "DTD"),
        ("bomb.docx", zip_of({"word/document.xml": b"\0" * 101 * 2**20}), 413, "zip bomb"),
        ("parts.docx", zip_of({f"p{i}.xml": b"" for i in range(2_500)}), 413, "2,500 parts"),
        ("no-document.docx", zip_of({"a.txt": b"hello"}), 422, "not a Word document"),
        ("not-a-zip.docx", b"PK\x03\x04 but not a zip at all", 422, "Word document"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj <</Type/Catalog", 422, "broken.pdf"),
        ("flate-bomb.pdf", flate_bomb_pdf(), 422, "could not be read"),
        ("locked.pdf", pdf_bytes(tmp_path, "locked.pdf", encrypted), 422, "encrypted"),
        ("scan.pdf", pdf_bytes(tmp_path, "scan.pdf", lambda p: p.add_page()), 422, "OCR"),
        ("long.pdf", contract, 413, "5 pages, over the limit of 2"),
        ("large.txt", b"The Supplier shall deliver. " * 45_000, 413, "larger than the limit"),
        ("empty.md", b"", 422, "empty"),
        ("binary.txt", b"\x00\x01\x02" * 100, 422, "binary"),
        ("program.exe", b"MZ\x90\x00", 415, "not a contract"),
        ("../../../../etc/passwd", b"root:x:0:0", 415, "passwd: not a contract"),
    ]


def test_hostile_uploads_are_refused_with_their_message_and_the_page_goes_on(
    browser, stub, tmp_path
):
    recipe = write_recipe(tmp_path / "recipe.toml")
    reviews = tmp_path / "reviews"
    page = Page(recipe, reviews, "--endpoint", stub.url, "--model", "stub", "--max-upload-mb",
                "1", "--max-pages", "2").wait()  # fmt: skip
    try:
        for name, data, status, words in hostile_uploads(tmp_path):
            started = time.monotonic()
            answer = upload(page.url, name, data)
            assert (answer.status_code, name) == (status, name), answer.text
            assert words in answer.json()["error"], (name, answer.json())
            assert time.monotonic() - started < 30, name
            assert sorted(p.name for p in reviews.iterdir()) == [".legalbuild-reviews"], name
        answer = upload(page.url, "c.md", b"The Supplier shall deliver.", playbook="nope")
        assert answer.status_code == 422 and "no playbook 'nope'" in answer.json()["error"]
        # a name that climbs out of its folder is cut to its last part, inside the upload folder
        answer = upload(
            page.url,
            "..%2F..%2F%2E%2E%5Cevil.md",
            b"# T\n\n" + b"The Supplier shall deliver the goods on time.",
        )
        assert answer.status_code == 201, answer.text
        kept = [p.relative_to(reviews) for p in reviews.rglob("*") if p.is_file()]
        assert Path(answer.json()["id"], "upload", "evil.md") in kept
        assert not (tmp_path / "evil.md").exists()
        assert wait_done(page.url, answer.json()["id"])["status"] == "done"

        # in the browser: the refusal is shown on the page, and the next upload goes through
        tab = browser.new_page()
        tab.goto(page.url)
        (tmp_path / "xxe.docx").write_bytes(hostile_uploads(tmp_path)[0][1])
        tab.set_input_files("#file", str(tmp_path / "xxe.docx"))
        tab.click("#upload-button")
        tab.wait_for_selector("#upload-error:not([hidden])")
        assert tab.inner_text("#upload-error").startswith(
            "Refused (422): xxe.docx: word/document.xml has a DTD"
        )
        tab.set_input_files("#file", str(write_contract_docx(tmp_path / "good.docx")))
        tab.select_option("#playbook", "saas-vendor")
        tab.click("#upload-button")
        tab.wait_for_selector('#progress[data-status="done"]', timeout=120_000)
        assert "playbook saas-vendor" in tab.inner_text(".meta")
        assert tab.locator("article.finding").count() >= 3
        tab.close()
    finally:
        log = page.stop()
    assert "Traceback" not in log, log[-3000:]


def test_the_page_refuses_other_hosts_and_sites(stub_page):
    import httpx

    url = stub_page.url
    assert httpx.get(url, headers={"Host": "attacker.example:80"}).status_code == 421
    crossed = {**API, "Origin": "http://attacker.example", "X-Filename": "c.md"}
    assert httpx.post(f"{url}/api/reviews", content=b"x", headers=crossed).status_code == 403
    assert (
        httpx.post(f"{url}/api/reviews", content=b"x", headers={"X-Filename": "c.md"}).status_code
        == 403
    )
    answer = httpx.get(url)
    assert "script-src" not in answer.headers["content-security-policy"]  # 'self' only
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert httpx.get(f"{url}/static/../app.py").status_code == 404


# ------------------------------------------------------------------------------ key, restart
def test_a_public_bind_needs_the_key_and_the_page_asks_for_it(browser, stub, tmp_path):
    import httpx

    recipe = write_recipe(tmp_path / "recipe.toml")
    env = {k: v for k, v in os.environ.items() if k != "LEGALBUILD_API_KEY"}
    refused = subprocess.run(
        [sys.executable, "-m", "legalbuild", "review", str(recipe), "--host", "0.0.0.0",
         "--endpoint", stub.url, "--model", "stub", "--reviews", str(tmp_path / "r0")],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 7 and "without an API key" in refused.stderr
    key = "review-key-7f3a9"
    page = Page(recipe, tmp_path / "reviews", "--host", "0.0.0.0", "--endpoint", stub.url,
                "--model", "stub", env={"LEGALBUILD_API_KEY": key}).wait()  # fmt: skip
    try:
        url = page.url
        assert httpx.get(url).headers["location"] == "/login"
        assert upload(url, "c.md", b"The Supplier shall deliver.").status_code == 401
        assert httpx.post(f"{url}/login", data={"key": "wrong"}).status_code == 401
        bearer = {"Authorization": f"Bearer {key}"}
        assert httpx.get(url, headers=bearer).status_code == 200
        tab = browser.new_page()
        tab.goto(url)
        assert tab.url.endswith("/login")
        tab.fill('input[name="key"]', key)
        tab.click('button[type="submit"]')
        tab.wait_for_selector("#upload")
        assert key not in tab.url
        cookie = next(c for c in tab.context.cookies() if c["name"] == "legalbuild_review")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and key not in cookie["value"]
        tab.close()
    finally:
        log = page.stop()
    assert key not in log


def test_reviews_reopen_after_a_restart_and_an_interrupted_audit_resumes(tmp_path):
    import httpx

    clauses = contract_clauses()
    recipe = write_recipe(tmp_path / "recipe.toml")
    reviews = tmp_path / "reviews"
    with OpenAIStub() as fast:
        page = Page(recipe, reviews, "--endpoint", fast.url, "--model", "stub").wait()
        first = upload(
            page.url, "contract.docx", write_contract_docx(tmp_path / "c.docx").read_bytes()
        )
        first_id = first.json()["id"]
        assert wait_done(page.url, first_id)["status"] == "done"
        decision = {"clause": LIABILITY, "finding": 1, "decision": "accept", "text": EDITED}
        answer = httpx.post(
            f"{page.url}/api/reviews/{first_id}/decisions", json=decision, headers=API
        )
        assert answer.status_code == 200
        page.stop()
    slow_after_two = {c: 0.0 if i < 2 else 120.0 for i, c in enumerate(clauses)}
    with OpenAIStub(delay=slow_after_two.get) as slow:
        page = Page(
            recipe, reviews, "--endpoint", slow.url, "--model", "stub", "--concurrency", "1"
        ).wait()
        second = upload(page.url, "contract.md", contract_markdown().encode()).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{page.url}/api/reviews/{second}/progress").json()["done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        page.stop()  # Ctrl-C while the third clause is being asked
    with OpenAIStub() as fast:
        page = Page(recipe, reviews, "--endpoint", fast.url, "--model", "stub").wait()
        try:
            listing = httpx.get(page.url).text
            assert "contract.docx" in listing and "contract.md" in listing
            reopened = httpx.get(f"{page.url}/reviews/{first_id}").text
            assert f'id="finding-{LIABILITY}-1"' in reopened and 'data-state="accepted"' in reopened
            state = httpx.get(f"{page.url}/api/reviews/{second}/progress").json()
            assert (state["status"], state["done"]) == ("interrupted", 2)
            assert (
                httpx.post(f"{page.url}/api/reviews/{second}/resume", headers=API).status_code
                == 200
            )
            assert wait_done(page.url, second)["status"] == "done"
            assert sorted(fast.attempts) == sorted(
                clauses[2:]
            )  # the answered two are not asked again
            record = httpx.get(f"{page.url}/reviews/{second}/download/record.json").json()
            assert [r["status"] for r in record["clauses"]] == ["audited"] * len(clauses)
        finally:
            page.stop()


def test_an_audit_whose_server_went_away_fails_with_its_reason(tmp_path):
    import httpx

    recipe = write_recipe(tmp_path / "recipe.toml")
    with OpenAIStub() as gone:
        page = Page(recipe, tmp_path / "reviews", "--endpoint", gone.url, "--model", "stub").wait()
    try:  # the stub has stopped: the page is up, its model is not
        review = upload(page.url, "c.md", b"The Supplier shall deliver the goods.").json()["id"]
        state = wait_done(page.url, review)
        assert state["status"] == "failed" and "cannot reach" in state["error"]
        shown = httpx.get(f"{page.url}/reviews/{review}").text
        assert 'id="review-error"' in shown and 'id="resume"' in shown
        download = httpx.get(f"{page.url}/reviews/{review}/download/reviewed.docx")
        assert download.status_code == 409 and "not finished" in download.json()["error"]
    finally:
        page.stop()


def test_a_reviews_folder_legalbuild_did_not_make_is_refused(tmp_path, stub):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    recipe = write_recipe(tmp_path / "recipe.toml")
    page = Page(recipe, tmp_path / "mine", "--endpoint", stub.url, "--model", "stub")
    assert page.process.wait(timeout=120) == 1
    assert "a folder legalbuild did not make" in page.log.read_text()
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------ a real model
@pytest.mark.slow
def test_the_review_against_a_real_vllm_serving_a_tiny_model(browser, tiny_model_dir, tmp_path):
    """The page starts the recipe's vLLM server itself (no --endpoint) on a tiny Llama taught the
    stub's answers for the test contract, then the same review as with the stub."""
    from legalbuild.contract.questions import playbook_questions

    clauses = contract_clauses()
    asked = playbook_questions(clauses, None, [], False)
    pairs = [(q.instruction, stub_answer(c)) for q, c in zip(asked, clauses, strict=True)]
    base = build_servable_base(tiny_model_dir, tmp_path / "base")
    taught = teach_tiny_model(base, tmp_path / "taught", pairs)
    recipe, _ = recipe_with_merged_model(taught, tmp_path, base, "legal-tiny")
    page = Page(recipe, tmp_path / "reviews", "--serve").wait(timeout=900)
    try:
        contract = write_contract_docx(tmp_path / "contract.docx")
        downloads = review_in_browser(browser, page.url, contract, tmp_path)
    finally:
        log = page.stop()
    assert "(started)" in log and "vLLM ready" in log
    check_downloads(downloads, contract)
    record = json.loads(downloads["record.json"].read_text())
    assert record["model"] == "legal-tiny" and record["endpoint"].startswith("http://127.0.0.1:")


# ------------------------------------------------------------------------------ without a server
def test_decisions_make_the_record_and_a_pdf_gets_its_tracked_change(tmp_path):
    """One fix per clause (the newer accept wins), rejected findings dropped and risks recounted,
    the record valid against the audit schema; a PDF's clauses document carries the change."""
    import docx
    import jsonschema

    from legalbuild.contract.client import Outcome, audit_result
    from legalbuild.contract.docx_out import write_docx
    from legalbuild.contract.run import prepare
    from legalbuild.review.decisions import decide, reviewed_record
    from legalbuild.review.uploads import Refused

    job = prepare(write_contract_pdf(tmp_path / "c.pdf"))
    two = (
        "Risk: high\nFinding 1: Uncapped liability [liability.uncapped] (severity: high)\n"
        "Why: W.\nFix: F.\nSuggested clause: Capped at fees.\n"
        "Finding 2: Consequential loss [liability.consequential] (severity: medium)\n"
        "Why: W.\nFix: F.\nSuggested clause: No consequential loss."
    )
    answers = [two if i == LIABILITY - 1 else stub_answer(c) for i, c in enumerate(job.texts)]
    results = [audit_result(c, a, 0.1) for c, a in zip(job.texts, answers, strict=True)]
    meta = {"model": "m", "endpoint": "http://x/v1", "recipe": None, "recipe_key": None,
            "playbook": None, "constrained": False, "max_tokens": 9, "temperature": 0.0,
            "concurrency": 1}  # fmt: skip
    record = job.record(Outcome(results, False, 1.0), meta)
    decisions: dict = {}
    decisions = decide(record, decisions, LIABILITY, 1, "accept", "Capped at twice the fees.")
    decisions = decide(record, decisions, LIABILITY, 2, "accept", None)  # the suggestion as is
    assert list(decisions) == [f"{LIABILITY}.2"]  # one fix per clause: the newer one
    decisions = decide(record, decisions, RENEWAL, 1, "reject")
    with pytest.raises(Refused, match="has no finding 3"):
        decide(record, decisions, LIABILITY, 3, "reject")
    with pytest.raises(Refused, match="nothing to put in place"):
        decide(record, decisions, FEES, 1, "accept", "  ")

    reviewed, fixes = reviewed_record(record, decisions)
    jsonschema.validate(reviewed, json.loads(SCHEMA_PATH.read_text()))
    rows = {r["index"]: r for r in reviewed["clauses"]}
    assert fixes == {LIABILITY: "No consequential loss."}
    assert (rows[RENEWAL]["risk"], rows[RENEWAL]["findings"]) == ("none", [])
    assert reviewed["summary"]["low"] == 0 and record["summary"]["low"] == 1

    n = write_docx(reviewed, tmp_path / "r.docx", None, fixes)
    document = docx.Document(str(tmp_path / "r.docx"))
    assert n == len(document.comments) == 2  # liability and fees; renewal was rejected
    changed = [p._p for p in document.paragraphs if p._p.xpath(".//w:ins")]
    assert len(changed) == 1
    assert changed[0].xpath(".//w:del//w:delText/text()") == [job.texts[LIABILITY - 1]]
    assert changed[0].xpath(".//w:ins//w:t/text()") == ["4.1 No consequential loss."]
    ids = document.element.xpath("//w:ins/@w:id | //w:del/@w:id")
    assert len(set(ids)) == len(ids) == 2
