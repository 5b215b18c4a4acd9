"""`legalbuild review`: the review page (its work is in legalbuild.review)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from legalbuild.commands.common import CacheDir, RecipeArg, err_console
from legalbuild.commands.deploy import AuditConcurrency, AuditConstrained, AuditEndpoint, AuditModel

ReviewsDir = Annotated[
    Path | None,
    typer.Option(
        "--reviews",
        help="Folder that keeps the reviews (uploads, findings, decisions): new, empty, or one "
        "legalbuild made (default: reviews/ in the cache).",
    ),
]
Serve = Annotated[
    bool | None,
    typer.Option(
        "--serve/--no-serve",
        help="Start the recipe's server for the page (--serve), or only attach to a running "
        "one (--no-serve). Default: attach when it answers, else start it.",
        show_default=False,
    ),
]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (use 1 to 65535)")
    return value


def review(
    recipe: RecipeArg,
    host: Annotated[
        str,
        typer.Option(
            help="Bind address. Anything but loopback needs the API key ([serve] api_key_env), "
            "which the page then asks for."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=_port, help="The page's port.")] = 8600,
    reviews: ReviewsDir = None,
    endpoint: AuditEndpoint = None,
    model: AuditModel = None,
    serve: Serve = None,
    constrained: AuditConstrained = False,
    concurrency: AuditConcurrency = 8,
    max_upload_mb: Annotated[int, typer.Option(min=1, max=2048, help="Largest upload.")] = 20,
    max_pages: Annotated[int, typer.Option(min=1, help="Most pages of a PDF.")] = 300,
    max_clauses: Annotated[int, typer.Option(min=1, help="Clauses audited per contract.")] = 500,
    cache_dir: CacheDir = None,
) -> None:
    """A web page to review contracts with the recipe's model, for people who do not use a terminal.

    Upload a PDF, DOCX, Markdown or text contract, choose a playbook, watch the clauses audited,
    accept (after editing) or reject each finding, and download the reviewed DOCX (a comment on
    every kept finding, accepted fixes as tracked changes), the HTML report and the JSON record.
    Reviews are kept on disk and reopen after a restart.

    Example: legalbuild review recipes/legal-audit-smollm2.toml, then open http://127.0.0.1:8600/"""
    from legalbuild.review.launch import PageOptions, run_review
    from legalbuild.review.uploads import Limits

    limits = Limits(max_bytes=max_upload_mb * 2**20, max_pages=max_pages, max_clauses=max_clauses)
    options = PageOptions(
        recipe, host, port, reviews, endpoint, model, serve, cache_dir, constrained, concurrency,
        limits,
    )  # fmt: skip
    run_review(options, console=err_console)
