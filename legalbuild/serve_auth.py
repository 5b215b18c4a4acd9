"""What keeps a served model private: the API-key middleware vLLM loads, and the vLLM flags
`[serve] extra_args` may not carry because legalbuild sets them itself.

vLLM 0.32 checks its API key only on paths under /v1, /v2, /inference and /cohere: POST
/invocations (the same chat and completion endpoints), /tokenize, /detokenize, /docs,
/openapi.json, /version, /metrics... answer anyone. `KeyMiddleware` closes that gap. vLLM loads
it with `--middleware legalbuild.serve_auth.KeyMiddleware` and adds it last, which makes it the
outermost layer of its app: it sees every HTTP and WebSocket request before routing and refuses
(401, vLLM's body) every path but an explicit allowlist. Middleware inside vLLM's own process
rather than a reverse proxy of ours: no second port or hop to secure, and nothing reaches the app
around it. A server we start with a key is probed after start-up to prove the guard is active.

This module is imported by the vLLM API server process: standard library only (no starlette, no
torch), so it costs nothing to import and cannot fail on a dependency. The key comes from the
environment (VLLM_API_KEY, which legalbuild fills from `[serve] api_key_env`), never from argv.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

KEY_ENV = "VLLM_API_KEY"  # vLLM's own variable: one key for its check and ours
PUBLIC_PATHS_ENV = "LEGALBUILD_SERVE_PUBLIC_PATHS"  # comma-separated exact paths open to anyone
HEALTH_PATH, METRICS_PATH = "/health", "/metrics"
MIDDLEWARE = f"{__name__}.KeyMiddleware"
UNAUTHORIZED_BODY = json.dumps({"error": "Unauthorized"}).encode()  # what vLLM's own check answers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def public_paths(public_metrics: bool) -> tuple[str, ...]:
    """The paths a keyed server answers without the key: /health always, /metrics on request."""
    return (HEALTH_PATH, METRICS_PATH) if public_metrics else (HEALTH_PATH,)


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyMiddleware:
    """ASGI middleware: `Authorization: Bearer <key>` on every request, except exact allowlisted
    paths. Without a key in the environment it refuses everything but the allowlist (fails closed).
    All methods are guarded, OPTIONS included (vLLM lets OPTIONS through; CORS preflights from
    browsers are therefore refused, which a keyed model server does not need)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self.digest = key_digest(key.encode("utf-8")) if key else None
        listed = os.environ.get(PUBLIC_PATHS_ENV, HEALTH_PATH)
        self.public = frozenset(p.strip() for p in listed.split(",") if p.strip())

    def authorized(self, scope: Scope) -> bool:
        if self.digest is None:
            return False
        header = next(
            (v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"), b""
        )
        scheme, _, token = header.partition(b" ")  # raw bytes: a UTF-8 key matches as sent
        # Digests have one length whatever the token's, so compare_digest takes constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(key_digest(token), self.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # lifespan (start-up and shutdown events) is no request; allowlisted paths need no key
        exempt = scope["type"] not in ("http", "websocket") or route_path(scope) in self.public
        if exempt or self.authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accept makes the server answer 403
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})


def route_path(scope: Scope) -> str:
    """The path the router matches (starlette's get_route_path): `root_path` removed."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


# ------------------------------------------------------------------------- managed vLLM flags
# Flags legalbuild sets itself, or that would undo what it sets, with what to use instead.
ADVICE_HOST = "set [serve] host (or `legalbuild serve --host`)"
MANAGED_FLAGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--model",), "the model is the merge stage's output: change the recipe and rebuild"),
    (("--served-model-name",), "set [serve] served_model_name"),
    (("--host",), ADVICE_HOST),
    (("--port",), "set [serve] port (or `legalbuild serve --port`)"),
    (("--uds",), f"legalbuild serves over TCP: {ADVICE_HOST} and [serve] port"),
    (
        ("--api-key",),
        "put the key in the environment variable named by [serve] api_key_env "
        "(a key on the command line shows in `ps`)",
    ),
    (
        ("--middleware",),
        "legalbuild installs its own API-key middleware; [serve] public_metrics opens /metrics",
    ),
    (
        ("--trust-remote-code", "--no-trust-remote-code"),
        "legalbuild never runs code shipped in a model folder",
    ),
    (
        ("--config",),
        "a vLLM config file can set any flag legalbuild manages: use [serve] keys and extra_args",
    ),
    (
        ("--grpc", "--grpc-port"),
        "legalbuild serves vLLM's HTTP API, where the API key is checked",
    ),
    (("--max-model-len",), "set [serve] max_model_len"),
    (("--dtype",), "set [serve] dtype"),
    (("--tensor-parallel-size", "-tp"), "set [serve] tensor_parallel_size"),
    (("--pipeline-parallel-size", "-pp"), "set [serve] pipeline_parallel_size"),
    (("--data-parallel-size", "-dp"), "set [serve] data_parallel_size"),
    (
        ("--gpu-memory-utilization", "--device-memory-utilization"),
        "set [serve] gpu_memory_utilization",
    ),
    (("--enforce-eager", "--no-enforce-eager"), "set [serve] enforce_eager"),
)


def managed_flag(arg: str) -> tuple[str, str] | None:
    """(flag, what to do instead) when vLLM's parser would read `arg` as a flag legalbuild
    manages: `--flag`, `--flag=value`, `--flag.key value` (vLLM's dotted JSON form), underscores
    for dashes (vLLM converts them) and any abbreviation argparse expands (`--hos`, `-t`)."""
    if arg.startswith("--"):
        name = "--" + arg[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
        if name == "--":  # a bare `--`: what follows is positional, checked on its own
            return None
        matches = [
            (flag, advice)
            for flags, advice in MANAGED_FLAGS
            for flag in flags
            if flag.startswith("--") and flag.startswith(name)
        ]
    elif arg.startswith("-") and len(arg) > 1:
        name = arg.split("=", 1)[0]
        matches = [
            (flag, advice)
            for flags, advice in MANAGED_FLAGS
            for flag in flags
            if not flag.startswith("--") and (flag.startswith(name) or _value_attached(name, flag))
        ]
    else:
        return None
    exact = [m for m in matches if m[0] == name]
    return (exact or matches or [None])[0]


def _value_attached(name: str, flag: str) -> bool:
    """`-tp2` is -tp with its value attached; `-dpn` is another option (vLLM's -dpn), not -dp."""
    return name.startswith(flag) and len(name) > len(flag) and not name[len(flag)].isalpha()


def refused_extra_args(args: list[str]) -> list[str]:
    """One line per element of `[serve] extra_args` that sets a flag legalbuild manages."""
    problems = []
    for arg in args:
        found = managed_flag(arg)
        if found:
            flag, advice = found
            shown = arg.split("=", 1)[0]  # never echo a value: it may be a key
            via = "" if shown == flag else f" (read by vLLM as {flag})"
            problems.append(f"{shown}{via} is managed by legalbuild: {advice}")
    return problems
