"""One contract audit from end to end, for the CLI (which only parses options and prints):
read and split the document, check the outputs asked for, optionally start the recipe's server
for the duration, ask about every clause concurrently, and write the outputs.

    job = prepare("contract.pdf", outs=[Path("reviewed.docx")])
    outcome = audit_concurrently(job.texts, questions, endpoint, concurrency=8)
    record = job.record(outcome, meta); written = write_outputs(job, record)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from legalbuild.contract.client import Outcome
from legalbuild.contract.document import Document
from legalbuild.contract.record import audit_record, write_json, write_markdown
from legalbuild.contract.split import ContractClause, read_clauses
from legalbuild.errors import DataError, LegalbuildError
from legalbuild.files import check_output_file, write_replacing

OUTPUT_KINDS = (".docx", ".html", ".md", ".json")
# Measured with the default recipe's merged SmolLM2-135M on a 2-core CPU (bench/audit_bench.py,
# 2026-11-30): 11.5 s a clause one at a time, 7.9x faster 8 at a time.
SECONDS_PER_CLAUSE = 11.5
LARGE_DOCUMENT = 100  # clauses: above this the CLI warns with the count and an estimated time
DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"  # without a recipe


@dataclasses.dataclass
class Job:
    document: Document
    clauses: list[ContractClause]  # those to audit (the first max_clauses)
    found: int  # clauses in the document (in the part read, when reading stopped at the cap)
    outs: list[Path]
    source: str = "-"  # the path read ("-": standard input): never written over

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.clauses]

    def record(self, outcome: Outcome, meta: dict[str, Any]) -> dict[str, Any]:
        doc = self.document
        document = {"name": doc.name, "kind": doc.kind, "unit": doc.unit, "clauses": self.found}
        document["complete"] = doc.complete
        meta = {"document": document, **meta}
        meta.update(elapsed_s=outcome.elapsed_s, interrupted=outcome.interrupted)
        return audit_record(self.clauses, outcome.results, meta)


def prepare(
    source: str | Path,
    outs: list[Path] = (),
    encoding: str | None = None,
    max_clauses: int | None = None,
) -> Job:
    """The document read and split (only as far as the first `max_clauses` clauses), the outputs
    checked: every error a user can fix comes before any request is sent."""
    outs = [Path(o) for o in outs]
    check_outputs(outs, [source])
    document, clauses = read_clauses(source, encoding, max_clauses)
    if not clauses:
        raise DataError(
            f"{document.name}: no clause found (no paragraph of contract prose)",
            hint="check that this is the contract; a scanned PDF needs OCR first",
        )
    chosen = clauses[:max_clauses] if max_clauses else clauses
    return Job(document, chosen, len(clauses), outs, str(source))


def check_outputs(outs: list[Path], inputs: list[str | Path] = ()) -> None:
    """Each --out: a known kind, in an existing folder, named once, not an input, and not
    anything but a new or regular file (never a folder, link, FIFO or device)."""
    seen: set[str] = set()
    for out in outs:
        if out.suffix.lower() not in OUTPUT_KINDS:
            raise DataError(
                f"--out {out}: unknown kind {out.suffix or '(no extension)'!r}",
                hint=f"end the name with one of {', '.join(OUTPUT_KINDS)}",
            )
        if not out.parent.is_dir():
            raise DataError(f"--out {out}: no folder {out.parent}", hint="create it first")
        if out.is_dir():
            raise DataError(f"--out {out}: is a folder", hint="give a file name")
        real = os.path.realpath(out)
        if real in seen:
            raise DataError(f"--out {out}: named twice", hint="give each output once")
        seen.add(real)
        try:
            check_output_file(out, inputs)
        except LegalbuildError as exc:
            raise DataError(f"--out {exc.message}", hint=exc.hint) from None


def estimated_seconds(clauses: int, concurrency: int) -> float:
    return clauses * SECONDS_PER_CLAUSE / estimated_speedup(concurrency)


def estimated_speedup(concurrency: int) -> float:
    """How much faster `concurrency` requests at a time finish than one by one, a little under
    the bench's 7.9x at 8 (2-core CPU); beyond 8 not counted."""
    return 1 + 0.85 * (min(concurrency, 8) - 1)


