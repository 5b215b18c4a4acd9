"""An Ollama Modelfile for the exported GGUF: a Go TEMPLATE that renders a conversation exactly as
the model's Jinja chat template does, the recipe's system prompt, a stop at the end-of-turn token
and greedy decoding (temperature 0), as legalbuild's audits decode.

Ollama cannot run Jinja, so the template is derived by rendering the chat template on probe
conversations: for each role, the text before and after a message's content, the text a
conversation opens with when it has no system message (SmolLM2 adds a default system turn), and
the generation prompt. The derivation is checked on other conversations before the Modelfile is
written; a template that is not "one wrapper per message" (it reorders, drops or merges
messages) is refused with a clear error rather than exported wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from legalbuild.errors import LegalbuildError

Render = Callable[[list[dict[str, str]], bool], str]
ROLES = ("system", "user", "assistant")
_PROBE = {
    "system": "LEGALBUILDPROBESYSTEM",
    "user": "LEGALBUILDPROBEUSER",
    "assistant": "LEGALBUILDPROBEASSISTANT",
}


class TemplateError(LegalbuildError):
    """The chat template cannot be written as an Ollama TEMPLATE."""


def derive_wrappers(render: Render) -> dict[str, Any]:
    """{"first": text a conversation without a system turn opens with, "system"/"user"/"assistant":
    (before, after) the content, "generation": the assistant prompt}."""
    convo: list[dict[str, str]] = []
    wrappers: dict[str, Any] = {}
    previous = ""
    for role in ROLES:
        convo.append({"role": role, "content": _PROBE[role]})
        text = render(convo, False)
        if not text.startswith(previous) or text[len(previous) :].count(_PROBE[role]) != 1:
            raise _refuse(f"adding a {role} turn does not append text")
        before, after = text[len(previous) :].split(_PROBE[role])
        wrappers[role] = (before, after)
        previous = text
    with_prompt = render(convo[:2], True)
    plain = render(convo[:2], False)
    if not with_prompt.startswith(plain):
        raise _refuse("the generation prompt is not appended at the end")
    wrappers["generation"] = with_prompt[len(plain) :]
    alone = render([{"role": "user", "content": _PROBE["user"]}], False)
    user_turn = "".join((wrappers["user"][0], _PROBE["user"], wrappers["user"][1]))
    if not alone.endswith(user_turn):
        raise _refuse("a conversation without a system turn does not end with the user's turn")
    wrappers["first"] = alone[: -len(user_turn)]
    for part in _texts(wrappers):
        if "{{" in part or '"""' in part:
            raise _refuse(f"its text {part!r} holds '{{{{' or '\"\"\"'")
    return wrappers


def compose(wrappers: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """The prompt the wrappers give (what the Go template renders), for the derivation check."""
    out = wrappers["first"] if messages and messages[0]["role"] != "system" else ""
    for m in messages:
        before, after = wrappers[m["role"]]
        out += before + m["content"] + after
    return out + wrappers["generation"]


def check_wrappers(wrappers: dict[str, Any], render: Render, conversations: list[list]) -> None:
    for convo in conversations:
        if compose(wrappers, convo) != render(convo, True):
            raise _refuse(f"it renders a {len(convo)}-message conversation differently")


def go_template(wrappers: dict[str, Any]) -> str:
    """The TEMPLATE: a subset of Go's text/template (range, if/else if eq, index, .Role, .Content)."""
    parts = []
    if wrappers["first"]:
        parts.append(
            f'{{{{ if ne (index .Messages 0).Role "system" }}}}{wrappers["first"]}{{{{ end }}}}'
        )
    parts.append("{{ range .Messages }}")
    for i, role in enumerate(ROLES):
        before, after = wrappers[role]
        keyword = "if" if i == 0 else "else if"
        parts.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}')
    parts.append("{{ end }}{{ end }}")
    parts.append(wrappers["generation"])
    return "".join(parts)


def modelfile(
    gguf_name: str, wrappers: dict[str, Any], system_prompt: str, stops: list[str], num_ctx: int
) -> str:
    if '"""' in system_prompt:
        raise TemplateError(
            'the system prompt holds """, which a Modelfile cannot quote',
            hint="edit [data] system_prompt",
        )
    lines = [
        "# Made by legalbuild: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go_template(wrappers)}"""',
    ]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {num_ctx}"]
    return "\n".join(lines) + "\n"


def _texts(wrappers: dict[str, Any]) -> list[str]:
    return [wrappers["first"], wrappers["generation"], *(t for r in ROLES for t in wrappers[r])]


def _refuse(why: str) -> TemplateError:
    return TemplateError(
        f"the model's chat template cannot be written as an Ollama TEMPLATE: {why}",
        hint="export --format gguf (llama.cpp reads the Jinja template from the GGUF) and write "
        "the Modelfile's TEMPLATE by hand",
    )
