"""Contract audit speed: the same 40-clause contract against the same endpoint, one request at a
time vs `--concurrency` at a time, in one run; prints the ratio and how many answers agree.

    .venv/bin/python bench/audit_bench.py --model-dir MERGED_MODEL_DIR     # starts vLLM, stops it
    .venv/bin/python bench/audit_bench.py --endpoint http://127.0.0.1:8000/v1 --model legal-audit

The contract is real text: the packaged NDA corpus (nda-review-cli), then licence texts
(licensedcode-data), cut with the audit's own splitter, the first 40 clauses kept. Both passes send exactly the requests
`legalbuild audit` sends (recipe default system prompt, temperature 0, --max-tokens), through
`legalbuild.contract.client.audit_concurrently`. The sequential pass runs first, then the
concurrent one; nothing else of this script runs meanwhile. One JSON line closes the output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from legalbuild.contract.client import Endpoint, audit_concurrently  # noqa: E402
from legalbuild.contract.document import Document  # noqa: E402
from legalbuild.contract.split import document_clauses  # noqa: E402
from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT, ServeSection  # noqa: E402

MODEL_NAME = "bench"


def contract_clauses(n: int) -> list[str]:
    """The first `n` clauses of the packaged NDA documents, split as `legalbuild audit` splits."""
    from legalbuild.curation.corpora import load_corpus
    from legalbuild.recipe import ContractCorpus

    texts: list[str] = []
    corpora = [
        ContractCorpus(kind="nda_review"),
        ContractCorpus(kind="licensedcode", max_documents=20),
    ]
    for doc in (d for corpus in corpora for d in load_corpus(corpus, REPO)):
        lines = doc.text.count("\n") + 1
        document = Document(doc.doc_id, "text", doc.text, list(range(1, lines + 1)))
        texts += [c.text for c in document_clauses(document)]
        if len(texts) >= n:
            return texts[:n]
    raise SystemExit(f"only {len(texts)} clauses in the packaged corpora")


def cpu_flags() -> list[str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return []
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")
    flags = re.search(r"^Flags:\s*(.*)$", out, re.M)
    return [f for f in wanted if flags and f in flags.group(1).split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: 8 clauses against the tests' stub OpenAI server (20 ms an answer), for CI",
    )
    where.add_argument("--model-dir", type=Path, help="merged model folder: serve it with vLLM")
    where.add_argument("--endpoint", help="a running OpenAI-compatible server")
    parser.add_argument("--model", default=MODEL_NAME, help="served model name (with --endpoint)")
    parser.add_argument("--clauses", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    args = parser.parse_args()

    if args.smoke:
        args.clauses, args.concurrency, args.max_tokens = 8, 4, 16
    texts = contract_clauses(args.clauses)
    with contextlib.ExitStack() as stack:
        url, model = args.endpoint, args.model
        if args.smoke:
            sys.path.insert(0, str(REPO / "tests"))
            from helpers import OpenAIStub

            url = stack.enter_context(OpenAIStub(model, delay=lambda _clause: 0.02)).url
        if args.model_dir:
            from legalbuild.processes import free_port
            from legalbuild.serve.server import running_server

            settings = ServeSection(dtype=args.dtype, startup_timeout_s=900)
            url, model = (
                stack.enter_context(
                    running_server(
                        args.model_dir, settings, MODEL_NAME, port=free_port(), api_key=""
                    )
                ),
                MODEL_NAME,
            )
        endpoint = Endpoint(url, model, DEFAULT_SYSTEM_PROMPT, None, args.max_tokens)
        runs = {}
        for name, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
            outcome = audit_concurrently(texts, None, endpoint, concurrency=concurrency)
            if outcome.interrupted:
                raise SystemExit("interrupted")
            runs[name] = outcome
            tokens = sum(r["completion_tokens"] or 0 for r in outcome.results)
            errors = sum(bool(r["error"]) for r in outcome.results)
            print(
                f"{name:10} concurrency {concurrency:2}: {outcome.elapsed_s:7.1f} s, "
                f"{len(texts) / outcome.elapsed_s * 60:5.1f} clauses/min, {tokens} tokens "
                f"({tokens / outcome.elapsed_s:.1f}/s), {errors} failed",
                flush=True,
            )
    seq, conc = runs["sequential"].results, runs["concurrent"].results
    same = sum(a["answer"] == b["answer"] for a, b in zip(seq, conc, strict=True))
    ratio = runs["sequential"].elapsed_s / runs["concurrent"].elapsed_s
    print(f"concurrent is {ratio:.2f}x faster; identical answers: {same}/{len(texts)}")
    print(
        json.dumps(
            {
                "clauses": len(texts),
                "concurrency": args.concurrency,
                "max_tokens": args.max_tokens,
                "sequential_s": runs["sequential"].elapsed_s,
                "concurrent_s": runs["concurrent"].elapsed_s,
                "ratio": round(ratio, 2),
                "identical_answers": same,
                "cpu_flags": cpu_flags(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
