"""The vLLM flags `[serve] extra_args` may not carry because legalbuild sets them itself, with what
to use instead; checked when the recipe is read (ServeSection) and again before a server starts.
Standard library only: the recipe imports it on every `validate` and `plan`."""

from __future__ import annotations

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