def write_outputs(job: Job, record: dict[str, Any]) -> list[tuple[Path, str]]:
    """Each --out written by its extension; (path, what) pairs."""
    from legalbuild.contract.docx_out import write_docx
    from legalbuild.contract.html import write_html

    written = []
    # the commented copy of a DOCX needs all of it: one read only up to --max-clauses (thousands
    # of paragraphs, maybe a hostile file) gets a new document of its audited clauses
    raw = job.document.raw if job.document.complete else None
    for out in job.outs:
        kind = out.suffix.lower()
        check_output_file(out, [job.source])  # again: the folder may have changed since
        if kind == ".docx":
            n = write_replacing(out, lambda p: write_docx(record, p, raw))
            source = "the contract" if raw else "the clauses"
            written.append((out, f"{source} with {n} comment(s)"))
        elif kind == ".html":
            write_replacing(out, lambda p: write_html(record, p))
            written.append((out, "HTML report"))
        elif kind == ".md":
            write_replacing(out, lambda p: write_markdown(record, p))
            written.append((out, "Markdown report"))
        else:
            write_replacing(out, lambda p: write_json(record, p))
            written.append((out, "JSON record (schema legalbuild/contract/audit.schema.json)"))
    return written


@dataclasses.dataclass
class AuditSettings:
    """How an audit runs: the options of `legalbuild audit` (and of the review page)."""

    recipe: Path | None = None
    playbook: str | None = None
    serve: bool = False  # start the recipe's server for the audit, stop it after
    constrained: bool = False
    concurrency: int = 8
    retries: int = 2
    max_tokens: int = 512
    cache_dir: Path | None = None


def conduct(
    job: Job,
    asked: Asked,
    settings: AuditSettings,
    console: Any = None,
    progress: Callable[[Callable[[Any], Outcome]], Outcome] | None = None,
) -> tuple[dict[str, Any], Outcome]:
    """Ask the served model about every clause of `job` (starting the recipe's server for the
    duration with `settings.serve`) and return (the audit record, the outcome). `progress` wraps
    the asking (it is given a function of `on_done` and calls it), e.g. a progress bar."""
    from legalbuild.contract.client import Endpoint, EndpointUnreachable, audit_concurrently
    from legalbuild.contract.questions import playbook_questions
    from legalbuild.errors import ServeError

    api_key = os.environ.get(asked.key_env)
    questions = playbook_questions(job.texts, settings.playbook, asked.rules, settings.constrained)
    with contextlib.ExitStack() as stack:
        url = asked.url
        if settings.serve:
            assert settings.recipe is not None  # resolve() refused --serve without a recipe
            url = stack.enter_context(
                serving(settings.recipe, settings.cache_dir, api_key, console)
            )
        target = Endpoint(url, asked.model, asked.system_prompt, api_key, settings.max_tokens)

        def ask(on_done: Any) -> Outcome:
            return audit_concurrently(
                job.texts,
                questions,
                target,
                concurrency=settings.concurrency,
                retries=settings.retries,
                on_done=on_done,
            )

        try:
            outcome = progress(ask) if progress is not None else ask(None)
        except EndpointUnreachable as exc:
            recipe = settings.recipe
            command = f"legalbuild serve {recipe}" if recipe else "legalbuild serve RECIPE"
            raise ServeError(
                exc.message,
                hint=f"start the server in another shell: `{command}` (or pass --serve to start "
                "it for this audit), or point --endpoint at a running one",
            ) from None
    meta = {
        "model": asked.model, "endpoint": target.base_url,
        "recipe": str(settings.recipe) if settings.recipe else None,
        "recipe_key": asked.recipe_key, "playbook": settings.playbook,
        "constrained": settings.constrained, "max_tokens": settings.max_tokens,
        "temperature": target.temperature, "concurrency": settings.concurrency,
    }  # fmt: skip
    return job.record(outcome, meta), outcome


def check_failures(record: dict[str, Any], settings: AuditSettings) -> None:
    """ServeError when requests failed after their retries (the outputs mark them failed)."""
    from legalbuild.errors import ServeError

    failed, total = record["summary"]["failed"], len(record["clauses"])
    if failed:
        raise ServeError(
            f"{failed} of {total} requests failed after {settings.retries} retries (marked "
            "failed in the outputs; the other clauses are there)",
            hint="check the server's log; rerun to retry them",
        )


@dataclasses.dataclass
class Asked:
    """Who is asked and how: from the recipe when there is one, else the defaults."""

    system_prompt: str
    model: str
    key_env: str  # the environment variable holding the API key
    url: str
    rules: list[Any]  # the playbook's rules (empty without --playbook)
    recipe_key: str | None = None  # the merge key in the recipe's lock (read before any request)


def resolve(
    recipe_path: Path | None,
    model: str | None,
    endpoint: str | None,
    playbook: str | None,
    serve: bool,
) -> Asked:
    from legalbuild.contract.client import checked_url
    from legalbuild.contract.questions import playbook_rules
    from legalbuild.errors import LegalbuildError
    from legalbuild.recipe import DEFAULT_SYSTEM_PROMPT
    from legalbuild.recipe.loading import load_recipe

    if recipe_path is None:
        if playbook or serve:
            raise LegalbuildError(
                f"--{'playbook' if playbook else 'serve'} needs --recipe",
                hint="legalbuild audit FILE --recipe RECIPE ...",
            )
        if not model:
            raise LegalbuildError("no model name", hint="pass --recipe RECIPE or --model NAME")
        url = checked_url(endpoint) if endpoint else DEFAULT_ENDPOINT
        return Asked(DEFAULT_SYSTEM_PROMPT, model, "LEGALBUILD_API_KEY", url, [])
    recipe = load_recipe(recipe_path)
    rules = []
    if playbook:
        rules = playbook_rules(rulebook_specs(recipe), recipe_path.resolve().parent, playbook)
    return Asked(
        recipe.data.system_prompt,
        model or recipe.served_model_name,
        recipe.serve.api_key_env,
        checked_url(endpoint) if endpoint else default_endpoint(recipe.serve),
        rules,
        recipe_key(recipe_path),
    )


def rulebook_specs(recipe: Any) -> list[str]:
    """The rulebooks a recipe's playbooks come from: its [curate] ones, else the packaged set."""
    from legalbuild.curation.rulebook import PACKAGED_REDLINE

    return list(recipe.curate.rulebooks) if recipe.curate else [PACKAGED_REDLINE]


def playbook_names(recipe_path: Path) -> list[str]:
    """The playbooks `--playbook` (and the review page) may name for this recipe, sorted."""
    from legalbuild.curation.rulebook import load_rulebooks
    from legalbuild.recipe.loading import load_recipe

    specs = rulebook_specs(load_recipe(recipe_path))
    return sorted(load_rulebooks(specs, recipe_path.resolve().parent).by_playbook())


def recipe_key(recipe_path: Path) -> str | None:
    """The merge stage's key in the recipe's lock file: which built model the recipe serves."""
    from legalbuild.engine.lock import locked_stage, read_lock

    merge = locked_stage(read_lock(recipe_path.resolve()), "merge")
    return merge.get("key") if merge else None


def default_endpoint(serve_settings: Any) -> str:
    from legalbuild.contract.client import checked_url
    from legalbuild.serve.server import client_host

    url = f"http://{client_host(serve_settings.host)}:{serve_settings.port}/v1"
    return checked_url(url, "[serve] host and port make")


@contextlib.contextmanager
def serving(
    recipe_path: Path, cache_dir: Path | None, api_key: str | None, console: Any
) -> Iterator[str]:
    """The recipe's merged model served by vLLM on a free loopback port for the `with` block, then
    stopped (the whole process group; `legalbuild serve`'s machinery). Yields the base URL."""
    from legalbuild.engine import pipeline
    from legalbuild.engine.cache import Store
    from legalbuild.processes import free_port
    from legalbuild.serve.server import running_server

    store = Store.open(cache_dir)
    loaded = pipeline.Loaded.from_path(recipe_path)
    merged = pipeline.locate_output(loaded, store, "merge", verify=True) / "model"
    recipe = loaded.recipe
    # Start-up has its own stop-signal handling; during the audit, Ctrl-C is the audit's (it
    # finishes cleanly) and the `with` stops the server after. The server dies with this process
    # (parent-death signal) should it be killed outright.
    with running_server(
        merged, recipe.serve, recipe.served_model_name, host="127.0.0.1", port=free_port(),
        api_key=api_key, console=console,
    ) as url:  # fmt: skip
        yield url
