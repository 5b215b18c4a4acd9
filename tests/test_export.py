"""`legalbuild export --format hf|gguf|ollama` on the tests' tiny recipe (2-layer Llama with
SmolLM2's real tokenizer and ChatML template, built through merge and eval once for the module):

- round trip: transformers loads each GGUF type and its logits match the merged model's within the
  type's tolerance, its tokenizer gives the same ids, its chat template the same prompt; a GGUF
  written without llama.cpp's q/k permutation fails that check;
- the GGUF is a cached entry: a second export is a cache hit, `verify` re-hashes it, a corrupted
  one is rebuilt, `gc RECIPE` keeps it;
- the Modelfile's Go TEMPLATE, rendered by a small Go text/template renderer (below), gives the chat
  template's prompt, with Ollama's SYSTEM injection;
- the model card's metadata parses with huggingface_hub and carries the eval figures;
- bad input: unbuilt recipe (exit 5), unsupported architecture, existing destination, full disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_project

from legalbuild.engine import pipeline
from legalbuild.engine.cache import Store
from legalbuild.export.bundle import export_recipe

# one tiny build for the module (~1 min on 2 idle cores), then seconds per test
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# max |logit difference| allowed, relative to the merged model's max |logit|, per GGUF type:
# measured on the tiny model and on SmolLM2-135M (see ARCHITECTURE.md, Exports)
TOLERANCE = {"f16": 2e-3, "bf16": 1.5e-2, "q8_0": 5e-2}
SENTENCES = [
    "The Supplier may terminate this Agreement at any time without notice.",
    "Licensee shall indemnify, defend and hold harmless Licensor from all claims.",
    "Fees of USD 1,250.00 are payable within 30 (thirty) days; late fees accrue at 1.5% monthly.",
    "§ 7.2 – Haftung: Die Parteien haften unbeschränkt bei Vorsatz.",
    "<|im_start|>user\nnot a real turn<|im_end|>",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("export")
    more = (
        '[eval]\nmax_rows = 4\nmax_new_tokens = 8\nengine = "transformers"\ncompare_base = false\n'
    )
    recipe = write_project(root, tiny_model_dir, more=more)
    store = Store(root / "cache")
    loaded = pipeline.Loaded.from_path(recipe)
    pipeline.build(loaded, store, log=lambda _m: None)
    merged = store.out_dir("merge", loaded.nodes["merge"].key) / "model"
    return {"recipe": recipe, "store": store, "loaded": loaded, "merged": merged, "root": root}


def cli(cache: Path, *args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; `limit_bytes` caps the size of any file it writes (RLIMIT_FSIZE,
    SIGXFSZ ignored): a write past it fails with a real EFBIG, as on a full disk."""
    code = "from legalbuild.cli import main; main()"
    if limit_bytes is not None:
        code = (
            "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); " + code
        )
    env = {**os.environ, "LEGALBUILD_CACHE": str(cache), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600
    )


def prompt_messages(system: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "Audit this contract clause:\n\n" + SENTENCES[0]},
    ]


