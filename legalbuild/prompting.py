"""Chat messages for one audit query: identical in training, merge probes, eval and serving."""

from __future__ import annotations

# How a bare clause is put to the model: train samples, eval extra sets and `legalbuild audit`.
AUDIT_INSTRUCTION = "Audit this contract clause:\n\n{clause}"
# Curated audit/defect pairs use it too, followed by the playbook line (`legalbuild audit --playbook`).
PLAYBOOK_SUFFIX = "\n\nPlaybook: {playbook}."


def audit_instruction(clause: str, playbook: str | None = None) -> str:
    """The serving-time question for one clause, optionally naming the rulebook playbook."""
    text = AUDIT_INSTRUCTION.format(clause=clause)
    return text + PLAYBOOK_SUFFIX.format(playbook=playbook) if playbook else text


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
