"""Chat messages for one audit query: identical in training, merge probes, eval and serving."""

from __future__ import annotations

from collections.abc import Iterable

# How a bare clause is put to the model: train samples, eval extra sets and `legalbuild audit`.
AUDIT_INSTRUCTION = "Audit this contract clause:\n\n{clause}"
# Curated audit/defect pairs use it too, followed by the playbook line (`legalbuild audit --playbook`).
PLAYBOOK_SUFFIX = "\n\nPlaybook: {playbook}."
# The rules a reviewer checks the clause against, listed after the question: the model picks the
# ones that apply and copies their ids, so a playbook it never saw in training works the same way.
CATALOGUE_HEADER = "\n\nRules to check:"


def rule_catalogue(rules: Iterable[tuple[str, str, str]]) -> str:
    """The block appended to an audit question: one `- id: title (severity)` line per rule."""
    lines = [f"- {rule_id}: {title} ({severity})" for rule_id, title, severity in rules]
    return CATALOGUE_HEADER + "\n" + "\n".join(lines) if lines else ""


def catalogue_rules(instruction: str) -> list[tuple[str, str, str]]:
    """The (id, title, severity) of the rules listed in an instruction's catalogue block (the
    inverse of `rule_catalogue`); [] when it has none."""
    _, found, block = instruction.rpartition(CATALOGUE_HEADER + "\n")
    if not found:
        return []
    rules = []
    for line in block.splitlines():
        body, _, severity = line.removeprefix("- ").rpartition(" (")
        rule_id, _, title = body.partition(": ")
        if not line.startswith("- ") or not rule_id or not severity.endswith(")"):
            break
        rules.append((rule_id, title, severity[:-1]))
    return rules


def audit_instruction(
    clause: str, playbook: str | None = None, rules: Iterable[tuple[str, str, str]] = ()
) -> str:
    """The serving-time question for one clause, optionally naming the rulebook playbook and
    listing the (id, title, severity) of the rules that apply to the clause."""
    text = AUDIT_INSTRUCTION.format(clause=clause)
    if playbook:
        text += PLAYBOOK_SUFFIX.format(playbook=playbook)
    return text + rule_catalogue(rules)


def chat_messages(system_prompt: str, instruction: str) -> list[dict[str, str]]:
    """The prompt side of a conversation: system prompt (when set) then the user's instruction."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": instruction})
    return messages


def prompt_completion_row(
    system_prompt: str, instruction: str, output: str
) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational prompt-completion format: the loss falls on the completion only."""
    return {
        "prompt": chat_messages(system_prompt, instruction),
        "completion": [{"role": "assistant", "content": output}],
    }
