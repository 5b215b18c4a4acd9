"""A GGUF file (llama.cpp, Ollama, LM Studio) of a merged Hugging Face model, written with the
`gguf` package's own parts: `GGUFWriter`, the tensor name map, `quants`, `BpeVocab` and
`SpecialVocab`.

Built in: `LlamaForCausalLM` (Llama, SmolLM, TinyLlama, Llama 2/3 shapes) with a GPT-2 style
byte-level BPE tokenizer. As llama.cpp's converter does (`LlamaModel.modify_tensors`), the q and
k projections are permuted from Hugging Face's rotary layout (halves) to GGML's (interleaved
pairs); transformers' GGUF loader undoes it. Norms stay F32; a matrix whose rows do not split
into quant blocks falls back to F16, as in llama.cpp. Any other architecture: `--llama-cpp`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legalbuild.errors import LegalbuildError

# Hugging Face architecture -> GGUF architecture written by the built-in converter
SUPPORTED = {"LlamaForCausalLM": "llama"}
OUT_TYPES = ("f16", "bf16", "q8_0")
# q4_0 is not offered: on the fine-tuned SmolLM2-135M it changed the top token at 40% of the 155
# positions of an audit exchange (max |logit error| 16.9 on logits up to 36), where q8_0 changed
# 2.6% (0.94) and bf16 0.6% (0.28); f16 none (0.04)
REFUSED_TYPES = {"q4_0": "too lossy for a model this small (top token changed at 40% of positions)"}
# the tokenizers pre-tokenizer a GGUF `tokenizer.ggml.pre` name stands for (llama.cpp's names)
_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
PRE_TOKENIZERS = (
    ("gpt-2", _GPT2),
    ("smollm", {"type": "Sequence", "pretokenizers": [_DIGITS, _GPT2]}),
)


class UnsupportedModelError(LegalbuildError):
    """The built-in converter cannot write this model."""


def unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what}; the built-in GGUF converter supports {', '.join(SUPPORTED)} "
        f"(GGUF architecture {', '.join(SUPPORTED.values())}) with a byte-level BPE tokenizer",
        hint="pass --llama-cpp DIR (a llama.cpp checkout, or set LEGALBUILD_LLAMA_CPP) to use "
        "its convert_hf_to_gguf.py, which covers many more architectures",
    )


def check_supported(model_dir: Path) -> dict[str, Any]:
    """The model's config.json, or UnsupportedModelError naming what the built-in writer covers."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if archs[0] not in SUPPORTED:
        raise unsupported(f"the merged model is a {archs[0]}")
    scaling = config.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise unsupported(f"rope scaling {scaling} is not written by the built-in converter")
    if config.get("hidden_act", "silu") != "silu":
        raise unsupported(f"activation {config['hidden_act']} is not Llama's silu")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise unsupported("attention or MLP biases are not written by the built-in converter")
    return config


def check_out_type(out_type: str) -> None:
    if out_type not in OUT_TYPES:
        why = REFUSED_TYPES.get(out_type, "not a type the built-in writer makes")
        raise LegalbuildError(
            f"GGUF type {out_type!r}: {why}", hint=f"use one of {', '.join(OUT_TYPES)}"
        )


def permute(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's q/k permutation (convert_hf_to_gguf.py LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(
    model_dir: Path,
    out_file: Path,
    out_type: str,
    *,
    name: str,
    licence: str | None = None,
    temperature: float = 0.0,
) -> dict[str, Any]:
    """Write `out_file` from the Hugging Face folder `model_dir`; returns what it wrote
    (architecture, tensor types, tokens, special token ids)."""
    import gguf

    check_out_type(out_type)
    config = check_supported(model_dir)
    arch = SUPPORTED[config["architectures"][0]]
    writer = gguf.GGUFWriter(path=None, arch=arch)
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads")
    _add_hparams(writer, config, name, out_type)
    if licence:
        writer.add_license(licence)
    tokens = _add_vocab(writer, model_dir, config)
    writer.add_sampling_temp(float(temperature))  # audits decode greedily
    counts = _add_tensors(writer, model_dir, config, out_type, n_head, n_kv or n_head)
    try:
        writer.write_header_to_file(path=out_file)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"architecture": arch, "out_type": out_type, "tensor_types": counts, **tokens}


def _add_hparams(writer: Any, config: dict[str, Any], name: str, out_type: str) -> None:
    import gguf

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    rope_theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0
    )
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{out_type.upper()}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))


def _add_vocab(writer: Any, model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Tokens, types, merges, special ids and the chat template (from tokenizer.json,
    tokenizer_config.json and chat_template.jinja)."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pre = next((n for n, shape in PRE_TOKENIZERS if tokenizer.get("pre_tokenizer") == shape), None)
    if pre is None:
        raise unsupported(f"pre-tokenizer {tokenizer.get('pre_tokenizer')} is not recognised")
    try:
        vocab = gguf.BpeVocab(model_dir)
    except FileNotFoundError as exc:
        raise unsupported(f"the tokenizer is not a byte-level BPE ({exc})") from exc
    special = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    tokens: list[bytes] = []
    types: list[int] = []
    for i, (text, _score, _type) in enumerate(vocab.all_tokens()):
        tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
        added = special.get(i)
        kind = gguf.TokenType.NORMAL
        if added is not None:
            kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        types.append(kind)
    for i in range(len(tokens), config["vocab_size"]):  # embedding rows beyond the tokenizer
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    specials = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if specials.chat_template is None:
        raise unsupported(f"{model_dir.name} has no chat template")
    single = (tokenizer.get("post_processor") or {}).get("single")
    if "bos" not in specials.add_special_token and single is not None:  # as the tokenizer encodes
        specials.add_special_token["bos"] = any("SpecialToken" in part for part in single)
    specials.add_to_gguf(writer, quiet=True)
    end = _end_of_turn(model_dir, tokenizer)
    if end is not None:
        writer.add_eot_token_id(end)
    return {
        "tokens": len(tokens),
        "pre": pre,
        "special_ids": specials.special_token_ids,
        "eot": end,
    }


def _end_of_turn(model_dir: Path, tokenizer: dict[str, Any]) -> int | None:
    """The first eos id of generation_config.json (merge puts the template's end-of-turn token
    there first), when it is an added token."""
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    eos = gen.get("eos_token_id")
    first = eos[0] if isinstance(eos, list) and eos else eos
    added = {t["id"] for t in tokenizer.get("added_tokens", [])}
    return first if isinstance(first, int) and first in added else None


def _add_tensors(
    writer: Any, model_dir: Path, config: dict[str, Any], out_type: str, n_head: int, n_kv: int
) -> dict[str, int]:
    import gguf
    import torch
    from safetensors.torch import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    state: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    tied = config.get("tie_word_embeddings", False)
    counts: dict[str, int] = {}
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise unsupported(f"tensor {hf_name} has no GGUF name")
        data = tensor.to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_kv)
        qtype = gguf.GGMLQuantizationType[out_type.upper()]
        if data.ndim == 1:
            qtype = gguf.GGMLQuantizationType.F32
        elif data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = gguf.GGMLQuantizationType.F16
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = data.astype("float32" if qtype == gguf.GGMLQuantizationType.F32 else "float16")
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts
