"""What keeps a served model private: the API-key middleware vLLM loads (the vLLM flags
`[serve] extra_args` may not carry are checked when the recipe is read: recipe/vllm_flags.py).

vLLM 0.32 checks its API key only on paths under /v1, /v2, /inference and /cohere: POST
/invocations (the same chat and completion endpoints), /tokenize, /detokenize, /docs,
/openapi.json, /version, /metrics... answer anyone. `KeyMiddleware` closes that gap. vLLM loads
it with `--middleware legalbuild.serve.auth.KeyMiddleware` and adds it last, which makes it the
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
