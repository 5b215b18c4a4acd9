"""Ask a served model about many clauses at once, with the real `openai` client (async).

At most `concurrency` requests are in flight (vLLM batches them: on a 2-core CPU, 8 at a time
answer several times faster than one by one); results keep the clauses' order whatever order the
answers arrive in. A request that fails (connection lost, timeout, HTTP 5xx or 429) is retried
`retries` times with exponential backoff, then recorded as that clause's `error`; a request the
server rejects (HTTP 400, e.g. a clause longer than the context) is recorded at once. Ctrl-C
(SIGINT) cancels the requests in flight, closes the connections (vLLM aborts the generations) and
returns what had finished, with `interrupted` set.

    outcome = audit_concurrently(texts, questions, Endpoint(url, "legal-audit", prompt, key))
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

from legalbuild.answer_format import parse_audit
from legalbuild.contract.questions import Question
from legalbuild.errors import DataError, ServeError
from legalbuild.prompting import audit_instruction, chat_messages

DEFAULT_MAX_TOKENS = 512
DEFAULT_CONCURRENCY = 8
RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx


class EndpointUnreachable(ServeError):
    """Nothing answers at the endpoint (the CLI adds the `legalbuild serve` command to start one)."""


@dataclasses.dataclass
class Endpoint:
    url: str  # OpenAI-compatible base URL, with or without /v1
    model: str
    system_prompt: str
    api_key: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    timeout_s: float = 600.0

    @property
    def base_url(self) -> str:
        return openai_base_url(self.url)


@dataclasses.dataclass
class Outcome:
    results: list[dict[str, Any] | None]  # None: not audited (interrupted before it finished)
    interrupted: bool
    elapsed_s: float

    @property
    def finished(self) -> int:
        return sum(r is not None for r in self.results)


def audit_concurrently(
    texts: list[str],
    questions: list[Question] | None,
    endpoint: Endpoint,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    retries: int = 2,
    backoff_s: float = 1.0,
    on_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> Outcome:
    """One result per text, in order (see `audit_result`); `on_done(index, result)` as each one
    finishes. ServeError before any clause is sent when the server is unreachable, refuses the
    key or does not serve the model."""
    questions = questions or [Question(audit_instruction(t)) for t in texts]
    results: list[dict[str, Any] | None] = [None] * len(texts)
    started = time.perf_counter()
    run = _Run(texts, questions, endpoint, max(1, concurrency), retries, backoff_s, on_done)
    try:
        interrupted = asyncio.run(run.all(results))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the event loop took over SIGINT
        interrupted = True
    return Outcome(results, interrupted, round(time.perf_counter() - started, 3))


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
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """`audit_concurrently` for callers that want the list of results (all of them, in order)."""
    target = Endpoint(endpoint, model, system_prompt, api_key, max_tokens, temperature, timeout_s)
    outcome = audit_concurrently(clauses, questions, target, concurrency=concurrency)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return [r for r in outcome.results if r is not None]


@dataclasses.dataclass
class _Run:
    texts: list[str]
    questions: list[Question]
    endpoint: Endpoint
    concurrency: int
    retries: int
    backoff_s: float
    on_done: Callable[[int, dict[str, Any]], None] | None

    async def all(self, results: list[dict[str, Any] | None]) -> bool:
        """Fill `results`; True when cancelled (Ctrl-C) before all finished."""
        from openai import AsyncOpenAI

        # The server may run without a key; the client insists on one, and an unused one is harmless.
        async with AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.api_key or "no-key",
            max_retries=0,  # retries are ours: counted, backed off, reported per clause
            timeout=self.endpoint.timeout_s,
        ) as client:
            await check_endpoint(client, self.endpoint.base_url, self.endpoint.model)
            gate = asyncio.Semaphore(self.concurrency)

            async def one(i: int) -> None:
                async with gate:
                    results[i] = await self.ask(client, i)
                if self.on_done:
                    self.on_done(i, results[i])

            tasks = [asyncio.create_task(one(i)) for i in range(len(self.texts))]
            try:
                await asyncio.gather(*tasks)
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return True
        return False

    async def ask(self, client: Any, i: int) -> dict[str, Any]:
        import openai

        e = self.endpoint
        question = self.questions[i]
        messages = chat_messages(e.system_prompt, question.instruction)
        for attempt in range(1, self.retries + 2):
            started = time.perf_counter()
            try:
                response = await client.chat.completions.create(
                    model=e.model,
                    messages=messages,
                    max_tokens=e.max_tokens,
                    temperature=e.temperature,
                    extra_body=question.extra_body(),
                )
            except openai.APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {exc.message}"
                retry = exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUS
            except openai.APIConnectionError as exc:  # includes timeouts
                error, retry = f"{type(exc).__name__}: {exc}", True
            else:
                choice, usage = response.choices[0], response.usage
                return audit_result(
                    self.texts[i],
                    choice.message.content or "",
                    time.perf_counter() - started,
                    finish_reason=choice.finish_reason,
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    attempts=attempt,
                    model=response.model,
                )
            if not retry or attempt > self.retries:
                return audit_result(
                    self.texts[i],
                    None,
                    time.perf_counter() - started,
                    error=error,
                    attempts=attempt,
                )
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")


def audit_result(clause: str, answer: str | None, latency_s: float, **extra: Any) -> dict[str, Any]:
    """{clause, answer, findings, risk, latency_s, finish_reason, prompt_tokens,
    completion_tokens, attempts, model, error}; `findings` is None when the answer does not follow
    the audit format (its text is kept in `answer`)."""
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
        "attempts": extra.get("attempts", 1),
        "model": extra.get("model"),
        "error": extra.get("error"),
    }


_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def checked_url(url: str, given: str = "--endpoint") -> str:
    """`url` when it is an http(s) URL with a host name or address and a port in 1..65535; a
    DataError naming where it came from (`given`) otherwise, before any request."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.netloc.rpartition("@")[2]
        host = host.rsplit(":", 1)[0] if not host.endswith("]") and ":" in host else host
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
    except ValueError as exc:
        problem = str(exc)
    else:
        problem = (
            "not an http:// or https:// URL" if parts.scheme not in ("http", "https")
            else "no host" if not host
            else f"{host!r} is not a host name or address" if not _HOST.match(host)
            else "port 0" if port == 0
            else "spaces or control characters" if any(c.isspace() or ord(c) < 32 for c in url)
            else None
        )  # fmt: skip
    if problem:
        raise DataError(
            f"{given} {url[:300]!r}: not a server URL ({problem})",
            hint="give the server's base URL, e.g. --endpoint http://127.0.0.1:8000/v1 "
            "(an IPv6 address in brackets: http://[::1]:8000/v1)",
        )
    return url


def openai_base_url(endpoint: str) -> str:
    """ "http://host:8000", ".../v1" and ".../v1/" all mean the OpenAI API root ".../v1"."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1") else f"{endpoint}/v1"


async def check_endpoint(client: Any, base_url: str, model: str) -> None:
    import openai

    try:
        served = [m.id for m in (await client.models.list()).data]
    except openai.AuthenticationError:
        raise ServeError(
            f"{base_url} refused the API key (401)",
            hint="pass the key the server was started with (the env var named by [serve] api_key_env)",
        ) from None
    except openai.APIConnectionError:
        raise EndpointUnreachable(
            f"cannot reach {base_url}: nothing answers there",
            hint="start the server with `legalbuild serve RECIPE`, or check --endpoint",
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
