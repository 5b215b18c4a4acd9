"""Audit clauses against a served model with the real `openai` client.

Each clause becomes one chat completion: the recipe's system prompt, then the same instruction
wording training and eval use (`legalbuild.prompting.audit_instruction`), at temperature 0 by
default. With a playbook, the question lists the playbook's rules that apply to the clause, as
training did; with `constrained`, the request carries vLLM's `structured_outputs` regex of the
audit format (rule ids limited to the listed rules). The answer is parsed with
`legalbuild.answer_format.parse_audit`; an answer that does not follow the format keeps its text
and gets `findings = None`.

    clauses = read_clauses(Path("clauses.txt").read_text())     # blocks separated by blank lines
    results = audit_clauses(clauses, "http://127.0.0.1:8000/v1", "legal-audit", system_prompt, api_key)
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path
from typing import Any

from legalbuild.answer_format import parse_audit
from legalbuild.data.files import decode_utf8
from legalbuild.errors import DataError, ServeError
from legalbuild.prompting import audit_instruction, chat_messages

DEFAULT_MAX_TOKENS = 512

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


# ----------------------------------------------------------------------------------------- input
def read_clauses(text: str) -> list[str]:
    """Clauses from text: one per block, blocks separated by one or more blank lines. Lines within
    a block stay as they are (a clause may be wrapped over several lines)."""
    text = text.replace("\r\n", "\n")
    return [block.strip() for block in _BLANK_LINES.split(text) if block.strip()]


def load_clauses(source: str | Path) -> list[str]:
    """`read_clauses` of a file, or of standard input when `source` is "-"."""
    if str(source) == "-":
        binary = getattr(sys.stdin, "buffer", None)  # None when stdin is a text stream already
        text = decode_utf8(binary.read(), "<stdin>", what="input") if binary else sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(
                f"{path}: no such file of clauses", hint="one clause per block, blank lines between"
            )
        text = decode_utf8(path.read_bytes(), str(path), what="file of clauses")
    clauses = read_clauses(text)
    if not clauses:
        raise DataError(
            f"{source}: no clause found", hint="one clause per block, blank lines between"
        )
    return clauses


# -------------------------------------------------------------------------------------- querying
def audit_clauses(
    clauses: list[str],
    endpoint: str,
    model: str,
    system_prompt: str,
    api_key: str | None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    *,
    questions: list[Question] | None = None,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """One result per clause, in order: {clause, answer, findings, risk, latency_s, finish_reason,
    prompt_tokens, completion_tokens, error}. A request the server rejects (e.g. a clause longer
    than the context) is recorded in `error`; an unreachable server, a wrong key or an unknown
    model raise ServeError before any clause is sent."""
    from openai import OpenAI

    base_url = openai_base_url(endpoint)
    # The server may run without a key; the client insists on one, and an unused one is harmless.
    client = OpenAI(
        base_url=base_url, api_key=api_key or "no-key", max_retries=1, timeout=timeout_s
    )
    check_endpoint(client, base_url, model)
    questions = questions or [Question(audit_instruction(clause)) for clause in clauses]
    return [
        audit_one(client, clause, model, system_prompt, max_tokens, temperature, question)
        for clause, question in zip(clauses, questions, strict=True)
    ]


@dataclasses.dataclass
class Question:
    """What is sent for one clause: the user message and, for constrained decoding, the regex."""

    instruction: str
    regex: str | None = None

    def extra_body(self) -> dict[str, Any] | None:
        # vLLM >= 0.12 reads `structured_outputs`; the older `guided_regex` is silently ignored.
        return {"structured_outputs": {"regex": self.regex}} if self.regex else None


def playbook_questions(
    clauses: list[str], playbook: str | None, rules: list[Any], constrained: bool
) -> list[Question]:
    """One question per clause: the playbook's applicable rules listed (as in training) and, when
    `constrained`, the audit-format regex citing only those rules."""
    from legalbuild.answer_format import audit_regex
    from legalbuild.curation.pairs import rules_for_text

    out = []
    for clause in clauses:
        applicable = rules_for_text(clause, rules) if rules else []
        catalogue = [(r.id, r.title, r.severity) for r in applicable]
        regex = audit_regex([(r.id, r.severity) for r in applicable]) if constrained else None
        out.append(Question(audit_instruction(clause, playbook, catalogue), regex))
    return out


def playbook_rules(rulebook_specs: list[str], base_dir: Path, playbook: str) -> list[Any]:
    """The rules of one playbook of the recipe's rulebooks; DataError naming the ones there are."""
    from legalbuild.curation.rulebook import load_rulebooks

    by_playbook = load_rulebooks(rulebook_specs, base_dir).by_playbook()
    if playbook not in by_playbook:
        raise DataError(
            f"playbook {playbook!r} is not in the recipe's rulebooks",
            hint=f"choose one of: {', '.join(sorted(by_playbook))}",
        )
    return by_playbook[playbook]


