"""What `[serve] extra_args` may not carry, checked when the recipe is read (ServeSection) and again
before a server starts. Standard library only: the recipe imports it on every `validate` and `plan`.

- `MANAGED_FLAGS`: flags legalbuild sets itself (or that would undo what it sets), with what to use
  instead. Always refused.
- `CODE_OPTIONS`: options that make vLLM import Python code named by their value (a file, module,
  class or function), read from vLLM 0.32's parser (entrypoints/launchers/cli_args.py,
  engine/arg_utils.py) and the code behind each option. A recipe is data: these are refused unless
  it sets `[serve] allow_code_loading_flags = true`. Some options load code only with some values
  (`--distributed-executor-backend my.Executor`) or keys of their JSON (`--compilation-config
  '{"inductor_passes": ...}'`, also written `-cc.inductor_passes.x my.fn`): those are checked.

Every spelling vLLM's parser reads as the option counts: `--flag=value`, `--flag.key value`,
underscores for dashes, unambiguous abbreviations (`--hos`, `-t` for -tp).
`legalbuild validate` also parses extra_args with vLLM's own parser (vllm_parse.py)."""

from __future__ import annotations

import dataclasses
import json
import re

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
    (
        ("--help", "-h"),
        "extra_args go to the server; `python -m vllm.entrypoints.openai.api_server --help` lists its options",
    ),
)


# vLLM options whose names begin other options' names: argparse reads them as themselves.
WHOLE_OPTIONS = ("--model", "--grpc", "--reasoning-parser")


def managed_flag(arg: str) -> tuple[str, str] | None:
    """(flag, what to do instead) when vLLM's parser would read `arg` as a flag legalbuild
    manages: `--flag`, `--flag=value`, `--flag.key value` (vLLM's dotted JSON form), underscores
    for dashes (vLLM converts them) and any abbreviation argparse expands (`--hos`, `-t`)."""
    return option_of(arg, MANAGED_FLAGS)


