"""The `legalbuild` command: a thin layer over legalbuild.engine (plan, build, status) and the stage modules.

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
from rich.markup import escape
from rich.table import Table

from legalbuild.commands import deploy
from legalbuild.commands import sweep as sweep_commands
from legalbuild.commands.common import (
    AsJson,
    CacheDir,
    RecipeArg,
    Until,
    console,
    err_console,
    loaded_of,
    log,
    open_recipe,
    store_of,
)
from legalbuild.commands.evaluate import evaluate
from legalbuild.commands.review import review
from legalbuild.errors import LegalbuildError

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


# ------------------------------------------------------------------------------- recipes
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the recipe.")] = Path("recipe.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter recipe (the embedded default: SmolLM2-135M + packaged legal data)."""
    from legalbuild.recipe.starter import starter_recipe

    if path.exists() and not force:
        raise LegalbuildError(f"{path} exists", hint="pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_recipe(path.stem), encoding="utf-8")
    console.print(f"wrote {path}; next: [bold]legalbuild plan {path}[/]")


@app.command()
def validate(recipe: RecipeArg) -> None:
    """Check a recipe: TOML syntax, every key and value (errors name file, line and key), and
    [serve] extra_args with vLLM's own parser where vLLM is installed.

    Example: legalbuild validate recipes/legal-audit-smollm2.toml"""
    from legalbuild.engine.graph import stage_names
    from legalbuild.recipe.loading import validate_recipe

    checked = validate_recipe(recipe)
    r = checked.recipe
    console.print(
        f"[green]ok[/] {recipe}: project {r.project.name!r}, stages {' -> '.join(stage_names(r))}"
    )
    for note in checked.notes:
        console.print(f"  {note}", markup=False)


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
    locked: Annotated[
        bool,
        typer.Option(
            "--locked",
            help="Compare every stage's key with the lock beside the recipe; exit 4 naming each "
            "stage that differs and why (nothing is built). Example, on a fresh clone: "
            "legalbuild plan recipes/legal-audit-smollm2.toml --locked",
        ),
    ] = False,
    cache_dir: CacheDir = None,
    as_json: AsJson = False,
) -> None:
    """Show each stage as cached or to-build, and WHY (which input changed since the lock)."""
    from legalbuild.engine.status import locked_states

    loaded, store = open_recipe(recipe, cache_dir)
    states, mismatch = locked_states(loaded, store, until, force or [])
    if as_json:
        _print_json(loaded, store, states)
    else:
        table = Table("stage", "action", "key", *(["lock"] if locked else []), "why", box=None)
        for s in states:
            action = "[green]cached[/]" if s.cached else "[yellow]build[/]"
            lock = ["same" if s.locked else str(s.locked_key or "none")[:12]] if locked else []
            table.add_row(s.stage, action, s.key[:12], *lock, escape("\n".join(s.reasons)))
        console.print(table)
    if locked and mismatch:
        raise mismatch


def _print_json(loaded, store, states) -> None:
    from legalbuild.engine.status import as_json

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
    from legalbuild.engine import pipeline

    loaded, store = open_recipe(recipe, cache_dir)
    result = pipeline.build(
        loaded, store, until=until, force=force or [], locked=locked, log=log, console=console
    )
    _print_build_summary(result)


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
    from legalbuild.engine.status import stage_states

    loaded, store = open_recipe(recipe, cache_dir)
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
    from legalbuild.engine import maintenance
    from legalbuild.errors import CacheCorruptError

    store = store_of(cache_dir)
    refs = maintenance.current_refs([recipe], store) if recipe else None
    results = maintenance.verify(store, refs)
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
    """Remove this recipe's current cache entries (all stages, or --stage ones; `--stage gguf` the
    GGUF exports of its merged model, which also go with `--stage merge`)."""
    from legalbuild.engine import maintenance

    removed, skipped = maintenance.clean(*open_recipe(recipe, cache_dir), stage)
    for name, key in removed:
        console.print(f"removed {name} {key[:12]}")
    for message in skipped:
        console.print(f"[yellow]skipped[/] {escape(message)}")


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
    from legalbuild.engine import maintenance

    store = store_of(cache_dir)
    result = maintenance.gc(store, maintenance.current_refs(recipes, store), dry_run=dry_run)
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

    loaded = loaded_of(recipe)
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


# ------------------------------------------------------ serving, audit, review, export, report
for _command in (deploy.serve, deploy.audit, deploy.export, deploy.report, review):
    app.command()(_command)
app.command("eval")(evaluate)

# ------------------------------------------------------------------------------- sweeps
app.add_typer(sweep_commands.app, name="sweep")


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
        from legalbuild.files import display_path

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
