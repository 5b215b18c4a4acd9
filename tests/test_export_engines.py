"""The exported GGUF in real llama.cpp code, on the real SmolLM2-135M-Instruct:

- llama.cpp's engine (llama-cpp-python, the `dev` extra builds it): the prompt tokenizes to the
  same ids, the greedy answer to an audit prompt equals transformers' for its first tokens, and it
  stops at <|im_end|>, by the raw token loop and through the chat API (which renders the GGUF's own
  chat template);
- llama.cpp's converter (a checkout named by LEGALBUILD_LLAMA_CPP): `--llama-cpp` writes the GGUF
  with it, and the built-in writer's tensors equal its tensors byte for byte (q/k permutation
  included).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from legalbuild.export.gguf import write_gguf
from legalbuild.prompting import audit_instruction, chat_messages
from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.slow
CLAUSE = "The Supplier may terminate this Agreement at any time, for any reason, without notice."
SAME_TOKENS = 16  # greedy decoding in f16 (llama.cpp) and fp32 (transformers) agree this far
END = "<|im_end|>"
TEXTS = [
    "Fees of USD 1,250.00 are due within 30 (thirty) days; 1.5% monthly, 12345678, 2026-11-30.",
    "§ 7.2 – Haftung: Die Parteien haften unbeschränkt. 日本語の契約書。 🙂",
    "  leading spaces\n\n\ttabs   and    runs\r\n",
    "don't won't I'll we've",
]


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_base, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    gguf_file = tmp_path_factory.mktemp("engine") / "smollm2.f16.gguf"
    write_gguf(smollm2_base / "model", gguf_file, "f16", name="smollm2")
    return smollm2_base / "model", gguf_file


def test_llama_cpp_greedy_answer_matches_transformers_and_stops_at_im_end(smollm2_f16):
    llama_cpp = pytest.importorskip("llama_cpp", reason="bash scripts/setup.sh --dev builds it")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, gguf_file = smollm2_f16
    messages = chat_messages(DEFAULT_SYSTEM_PROMPT, audit_instruction(CLAUSE))
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=2048, n_threads=2, seed=0, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    for text in TEXTS:  # digits, punctuation, non-Latin scripts, whitespace runs, contractions
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"]

    end_id = tok.convert_tokens_to_ids(END)
    answer: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        answer.append(token)
        if token == end_id or len(answer) >= 400:
            break
    assert answer[-1] == end_id, f"no {END} in 400 tokens: {tok.decode(answer)!r}"

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([ids]), max_new_tokens=SAME_TOKENS, do_sample=False, eos_token_id=end_id
        )[0, len(ids) :].tolist()
    assert answer[:SAME_TOKENS] == ref[:SAME_TOKENS], (tok.decode(answer), tok.decode(ref))

    chat = llm.create_chat_completion(messages, temperature=0.0, top_k=1, max_tokens=400)
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "stop" and END not in choice["message"]["content"]
    assert choice["message"]["content"].strip() == tok.decode(answer[:-1]).strip()
    llm.close()  # now, not at interpreter exit (llama-cpp-python's late free raises there)


def test_llama_cpp_converter_writes_the_same_tensors_as_the_built_in_writer(smollm2_f16, tmp_path):
    checkout = os.environ.get("LEGALBUILD_LLAMA_CPP")
    if not checkout:
        pytest.skip("set LEGALBUILD_LLAMA_CPP to a llama.cpp checkout")
    import numpy as np
    from gguf import GGUFReader

    from legalbuild.export.gguf_entry import run_llama_cpp

    model_dir, ours = smollm2_f16
    theirs = tmp_path / "llama-cpp.gguf"
    run_llama_cpp(Path(checkout), model_dir, theirs, "f16")
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert tensor.tensor_type == b[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(b[name].data)), name