def option_of(arg: str, table: tuple[tuple[tuple[str, ...], str], ...]) -> tuple[str, str] | None:
    """(flag, its text in `table`) of the option vLLM's parser would read `arg` as, among those of
    `table`; None when it is none of them."""
    if arg.startswith("--"):
        name = "--" + arg[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
        if name == "--":  # a bare `--`: what follows is positional, checked on its own
            return None
        matches = [
            (flag, text)
            for flags, text in table
            for flag in flags
            if flag.startswith("--") and flag.startswith(name)
        ]
    elif arg.startswith("-") and len(arg) > 1:
        name = arg.split("=", 1)[0].split(".", 1)[0]
        matches = [
            (flag, text)
            for flags, text in table
            for flag in flags
            if not flag.startswith("--") and (flag.startswith(name) or _value_attached(name, flag))
        ]
    else:
        return None
    exact = [m for m in matches if m[0] == name]
    if name in WHOLE_OPTIONS:  # vLLM has an option of exactly this name: no abbreviation
        return (exact or [None])[0]
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


# ------------------------------------------------------------------------------ code loading
BUILTIN_EXECUTORS = ("ray", "mp", "uni", "external_launcher")  # anything else is a class to import
CODE_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--tool-parser-plugin",), "imports a Python file of tool-call parsers"),
    (("--reasoning-parser-plugin",), "imports a Python file of reasoning parsers"),
    (("--logits-processors",), "imports logits-processor classes by qualified name"),
    (("--worker-cls",), "imports the worker class it names"),
    (("--worker-extension-cls",), "imports a class into every worker process"),
    (("--scheduler-cls",), "imports the scheduler class it names"),
    (("--model-class-overrides",), "imports model classes ('module:class') and registers them"),
    (
        ("--log-config-file",),
        "reads a logging configuration, whose handlers and formatters name classes to import",
    ),
    (
        ("--distributed-executor-backend",),
        "imports an executor class (any value but the built-in ones)",
    ),
    (("--spec-method",), "set to the custom-class method, imports the proposer --spec-model names"),
    (("--spec-model",), "imports a dotted name (package.Class) as a custom proposer class"),
    (
        ("--compilation-config", "-cc"),
        "imports `inductor_passes` functions (while parsing) and a dotted `backend`",
    ),
    (("--kv-transfer-config",), "imports `*module_path` modules (connectors, offloading specs)"),
    (("--ec-transfer-config",), "imports `ec_connector_module_path`"),
    (("--ec-manager-config",), "imports `encoder_cache_manager_cls`"),
    (("--logging-config",), "reads `pylogging_config_file`, which names classes to import"),
    (("--structured-outputs-config",), "imports the file `reasoning_parser_plugin` names"),
    (
        ("--speculative-config", "-sc"),
        "imports a custom proposer (`method: custom_class`, or a dotted `model`)",
    ),
)
# For the options that load code only with some values or JSON keys: whether a value does.
CODE_KEYS = {
    "--compilation-config": {"backend": "dotted", "inductor_passes": "any"},
    "--kv-transfer-config": {"*module_path": "any"},
    "--ec-transfer-config": {"*module_path": "any"},
    "--ec-manager-config": {"encoder_cache_manager_cls": "any"},
    "--logging-config": {"pylogging_config_file": "any"},
    "--structured-outputs-config": {"reasoning_parser_plugin": "any"},
    "--speculative-config": {"method": "custom_class", "model": "qualname"},
}
CODE_KEYS["-cc"], CODE_KEYS["-sc"] = (
    CODE_KEYS["--compilation-config"],
    CODE_KEYS["--speculative-config"],
)
CODE_VALUES = {
    "--distributed-executor-backend": "executor",
    "--spec-method": "custom_class",
    "--spec-model": "qualname",
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def code_loading_args(args: list[str]) -> list[str]:
    """One line per element of `[serve] extra_args` that makes vLLM import code (see CODE_OPTIONS)."""
    problems = []
    for i, arg in enumerate(args):
        found = option_of(arg, CODE_OPTIONS)
        if found is None:
            continue
        flag, loads = found
        head, eq, inline = arg.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        why = _loads_code(flag, head.partition(".")[2], value)
        if why is not None:
            shown = head.split(".", 1)[0]  # never echo a value
            via = "" if shown == flag else f" (read by vLLM as {flag})"
            problems.append(f"{shown}{via} {loads}{why}")
    return problems


def _loads_code(flag: str, dotted: str, value: str | None) -> str | None:
    """ "" or a detail when this use of `flag` loads code; None when it does not."""
    if flag in CODE_VALUES:
        return "" if value is None or code_value(CODE_VALUES[flag], value) else None
    if flag not in CODE_KEYS:
        return ""
    if dotted:  # --flag.key.sub value: one key path
        keys = [k.rstrip("+") for k in dotted.split(".")]
        tree: object = value
        for key in reversed(keys):
            tree = {key: tree}
    else:
        try:
            tree = json.loads(value) if value is not None else None
        except ValueError:
            return " (its value is not JSON, so it cannot be checked for code)"
    return "" if code_keys(tree, CODE_KEYS[flag]) else None


def code_keys(tree: object, rules: dict[str, str], depth: int = 0) -> list[str]:
    """The keys anywhere in `tree` (dicts, lists, dataclasses such as vLLM's configs) that name
    code by `rules` ({key or "*suffix": how its value loads code}); dashes count as underscores."""
    if isinstance(tree, dict):
        items = list(tree.items())
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        items = [(f.name, getattr(tree, f.name, None)) for f in dataclasses.fields(tree)]
    elif isinstance(tree, list | tuple):
        items = [("", v) for v in tree]
    else:
        return []
    found = []
    for key, value in items:
        name = str(key).replace("-", "_")
        rule = next(
            (r for k, r in rules.items() if name == k or (k[0] == "*" and name.endswith(k[1:]))),
            None,
        )
        if rule and value not in (None, "", {}, []) and (rule == "any" or code_value(rule, value)):
            found.append(name)
        if depth < 32:
            found += code_keys(value, rules, depth + 1)
    return found


def code_value(rule: str, value: object) -> bool:
    text = str(value)
    if rule == "executor":
        return text not in BUILTIN_EXECUTORS
    if rule == "custom_class":
        return text == "custom_class"
    if rule == "dotted":
        return "." in text
    # "qualname": vLLM's test for a custom proposer path (SpeculativeConfig._is_custom_proposer_path)
    parts = text.split(".")
    return (
        not text.startswith(("http://", "https://", "file://"))
        and "/" not in text
        and len(parts) >= 2
        and all(_IDENTIFIER.match(p) for p in parts)
    )
