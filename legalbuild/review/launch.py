"""`legalbuild review RECIPE`: check the bind address and key, open the reviews folder, attach to
the recipe's server (or start it for the page's lifetime, as `audit --serve` does), and serve the
page with uvicorn until Ctrl-C. Nothing is sent anywhere but the recipe's endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from legalbuild.errors import LegalbuildError, ServeError
from legalbuild.review.uploads import Limits

DEFAULT_PORT = 8600


@dataclasses.dataclass
class PageOptions:
    recipe: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    reviews: Path | None = None  # default: the cache's reviews/ folder
    endpoint: str | None = None  # default: the recipe's [serve] host and port
    model: str | None = None
    serve: bool | None = None  # None: attach when the endpoint answers, else start the server
    cache_dir: Path | None = None
    constrained: bool = False
    concurrency: int = 8
    limits: Limits = dataclasses.field(default_factory=Limits)


def reviews_folder(options: PageOptions) -> Path:
    if options.reviews is not None:
        return options.reviews
    from legalbuild.engine.cache import Store

    store = Store.open(options.cache_dir)
    store.claim()  # a store legalbuild made (or makes now): its reviews/ folder is ours too
    return store.root / "reviews"


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host headers a loopback page answers (None: a public bind, guarded by the key)."""
    from legalbuild.serve.preflight import is_loopback

    if not is_loopback(host):
        return None
    names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
    return frozenset(f"{name}:{port}" for name in names)


def run_review(options: PageOptions, console: Any = None) -> None:
    """Serve the review page until Ctrl-C (see the module docstring)."""
    from legalbuild.contract.client import openai_base_url
    from legalbuild.contract.run import playbook_names, resolve, serving
    from legalbuild.review.app import PageConfig, create_app
    from legalbuild.review.auditing import Auditor, Target
    from legalbuild.review.store import ReviewStore
    from legalbuild.serve.preflight import check_bind, check_port_free
    from legalbuild.serve.server import client_host, say, serves_model

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LegalbuildError(
            "the review page needs FastAPI and uvicorn, which come with vLLM",
            hint="pip install -e '.[serve-cpu]' on a CPU host, '.[serve]' on a GPU host",
        ) from None
    asked = resolve(options.recipe, options.model, options.endpoint, None, serve=False)
    api_key = os.environ.get(asked.key_env) or None
    check_bind(options.host, api_key, asked.key_env)
    check_port_free(options.host, options.port)
    store = ReviewStore.open(reviews_folder(options))
    playbooks = playbook_names(options.recipe)
    with contextlib.ExitStack() as stack:
        url = openai_base_url(asked.url)
        attached = options.serve is not True and serves_model(url, asked.model, api_key)
        if not attached:
            if options.serve is False or options.endpoint:
                raise ServeError(
                    f"nothing serves {asked.model!r} at {url}",
                    hint=f"start it (`legalbuild serve {options.recipe}`), or leave out "
                    "--no-serve/--endpoint and the page starts it",
                )
            url = stack.enter_context(serving(options.recipe, options.cache_dir, api_key, console))
        say(console, f"model {asked.model!r} at {url} ({'attached' if attached else 'started'})")
        target = Target(options.recipe, url, asked.model, options.constrained, options.concurrency)
        config = PageConfig(
            store,
            Auditor(target, options.limits),
            options.limits,
            playbooks,
            asked.model,
            api_key=None if allowed_hosts(options.host, options.port) else api_key,
            hosts=allowed_hosts(options.host, options.port),
        )
        say(console, f"reviews in {store.root}")
        page = f"http://{client_host(options.host)}:{options.port}/"
        say(console, f"review page: {page} (Ctrl-C stops it)")
        serve_page(create_app(config), options.host, options.port)


def serve_page(app: Any, host: str, port: int) -> None:
    """uvicorn in the foreground, quiet: no access log (nothing secret is in a URL, but the page
    is not a web server's log either); Ctrl-C stops it."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, server_header=False
        )
    )
    server.run()
