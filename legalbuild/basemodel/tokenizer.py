"""The tokenizer facts every engine needs: which token ends an assistant turn, and a generation
config that stops there. The base stage writes them; the merge stage writes them again for the
merged folder and checks them."""

from __future__ import annotations

from typing import Any

from legalbuild.errors import StageFailedError


def template_end_token(tokenizer: Any) -> str:
    """The special token the chat template closes an assistant turn with (`<|im_end|>` for ChatML),
    found by rendering a turn; the tokenizer's eos when the template ends turns with plain text."""
    marker = "LEGALBUILD_END_PROBE"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
        tokenize=False,
    )
    tail = rendered.split(marker, 1)[-1].lstrip()
    special = sorted(
        {*tokenizer.all_special_tokens, *(t for t in tokenizer.get_added_vocab())},
        key=len,
        reverse=True,
    )
    for token in special:
        if token and tail.startswith(token):
            return token
    if tokenizer.eos_token is None:
        raise StageFailedError(
            "the tokenizer has neither an end-of-turn special token nor an eos token"
        )
    return tokenizer.eos_token


def stop_at_end_of_turn(config: Any, tokenizer: Any) -> Any:
    """`config` (a transformers GenerationConfig) with eos = the template's end-of-turn token
    first, then the tokenizer's eos, then whatever the config listed, so every engine stops where a
    turn ends; pad and bos from the tokenizer."""
    listed = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    wanted = [
        tokenizer.convert_tokens_to_ids(template_end_token(tokenizer)),
        tokenizer.eos_token_id,
        *listed,
    ]
    eos_ids = list(dict.fromkeys(i for i in wanted if i is not None))
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    )
    config.bos_token_id = tokenizer.bos_token_id
    return config
