"""Ask a served Legal Audit Assistant about contract clauses with the plain `openai` client.

    export LEGALBUILD_API_KEY=...        # when the server was started with a key
    python example_client.py --endpoint http://127.0.0.1:8000/v1 --model legal-audit "The Supplier's liability is unlimited."
    python example_client.py --model legal-audit < clauses.txt   # one clause per block, blank lines between

Needs only `pip install openai`. The model was trained with a system prompt and an instruction
wording: send the same ones (the defaults below are legalbuild's; a recipe may set its own
`[data] system_prompt`, pass it with --system-prompt).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from openai import OpenAI

SYSTEM_PROMPT = (
    "You are a legal audit assistant. Given a contract clause, identify what is wrong with it, "
    "explain why it is a risk, and propose a fix. Answer in the structured audit format."
)
INSTRUCTION = "Audit this contract clause:\n\n{clause}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Audit contract clauses against an OpenAI-compatible endpoint."
    )
    parser.add_argument(
        "clauses", nargs="*", help="clauses to audit (default: read blocks from stdin)"
    )
    parser.add_argument(
        "--endpoint", default=os.environ.get("LEGALBUILD_ENDPOINT", "http://127.0.0.1:8000/v1")
    )
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument(
        "--api-key-env", default="LEGALBUILD_API_KEY", help="environment variable holding the key"
    )
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()

    clauses = args.clauses or [
        b.strip() for b in re.split(r"\n[ \t]*\n", sys.stdin.read()) if b.strip()
    ]
    client = OpenAI(base_url=args.endpoint, api_key=os.environ.get(args.api_key_env) or "no-key")
    for clause in clauses:
        started = time.perf_counter()
        response = client.chat.completions.create(
            model=args.model,
            messages=[
                {"role": "system", "content": args.system_prompt},
                {"role": "user", "content": INSTRUCTION.format(clause=clause)},
            ],
            max_tokens=args.max_tokens,
            temperature=0,
        )
        print(
            f"### {clause}\n{response.choices[0].message.content}\n({time.perf_counter() - started:.2f} s)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
