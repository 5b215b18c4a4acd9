"""The checks a merged folder must pass before it is cached: each returns
{"name", "ok", "detail"}, and `raise_on_failed_checks` turns a report with a failure into
StageFailedError naming every failure.

- parity: the merged model reloaded from disk gives the same logits as base+adapter on the
  `[merge] probe_prompts`, rendered with the chat template and `[data] system_prompt`;
- no adapter files are left in the folder (a server would otherwise see an adapter, not a model);
- tied embeddings are still tied after the reload; no quantization_config is declared;
- the tokenizer round-trips its chat template (render -> encode -> decode gives the same text), the
  template renders as the base's did, and generation stops at the end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legalbuild.basemodel.tokenizer import template_end_token
from legalbuild.errors import StageFailedError
from legalbuild.prompting import chat_messages

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def check_logit_parity(max_diff: float, allowed: float, dtype: str) -> dict[str, Any]:
    return check(
        "logit_parity",
        max_diff <= allowed,
        f"merged model reloaded from disk vs base+adapter: max |logit diff| {max_diff:.3g} "
        f"(allowed {allowed:.3g}, dtype {dtype}; fp32 gives ~1e-6, bf16 ~0.06)",
    )


def check_no_adapter_files(model_dir: Path) -> dict[str, Any]:
    left = sorted(n for n in ADAPTER_FILES if (model_dir / n).exists())
    return check(
        "no_adapter_files",
        not left,
        f"adapter files left in the merged folder: {left}"
        if left
        else "no adapter files in the merged folder",
    )


def check_tied_embeddings(model: Any) -> dict[str, Any]:
    import torch

    if not getattr(model.config, "tie_word_embeddings", False):
        return check("tied_embeddings", True, "the model does not tie its embeddings")
    output = model.get_output_embeddings()
    same = output is not None and torch.equal(output.weight, model.get_input_embeddings().weight)
    return check(
        "tied_embeddings",
        same,
        "lm_head equals embed_tokens after reload"
        if same
        else "config ties embeddings but lm_head differs from embed_tokens",
    )


def check_no_quantization_config(model_dir: Path) -> dict[str, Any]:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    quantized = "quantization_config" in config
    return check(
        "full_precision_config",
        not quantized,
        "config.json declares a quantization_config"
        if quantized
        else "config.json declares no quantization",
    )


def check_tokenizer(
    model_dir: Path, base_dir: Path, system_prompt: str, probe: str
) -> list[dict[str, Any]]:
    """The saved tokenizer renders the chat template as the base's did, its rendering survives
    encode -> decode, its vocabulary fits the embeddings, and generation stops at end of turn."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    saved = AutoTokenizer.from_pretrained(model_dir)
    original = AutoTokenizer.from_pretrained(base_dir)
    conversation = [
        *chat_messages(system_prompt, probe),
        {"role": "assistant", "content": "Risk: none\nFindings: none."},
    ]
    text = saved.apply_chat_template(conversation, tokenize=False)
    decoded = saved.decode(
        saved(text, add_special_tokens=False).input_ids, skip_special_tokens=False
    )
    same_template = text == original.apply_chat_template(conversation, tokenize=False)

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    end_id = saved.convert_tokens_to_ids(template_end_token(saved))
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    return [
        check(
            "chat_template_round_trip",
            decoded == text,
            "apply_chat_template -> encode -> decode gives the same text"
            if decoded == text
            else f"round trip changed the text: {text[:80]!r} -> {decoded[:80]!r}",
        ),
        check(
            "chat_template_preserved",
            same_template,
            "the saved tokenizer renders conversations exactly as the base's"
            if same_template
            else "the saved chat template renders differently from the base's",
        ),
        check(
            "vocab_fits_embeddings",
            len(saved) <= vocab,
            f"{len(saved)} tokens, {vocab} embedding rows",
        ),
        check(
            "generation_stops_at_end_of_turn",
            end_id in eos_ids and saved.eos_token_id in eos_ids,
            f"generation_config eos ids {eos_ids}; end-of-turn id {end_id}, tokenizer eos id {saved.eos_token_id}",
        ),
    ]


def raise_on_failed_checks(report: dict[str, Any]) -> None:
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        lines = "\n".join(f"  - {c['name']}: {c['detail']}" for c in failed)
        raise StageFailedError(
            f"merge: {len(failed)} check(s) failed on the merged model:\n{lines}",
            hint="merge.json (kept under the cache's failed/ folder) lists every check; a logit mismatch usually means a low-precision [merge] dtype "
            "(use float32, or raise [merge] max_logit_diff for bfloat16)",
        )
