"""`legalbuild sweep`: search recipe settings with Optuna on top of the stage cache; `sweep apply`
writes a trial's values into the recipe; `sweep report` writes the study's table and plots. The
work is in legalbuild.sweep; these parse options, call it, and print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from legalbuild.commands.common import AsJson, CacheDir, console

SweepArg = Annotated[Path, typer.Argument(help="The sweep file (TOML).", show_default=False)]
Storage = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="postgresql://USER@HOST:PORT/DB: one study shared by workers on several hosts "
        "(default: the sweep file's `storage`, else a journal file in <sweep>-study/).",
        show_default=False,
    ),
]


class DefaultRun(TyperGroup):
    """`legalbuild sweep FILE` means `legalbuild sweep run FILE`."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="sweep",
    cls=DefaultRun,
    help=(
        "Search learning rate, weight decay, LoRA rank or any recipe key with Optuna; trials share "
        "the stage cache (what a trial does not change is built once).\n\n"
        "Example: legalbuild sweep sweep.toml --jobs 2, then legalbuild sweep report sweep.toml "
        "and legalbuild sweep apply sweep.toml (the best trial's values into a copy of the recipe)."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("run")
def run(
    sweep_file: SweepArg,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", min=1, help="Trials at once on this host (default: the file's)."),
    ] = None,
    storage: Storage = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker",
            help="Join the study as one more worker (another host): run trials until the study "
            "has its count; the process started without --worker builds the winner.",
        ),
    ] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Run the sweep: trials until the file's count is finished (complete or pruned), then the
    winner on the test split. Resumes a study that was stopped or killed.

    Example: legalbuild sweep sweep.toml --jobs 2 --cache-dir /shared/cache"""
    from legalbuild.sweep.runner import run_sweep
    from legalbuild.sweep.spec import load_sweep

    sweep = load_sweep(sweep_file)
    result = run_sweep(sweep, cache_dir, jobs=jobs, storage=storage, worker=worker, console=console)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    console.print(f"study {result.study}: {counts} ({result.wall_s / 60:.1f} min this run)")
    if result.best:
        values = ", ".join(f"{k} = {v!r}" for k, v in result.best["values"].items())
        console.print(
            f"best: trial {result.best['trial']} ({sweep.settings.objective} = "
            f"{result.best['value']:.4g} on validation): {escape(values)}"
        )
    if result.test:
        console.print(
            f"winner on the {result.test['split']} split: {sweep.settings.objective} = "
            f"{result.test['objective']}"
        )
    console.print(
        f"next: legalbuild sweep report {sweep_file}; legalbuild sweep apply {sweep_file}"
    )


@app.command("apply")
def apply(
    sweep_file: SweepArg,
    trial: Annotated[
        int | None, typer.Argument(help="Trial number (default: the best trial).")
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place",
            help="Edit the recipe itself, after copying it to <recipe>.before-trial-N.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The copy to write, in the recipe's folder (default <recipe>.trial-N.toml)."
        ),
    ] = None,
    storage: Storage = None,
    cache_dir: CacheDir = None,
) -> None:
    """Write a trial's values (default: the best trial's) into the recipe: a copy beside it, or the
    recipe itself with --in-place (a backup is kept). Its build is a cache hit of the trial.

    Example: legalbuild sweep apply sweep.toml 3 && legalbuild build recipe.trial-3.toml"""
    from legalbuild.sweep.apply import apply_trial
    from legalbuild.sweep.spec import load_sweep

    applied = apply_trial(
        load_sweep(sweep_file),
        trial,
        in_place=in_place,
        out=out,
        storage=storage,
        cache_dir=cache_dir,
    )
    values = ", ".join(f"{k} = {v!r}" for k, v in applied.values.items())
    console.print(f"wrote trial {applied.trial}'s values ({escape(values)}) into {applied.path}")
    if applied.backup:
        console.print(f"the recipe as it was: {applied.backup}")
    if applied.same_keys:
        console.print(f"cache hit of the trial: {', '.join(applied.same_keys)} (same keys)")
    if applied.changed_keys:
        console.print(
            f"[yellow]note:[/] {', '.join(applied.changed_keys)} key(s) differ from the trial's: "
            "the recipe or legalbuild changed since; a build trains again"
        )


@app.command("report")
def report(
    sweep_file: SweepArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for sweep.html, sweep.json and the PNGs (default <sweep>-study/report/)."
        ),
    ] = None,
    storage: Storage = None,
    as_json: AsJson = False,
) -> None:
    """The study as a table and plots (objective by trial, parallel coordinates, importances,
    validation loss) in one self-contained HTML page, plus sweep.json; --json prints the JSON.

    Example: legalbuild sweep report sweep.toml --out docs/sweep"""
    from legalbuild.sweep.checks import storage_url
    from legalbuild.sweep.report import write_sweep_report
    from legalbuild.sweep.spec import load_sweep
    from legalbuild.sweep.study import load_study

    sweep = load_sweep(sweep_file)
    study = load_study(sweep, storage_url(storage or sweep.settings.storage))
    html, summary = write_sweep_report(sweep, study, out)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    console.print(f"wrote {html} (and sweep.json, PNGs beside it)")
