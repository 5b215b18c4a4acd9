"""Serving throughput: vLLM's OpenAI server vs transformers' `generate`, same merged model, same prompts.

    .venv/bin/python bench/serve_bench.py [MERGED_MODEL_DIR] [--requests 16] [--new-tokens 64]

Without a folder it builds the tiny merged model the serve tests use (2 layers, heads of 32, random
weights + a random LoRA merged in). Each engine answers the same chat prompts (the recipe's default
system prompt + audit instructions) with greedy decoding and exactly `--new-tokens` new tokens
(end of sequence ignored), so both do the same work:
- transformers: one batched `generate` over all prompts (left padding), after one warm-up call;
- vLLM: all requests sent at once from a thread pool to the server, as concurrent clients would.
The two phases run one after the other so they never share the CPU. One run; prints the figures
and the vLLM/transformers ratios, and one JSON line for logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT, MergeSection, ServeSection  # noqa: E402

CLAUSES = [
    "The Supplier's liability under this Agreement is unlimited.",
    "This Agreement renews automatically for successive one-year terms unless terminated.",
    "The Customer shall indemnify the Supplier against all claims whatsoever.",
    "Either party may terminate this Agreement for convenience on 30 days' notice.",
    "All intellectual property created under this Agreement vests in the Supplier.",
    "The Supplier may change the fees at any time without notice.",
    "Confidentiality obligations survive for one month after termination.",
    "This Agreement is governed by the laws of the Supplier's choosing.",
]
MODEL_NAME = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_dir", nargs="?", type=Path, help="merged model folder (default: build a tiny one)"
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="threads for transformers (default: all cores but one, as vLLM's CPU backend keeps one for "
        "its front end; on a busy machine more threads than free cores slow torch down ~10x)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: 2 requests of 4 tokens on the tiny model (CI)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.new_tokens = 2, 4

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model_dir = args.model_dir or build_tiny_merged(Path(tmp))
        messages = [audit_messages(CLAUSES[i % len(CLAUSES)]) for i in range(args.requests)]
        hf = bench_transformers(
            model_dir, messages, args.new_tokens, args.dtype, args.torch_threads
        )
        vl = bench_vllm(model_dir, messages, args.new_tokens, args.dtype)
    report(model_dir, args, hf, vl)


def audit_messages(clause: str) -> list[dict[str, str]]:
    from legalbuild.prompting import AUDIT_INSTRUCTION, chat_messages

    return chat_messages(DEFAULT_SYSTEM_PROMPT, AUDIT_INSTRUCTION.format(clause=clause))


def build_tiny_merged(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import build_servable_base, random_adapter, tiny_model

    from legalbuild.merging.checks import raise_on_failed_checks
    from legalbuild.merging.merge import merge_adapter

    base = build_servable_base(tiny_model(), root / "base")
    adapter = random_adapter(base, root / "adapter")
    merge_report = merge_adapter(
        base,
        adapter,
        root / "merged",
        MergeSection(),
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        log=lambda m: None,
    )
    raise_on_failed_checks(merge_report)
    return root / "merged"


def bench_transformers(
    model_dir: Path, messages: list, new_tokens: int, dtype: str, threads: int
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    texts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.inference_mode():
        model.generate(
            **{k: v[:1] for k, v in batch.items()}, max_new_tokens=4, do_sample=False
        )  # warm-up
        started = time.perf_counter()
        out = model.generate(**batch, **settings, pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - started
    generated = out[
        :, batch.input_ids.shape[1] :
    ].numel()  # min_new_tokens: every row is full length
    return {"seconds": seconds, "requests": len(messages), "new_tokens": generated}


def bench_vllm(model_dir: Path, messages: list, new_tokens: int, dtype: str) -> dict:
    from openai import OpenAI

    from legalbuild.processes import free_port
    from legalbuild.serve.server import running_server

    settings = ServeSection(dtype=dtype, max_model_len=1024, startup_timeout_s=600)
    started = time.perf_counter()
    with running_server(model_dir, settings, MODEL_NAME, port=free_port(), api_key=None) as url:
        startup = time.perf_counter() - started
        client = OpenAI(base_url=url, api_key="no-key", max_retries=0, timeout=600)

        def ask(conversation: list) -> int:
            response = client.chat.completions.create(
                model=MODEL_NAME,
                messages=conversation,
                max_tokens=new_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return response.usage.completion_tokens

        ask(messages[0])  # warm-up, like transformers'
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(messages)) as pool:
            generated = sum(pool.map(ask, messages))
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "requests": len(messages),
        "new_tokens": generated,
        "startup_s": startup,
    }


def report(model_dir: Path, args: argparse.Namespace, hf: dict, vl: dict) -> None:
    def rates(r: dict) -> tuple[float, float]:
        return r["requests"] / r["seconds"], r["new_tokens"] / r["seconds"]

    hf_rps, hf_tps = rates(hf)
    vl_rps, vl_tps = rates(vl)
    print(
        f"model: {model_dir}  requests: {args.requests}  new tokens each: {args.new_tokens}  "
        f"dtype: {args.dtype}  torch threads: {args.torch_threads}  load average: {os.getloadavg()[0]:.1f}"
    )
    print(f"{'engine':<28}{'seconds':>9}{'req/s':>9}{'tokens/s':>10}")
    print(
        f"{'transformers generate (batch)':<28}{hf['seconds']:>9.2f}{hf_rps:>9.2f}{hf_tps:>10.1f}"
    )
    print(f"{'vLLM server (concurrent)':<28}{vl['seconds']:>9.2f}{vl_rps:>9.2f}{vl_tps:>10.1f}")
    print(f"vLLM / transformers: {vl_rps / hf_rps:.2f}x requests/s, {vl_tps / hf_tps:.2f}x tokens/s "
          f"(vLLM start-up {vl['startup_s']:.0f} s, not counted)")  # fmt: skip
    figures = {
        "transformers": {**hf, "requests_per_s": hf_rps, "tokens_per_s": hf_tps},
        "vllm": {**vl, "requests_per_s": vl_rps, "tokens_per_s": vl_tps},
        "ratio_tokens_per_s": vl_tps / hf_tps,
        "torch_threads": args.torch_threads,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(figures))


if (
    __name__ == "__main__"
):  # vLLM's workers are spawned processes: keep module import side-effect free
    main()
