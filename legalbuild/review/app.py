"""The review page's web app (FastAPI, which vLLM brings; server-rendered HTML from pages.py and
static/review.js, nothing fetched from elsewhere).

    GET  /                                start page: upload form, the reviews on disk
    GET  /login, POST /login              the API key form (only when the page requires the key)
    POST /api/reviews?playbook=P          the contract as the raw body, its name in X-Filename
    GET  /reviews/{id}                    one review: progress, filters, contract and findings
    GET  /reviews/{id}/panes              the two panes alone (the page refreshes them)
    GET  /api/reviews/{id}/progress       {status, done, total, error}
    POST /api/reviews/{id}/decisions      {clause, finding, decision: accept|reject|reopen, text}
    POST /api/reviews/{id}/resume         audit the clauses not answered yet
    GET  /reviews/{id}/download/{name}    reviewed.docx, report.html, record.json

Guards (one middleware, before any route): on a loopback bind, the Host header must name the
loopback address the page serves (a web page elsewhere cannot reach it through DNS rebinding);
a POST from another origin is refused, and API posts need the `X-Legalbuild` header (which no
cross-site form can send); with a key, every route but the login form and the static files needs
the session cookie the form sets (HttpOnly, SameSite=Strict) or `Authorization: Bearer KEY`.
The key travels only in the form body or that header, never in a URL, and nothing logs it.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import secrets
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)

from legalbuild.review import pages
from legalbuild.review.auditing import Auditor
from legalbuild.review.decisions import decide
from legalbuild.review.downloads import KINDS as DOWNLOADS
from legalbuild.review.downloads import write_download
from legalbuild.review.store import ReviewStore, now
from legalbuild.review.uploads import Limits, Refused, read_upload, receive, safe_name
from legalbuild.serve.auth import key_digest

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
COOKIE = "legalbuild_review"
OPEN_PATHS = ("/login", "/static/review.css", "/static/review.js")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer would make form posts send "Origin: null"
    "cache-control": "no-store",
}


@dataclasses.dataclass
class PageConfig:
    store: ReviewStore
    auditor: Auditor
    limits: Limits
    playbooks: list[str]
    model: str
    api_key: str | None = None  # the page requires it when set
    hosts: frozenset[str] | None = None  # the Host headers allowed (loopback binds), None: any
    sessions: set[str] = dataclasses.field(default_factory=set)

    def authorized(self, request: Any) -> bool:
        if self.api_key is None:
            return True
        if request.cookies.get(COOKIE, "") in self.sessions:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.key_matches(token)

    def key_matches(self, given: str) -> bool:
        assert self.api_key is not None
        return hmac.compare_digest(key_digest(given.encode()), key_digest(self.api_key.encode()))


def create_app(config: PageConfig) -> FastAPI:
    app = FastAPI(title="legalbuild review", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(guard(config))
    add_page_routes(app, config)
    add_api_routes(app, config)
    return app


def refusal(exc: Refused):
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status)


def guard(config: PageConfig):
    async def check(request, call_next):
        host = request.headers.get("host", "")
        if config.hosts is not None and host not in config.hosts:
            return PlainTextResponse(f"unexpected Host header {host[:100]!r}", status_code=421)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and urllib.parse.urlsplit(origin).netloc != host:
                return PlainTextResponse("a request from another site", status_code=403)
            if request.url.path.startswith("/api/") and "x-legalbuild" not in request.headers:
                return PlainTextResponse("missing X-Legalbuild header", status_code=403)
        if request.url.path not in OPEN_PATHS and not config.authorized(request):
            if request.method == "GET" and not request.url.path.startswith("/api/"):
                return RedirectResponse("/login", status_code=303)
            return JSONResponse({"error": "sign in first (the API key)"}, status_code=401)
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return check


def add_page_routes(app, config: PageConfig) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index():
        reviews = config.store.all()
        return pages.index_page(reviews, config.playbooks, config.limits, config.model)

    @app.get("/login", response_class=HTMLResponse)
    def login_form():
        return pages.login_page()

    @app.post("/login")
    async def login(request: Request):
        try:
            body = await small_body(request, 4096)
        except Refused as exc:
            return refusal(exc)
        key = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
        if config.api_key is None or not config.key_matches(key):
            return HTMLResponse(pages.login_page("That is not the key."), status_code=401)
        token = secrets.token_urlsafe(32)
        config.sessions.add(token)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            return Response(status_code=404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get("/reviews/{review_id}", response_class=HTMLResponse)
    def review_page(review_id: str):
        review = found(config, review_id)
        state = config.auditor.state(review)
        panes = pages.panes_html(config.auditor.current(review), review.decisions)
        return pages.review_page(review, state, panes, config.model)

    @app.get("/reviews/{review_id}/panes", response_class=HTMLResponse)
    def panes(review_id: str):
        review = found(config, review_id)
        return pages.panes_html(config.auditor.current(review), review.decisions)

    @app.get("/reviews/{review_id}/download/{name}")
    def download(review_id: str, name: str):
        review = found(config, review_id)
        try:
            raw = config.auditor.job(review).document.raw
            path, filename = write_download(review, name, raw)
        except Refused as exc:
            return refusal(exc)
        return FileResponse(path, media_type=DOWNLOADS[name], filename=filename)

    @app.get("/logout")
    def logout(request: Request):
        config.sessions.discard(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/login" if config.api_key else "/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    app.get("/favicon.ico")(lambda: Response(status_code=204))


def add_api_routes(app, config: PageConfig) -> None:
    @app.post("/api/reviews")
    async def upload(request: Request):
        return await accept_upload(config, request)

    @app.get("/api/reviews/{review_id}/progress")
    def progress(review_id: str):
        return config.auditor.state(found(config, review_id))

    @app.post("/api/reviews/{review_id}/decisions")
    async def decision(review_id: str, request: Request):
        review = found(config, review_id)
        try:
            asked = json.loads(await small_body(request, 64 * 1024))
            record = config.auditor.current(review)
            with review.lock:
                decisions = decide(
                    record, review.decisions, int(asked["clause"]), int(asked["finding"]),
                    str(asked["decision"]), asked.get("text"), now(),
                )  # fmt: skip
                review.save_decisions(decisions)
        except Refused as exc:
            return refusal(exc)
        except (ValueError, KeyError, TypeError):
            return refusal(Refused("not a decision: send {clause, finding, decision, text}"))
        return {"ok": True}

    @app.post("/api/reviews/{review_id}/resume")
    def resume(review_id: str):
        review = found(config, review_id)
        if review.meta.get("status") not in ("interrupted", "failed"):
            return JSONResponse({"error": "this review is not interrupted"}, status_code=409)
        config.auditor.submit(review)
        return {"ok": True}


async def accept_upload(config: PageConfig, request: Request):
    """A new review from the request body (see uploads.py): 201 with its URL, or the refusal."""
    try:
        name = safe_name(urllib.parse.unquote(request.headers.get("x-filename", "")))
        playbook = request.query_params.get("playbook") or None
        if playbook is not None and playbook not in config.playbooks:
            raise Refused(f"no playbook {playbook[:80]!r}", hint="choose one from the list")
        if shutil.disk_usage(config.store.root).free < 4 * config.limits.max_bytes:
            raise Refused("the disk holding the reviews is nearly full", status=507)
    except Refused as exc:
        return refusal(exc)
    review_id, folder = config.store.new_folder()
    path = folder / "upload" / name
    try:
        declared = request.headers.get("content-length")
        limits = config.limits
        await receive(request.stream(), path, int(declared) if declared else None, limits)
        job = await run_in_threadpool(read_upload, path, limits)
    except Refused as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return refusal(exc)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    meta = {
        "file": name, "kind": job.document.kind, "playbook": playbook,
        "found": job.found, "total": len(job.clauses), "done": 0, "status": "queued",
    }  # fmt: skip
    review = config.store.commit(review_id, folder, meta)
    config.auditor.jobs[review.id] = job
    config.auditor.submit(review)
    return JSONResponse({"id": review.id, "url": f"/reviews/{review.id}"}, status_code=201)


def found(config: PageConfig, review_id: str):
    review = config.store.get(review_id)
    if review is None:
        raise HTTPException(status_code=404, detail="no such review")
    return review


async def small_body(request, cap: int) -> bytes:
    """The request body, at most `cap` bytes (Refused 413 past it)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise Refused(f"a request body over {cap:,} bytes", status=413)
    return body