def openai_base_url(endpoint: str) -> str:
    """ "http://host:8000", ".../v1" and ".../v1/" all mean the OpenAI API root ".../v1"."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1") else f"{endpoint}/v1"


def check_endpoint(client: Any, base_url: str, model: str) -> None:
    import openai

    try:
        served = [m.id for m in client.models.list().data]
    except openai.AuthenticationError:
        raise ServeError(
            f"{base_url} refused the API key (401)",
            hint="pass the key the server was started with (the env var named by [serve] api_key_env)",
        ) from None
    except openai.APIConnectionError:
        raise ServeError(
            f"cannot reach {base_url}",
            hint="start the server with `legalbuild serve`, or check --endpoint",
        ) from None
    except openai.APIStatusError as exc:
        raise ServeError(
            f"{base_url}/models answered HTTP {exc.status_code}: not an OpenAI-compatible server?",
            hint="--endpoint should be the server's base URL, e.g. http://127.0.0.1:8000/v1",
        ) from None
    if model not in served:
        raise ServeError(
            f"{base_url} does not serve a model named {model!r}; it serves {served}",
            hint="use the served model name ([serve] served_model_name, default: the project name)",
        )


def audit_one(
    client: Any,
    clause: str,
    model: str,
    system_prompt: str,
    max_tokens: int,
    temperature: float,
    question: Question,
) -> dict[str, Any]:
    import openai

    messages = chat_messages(system_prompt, question.instruction)
    started = time.perf_counter()
    try:
        response = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body=question.extra_body(),
        )
    except openai.BadRequestError as exc:  # this clause only (e.g. longer than the context)
        return audit_result(clause, None, time.perf_counter() - started, error=str(exc))
    except openai.APIConnectionError:
        raise ServeError(
            "the server stopped answering during the audit", hint="check its log"
        ) from None
    except openai.APIStatusError as exc:
        raise ServeError(f"the server failed with HTTP {exc.status_code}: {exc.message}") from None
    choice = response.choices[0]
    usage = response.usage
    return audit_result(
        clause,
        choice.message.content or "",
        time.perf_counter() - started,
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


def audit_result(clause: str, answer: str | None, latency_s: float, **extra: Any) -> dict[str, Any]:
    audit = parse_audit(answer) if answer else None
    return {
        "clause": clause,
        "answer": answer,
        "findings": dataclasses.asdict(audit) if audit else None,
        "risk": audit.risk if audit else None,
        "latency_s": round(latency_s, 4),
        "finish_reason": extra.get("finish_reason"),
        "prompt_tokens": extra.get("prompt_tokens"),
        "completion_tokens": extra.get("completion_tokens"),
        "error": extra.get("error"),
    }


# ---------------------------------------------------------------------------------------- output
def format_results(results: list[dict[str, Any]]) -> str:
    """Plain-text report: each clause, its risk and findings (or why there are none), its latency."""
    blocks = []
    for i, r in enumerate(results, 1):
        head = f"[{i}] {shorten(r['clause'])}"
        if r["error"]:
            blocks.append(f"{head}\n  error: {r['error']}")
            continue
        if r["findings"] is None:
            blocks.append(
                f"{head}\n  answer not in the audit format ({r['latency_s']:.2f} s):\n  {shorten(r['answer'], 300)}"
            )
            continue
        lines = [f"{head}\n  risk: {r['risk']} ({r['latency_s']:.2f} s)"]
        for f in r["findings"]["findings"]:
            lines.append(f"  - {f['title']} [{f['rule_id']}] ({f['severity']})")
            if f["fix"]:
                lines.append(f"    fix: {f['fix']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def shorten(text: str | None, width: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