def logits_diff(merged: Path, gguf_file: Path) -> tuple[float, float]:
    """(max |logit difference|, max |merged logit|) on a fixed chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template(
        prompt_messages("You review contracts."), add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    ref = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    with torch.no_grad():
        a, b = ref(ids).logits, got(ids).logits
    return (a - b).abs().max().item(), a.abs().max().item()


# ------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("gguf_type", ["f16", "bf16", "q8_0"])
def test_gguf_round_trip_through_transformers(built, tmp_path, gguf_type):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    result = export_recipe(
        built["loaded"], built["store"], tmp_path / "out", ["gguf"], gguf_type=gguf_type
    )
    gguf_file = tmp_path / "out" / f"t.{gguf_type}.gguf"
    assert gguf_file.name in result.files and "legalbuild-manifest.json" in result.files
    diff, scale = logits_diff(built["merged"], gguf_file)
    assert diff <= TOLERANCE[gguf_type] * scale, (gguf_type, diff, scale)

    ref = AutoTokenizer.from_pretrained(built["merged"])
    got = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    for sentence in SENTENCES:
        assert got(sentence)["input_ids"] == ref(sentence)["input_ids"], sentence
    messages = prompt_messages(built["loaded"].recipe.data.system_prompt)
    assert got.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    fields = GGUFReader(gguf_file).fields
    end = ref.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eos_token_id"].contents() == end
    assert fields["tokenizer.ggml.eot_token_id"].contents() == end
    assert fields["tokenizer.ggml.bos_token_id"].contents() == ref.bos_token_id
    assert fields["general.sampling.temp"].contents() == 0.0
    assert fields["general.name"].contents() == "t"  # the recipe's served name (its project here)
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()


def test_a_gguf_without_the_qk_permutation_fails_the_round_trip(built, tmp_path, monkeypatch):
    """The check above catches a converter that forgets llama.cpp's permutation (transformers'
    loader un-permutes q and k, so unpermuted weights come back scrambled)."""
    from legalbuild.export import gguf as writer

    good, bad = tmp_path / "good.gguf", tmp_path / "bad.gguf"
    writer.write_gguf(built["merged"], good, "f16", name="t")
    monkeypatch.setattr(writer, "permute", lambda weights, n_head, n_head_kv=None: weights)
    writer.write_gguf(built["merged"], bad, "f16", name="t")
    ok_diff, scale = logits_diff(built["merged"], good)
    bad_diff, _ = logits_diff(built["merged"], bad)
    assert ok_diff <= TOLERANCE["f16"] * scale < bad_diff, (ok_diff, bad_diff, scale)


# --------------------------------------------------------------------------------- caching
def test_gguf_is_cached_verified_kept_by_gc_and_rebuilt_when_corrupted(built, tmp_path):
    from helpers import flip_byte_keeping_mtime

    logs: list[str] = []
    args = (built["loaded"], built["store"])
    first = export_recipe(*args, tmp_path / "a", ["gguf"], gguf_type="q8_0", log=logs.append)
    second = export_recipe(*args, tmp_path / "b", ["gguf"], gguf_type="q8_0", log=logs.append)
    assert first.gguf_key == second.gguf_key and any("cache hit" in m for m in logs)
    assert (tmp_path / "a" / "t.q8_0.gguf").read_bytes() == (
        tmp_path / "b" / "t.q8_0.gguf"
    ).read_bytes()

    cache = built["store"].root
    verified = cli(cache, "verify", str(built["recipe"]))
    assert verified.returncode == 0 and f"ok gguf {first.gguf_key[:12]}" in verified.stdout
    kept = cli(cache, "gc", str(built["recipe"]), "--dry-run")
    assert f"gguf {first.gguf_key[:12]}" not in kept.stdout, kept.stdout

    entry = built["store"].out_dir("gguf", first.gguf_key) / "model.gguf"
    os.chmod(entry, 0o644)
    flip_byte_keeping_mtime(entry, 4096)
    corrupt = cli(cache, "verify", str(built["recipe"]))
    assert corrupt.returncode == 8 and "CORRUPT gguf" in corrupt.stdout
    logs.clear()
    export_recipe(*args, tmp_path / "c", ["gguf"], gguf_type="q8_0", log=logs.append)
    assert any("corrupted" in m and "rebuilding" in m for m in logs), logs
    assert built["store"].verify("gguf", first.gguf_key) == []
    cleaned = cli(cache, "clean", str(built["recipe"]), "--stage", "gguf")
    assert f"removed gguf {first.gguf_key[:12]}" in cleaned.stdout, cleaned.stdout
    assert not built["store"].has("gguf", first.gguf_key)
    assert built["store"].has("merge", built["loaded"].nodes["merge"].key)  # only what was named


# ---------------------------------------------------------------------------------- ollama
def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """Go text/template, the subset the Modelfile uses: text, {{ range .Messages }}, {{ if eq .Role
    "x" }} / {{ else if eq .Role "y" }} / {{ end }}, {{ if ne (index .Messages 0).Role "x" }},
    {{ .Role }}, {{ .Content }}. Anything else raises."""
    tokens = re.split(r"({{.*?}})", template)

    def block(i: int, ctx: dict | None) -> tuple[str, int, str]:
        out = ""
        while i < len(tokens):
            tok = tokens[i]
            if not tok.startswith("{{"):
                out, i = out + tok, i + 1
                continue
            action = tok[2:-2].strip()
            if action in ("end",) or action.startswith("else"):
                return out, i, action
            if action == "range .Messages":
                assert messages, "Ollama always sends at least one message"
                for m in messages:
                    text, end, _ = block(i + 1, m)
                    out += text
                i = end + 1
            elif action.startswith("if "):
                i, text = conditional(action, i + 1, ctx)
                out += text
            elif action in (".Role", ".Content"):
                out, i = out + (ctx or {})[action[1:].lower()], i + 1
            else:
                raise AssertionError(f"unsupported action {tok}")
        return out, i, ""

    def test(cond: str, ctx: dict | None) -> bool:
        if m := re.fullmatch(r'(eq|ne) \.Role "(\w+)"', cond):
            return ((ctx or {}).get("role") == m[2]) == (m[1] == "eq")
        if m := re.fullmatch(r'(eq|ne) \(index \.Messages 0\)\.Role "(\w+)"', cond):
            return (messages[0]["role"] == m[2]) == (m[1] == "eq")
        raise AssertionError(f"unsupported condition {cond}")

    def conditional(action: str, i: int, ctx: dict | None) -> tuple[int, str]:
        chosen, cond = None, action[3:]
        while True:
            text, i, stop = block(i, ctx)
            if chosen is None and (cond is None or test(cond, ctx)):
                chosen = text
            i += 1
            if stop == "end":
                return i, chosen or ""
            cond = stop[len("else if ") :] if stop.startswith("else if ") else None

    rendered, _, _ = block(0, None)
    return rendered


def parse_modelfile(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for m in re.finditer(r'^(\w+) (?:"""(.*?)"""|([^\n]*))$', text, re.M | re.S):
        found.setdefault(m[1], []).append(m[2] if m[2] is not None else m[3])
    return found


def test_ollama_modelfile_template_renders_the_chat_template(built, tmp_path):
    from transformers import AutoTokenizer

    result = export_recipe(built["loaded"], built["store"], tmp_path / "o", ["ollama"])
    assert {"Modelfile", "t.f16.gguf"} <= set(result.files)
    parsed = parse_modelfile((tmp_path / "o" / "Modelfile").read_text())
    assert parsed["FROM"] == ["./t.f16.gguf"]
    assert 'stop "<|im_end|>"' in parsed["PARAMETER"] and "temperature 0" in parsed["PARAMETER"]
    system = built["loaded"].recipe.data.system_prompt
    assert parsed["SYSTEM"] == [system]

    tok = AutoTokenizer.from_pretrained(built["merged"])
    template = parsed["TEMPLATE"][0]
    conversations = [
        [{"role": "user", "content": "Audit this contract clause:\n\n" + SENTENCES[1]}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "Findings: none"},
            {"role": "user", "content": SENTENCES[2]},
        ],
        [{"role": "system", "content": "Other rules."}, {"role": "user", "content": "x"}],
    ]
    for convo in conversations:
        # Ollama puts SYSTEM first when the request has no system message
        sent = (
            convo
            if convo[0]["role"] == "system"
            else [{"role": "system", "content": system}, *convo]
        )
        expected = tok.apply_chat_template(sent, tokenize=False, add_generation_prompt=True)
        assert render_go(template, sent) == expected
    # without SYSTEM (an empty system prompt), the template's own default system turn comes first
    bare = [{"role": "user", "content": "hi"}]
    assert render_go(template, bare) == tok.apply_chat_template(
        bare, tokenize=False, add_generation_prompt=True
    )


def test_a_chat_template_ollama_cannot_express_is_refused():
    """Llama 2's template folds the system prompt into the first user turn: no per-message
    wrapper reproduces it, so no Modelfile is written rather than a wrong one."""
    from legalbuild.export.ollama import TemplateError, derive_wrappers

    def llama2(messages: list[dict[str, str]], generation: bool) -> str:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        out = ""
        for m in (m for m in messages if m["role"] != "system"):
            if m["role"] == "user":
                sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system and not out else ""
                out += f"<s>[INST] {sys_block}{m['content']} [/INST]"
            else:
                out += f" {m['content']} </s>"
        return out

    with pytest.raises(TemplateError, match="cannot be written as an Ollama TEMPLATE"):
        derive_wrappers(llama2)


# ------------------------------------------------------------------------------ model card
def test_hf_export_has_a_model_card_with_metadata_and_eval_results(built, tmp_path):
    from huggingface_hub import ModelCard

    result = export_recipe(built["loaded"], built["store"], tmp_path / "h", ["hf", "gguf"])
    assert {"README.md", "model.safetensors", "t.f16.gguf"} <= set(result.files)
    card = ModelCard.load(tmp_path / "h" / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert "gguf" in data.tags and "legalbuild" in data.tags
    eval_json = json.loads(
        (
            built["store"].out_dir("eval", built["loaded"].nodes["eval"].key) / "eval.json"
        ).read_text()
    )
    from legalbuild.export.card import METRICS

    merged = eval_json["metrics"]["merged"]
    listed = {r.metric_type: r.metric_value for r in data.eval_results}
    numeric = {
        METRICS[k][0]: round(v, 4) for k, v in merged.items() if k in METRICS and v is not None
    }
    assert numeric and listed == numeric  # e.g. ROUGE-L and loss (4 tiny rows: no labels parse)
    assert all(r.dataset_split == eval_json["split"] for r in data.eval_results)
    assert "## Training data" in card.text and "| d |" in card.text
    manifest = json.loads((tmp_path / "h" / "legalbuild-manifest.json").read_text())
    assert set(manifest["artifact"]["files"]) == set(result.files) - {"legalbuild-manifest.json"}


def test_packaged_recipe_names_its_hub_base_model():
    from legalbuild.export.card import base_model_id

    loaded = pipeline.Loaded.from_path(REPO / "recipes" / "legal-audit-smollm2.toml")
    assert base_model_id(loaded) == "HuggingFaceTB/SmolLM2-135M-Instruct"


# ------------------------------------------------------------------------------- bad input
def test_exporting_an_unbuilt_recipe_exits_5_with_the_build_command(tmp_path, tiny_model_dir):
    recipe = write_project(tmp_path, tiny_model_dir)
    proc = cli(tmp_path / "cache", "export", str(recipe), str(tmp_path / "o"), "--format", "gguf")
    assert proc.returncode == 5, proc.stderr
    assert "legalbuild build recipe.toml --until merge" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_unsupported_architecture_is_refused_naming_what_is_supported(built, tmp_path):
    import shutil

    from legalbuild.export.gguf import UnsupportedModelError, write_gguf

    folder = tmp_path / "m"
    shutil.copytree(built["merged"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(
        UnsupportedModelError, match="GPT2LMHeadModel.*supports LlamaForCausalLM"
    ) as e:
        write_gguf(folder, tmp_path / "x.gguf", "f16", name="t")
    assert "--llama-cpp" in e.value.hint and not (tmp_path / "x.gguf").exists()


def test_q4_0_is_refused_with_what_was_measured(built, tmp_path):
    from legalbuild.errors import LegalbuildError

    with pytest.raises(LegalbuildError, match="q4_0.*too lossy") as e:
        export_recipe(built["loaded"], built["store"], tmp_path / "q", ["gguf"], gguf_type="q4_0")
    assert "q8_0" in e.value.hint and not (tmp_path / "q").exists()


def test_an_existing_destination_is_refused_and_force_replaces_only_an_export(built, tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    proc = cli(built["store"].root, "export", str(built["recipe"]), str(dest), "--format", "gguf")
    assert proc.returncode == 1 and "not empty" in proc.stderr and "--force" in proc.stderr
    args = ["export", str(built["recipe"]), str(dest), "--format", "gguf", "--force"]
    proc = cli(built["store"].root, *args)
    assert proc.returncode == 1 and "mine.txt" in proc.stderr, proc.stderr
    assert (dest / "mine.txt").read_text() == "keep"
    (dest / "mine.txt").unlink()
    assert cli(built["store"].root, *args[:-1]).returncode == 0
    assert cli(built["store"].root, *args).returncode == 0  # a previous export is replaced
    assert (dest / "t.f16.gguf").is_file()


def test_a_full_disk_leaves_no_partial_file(built, tmp_path):
    """A real EFBIG (RLIMIT_FSIZE): first while the GGUF is written into the cache, then while the
    export folder is filled from a cached GGUF. Either way: exit 1 naming the lack of space, no
    temp entry, no GGUF entry, no partial folder, no destination."""
    store, cache = built["store"], built["store"].root
    for entry in [e for e in store.entries() if e.stage == "gguf"]:  # other tests made some
        store.remove(entry.stage, entry.key)
    before = set(store.entries())
    dest = tmp_path / "full"
    args = ["export", str(built["recipe"]), str(dest), "--format", "gguf", "--gguf-type", "bf16"]
    proc = cli(cache, *args, limit_bytes=1_000_000)  # the tiny bf16 GGUF is ~8 MB
    assert proc.returncode == 1 and f"no space to write the export in {cache}" in proc.stderr, (
        proc.stderr
    )
    assert set(store.entries()) == before and not any(
        p.name.startswith("gguf-") for p in (cache / "tmp").iterdir()
    )
    assert not dest.exists() and not list(tmp_path.glob(".full.partial-*"))

    assert cli(cache, *args).returncode == 0  # cached now
    dest2 = tmp_path / "full2"
    args[2] = str(dest2)
    proc = cli(cache, *args, limit_bytes=1_000_000)
    assert proc.returncode == 1 and f"no space to write the export in {tmp_path}" in proc.stderr
    assert not dest2.exists() and not list(tmp_path.glob(".full2.partial-*"))
