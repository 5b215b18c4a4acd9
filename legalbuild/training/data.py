"""The train stage's rows: normalized rows read, turned into TRL prompt-completion examples,
measured in tokens with the chat template, and the held-out prompts sampled at each evaluation.
No heavy import at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legalbuild.errors import DataError
from legalbuild.prompting import AUDIT_INSTRUCTION, prompt_completion_row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a normalized split (`id`, `instruction`, `output`, ...)."""
    from legalbuild.data.readers import read_jsonl

    if not path.exists():
        raise DataError(f"{path}: missing (the normalize stage writes it)")
    rows = []
    for line_no, row in read_jsonl(path):
        if not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise DataError(f"{path}:{line_no}: not a normalized row (instruction and output)")
        rows.append(row)
    return rows


def to_dataset(rows: list[dict[str, Any]], system_prompt: str) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [prompt_completion_row(system_prompt, r["instruction"], r["output"]) for r in rows]
    )


def token_lengths(
    tokenizer: Any, rows: list[dict[str, Any]], system_prompt: str
) -> list[tuple[int, int]]:
    """(prompt tokens, prompt+answer tokens) of each row, tokenized with the chat template as TRL does."""
    prompts, fulls = [], []
    for r in rows:
        example = prompt_completion_row(system_prompt, r["instruction"], r["output"])
        prompts.append(
            tokenizer.apply_chat_template(
                example["prompt"], tokenize=False, add_generation_prompt=True
            )
        )
        fulls.append(
            tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
        )
    if not rows:
        return []
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    return [(len(p), len(f)) for p, f in zip(prompt_ids, full_ids, strict=True)]


def length_report(lengths: list[tuple[int, int]], max_length: int) -> dict[str, Any]:
    """How many rows max_length cuts (answer shortened) or empties (prompt alone fills it: TRL drops those)."""
    full = sorted(f for _, f in lengths)
    return {
        "rows": len(lengths),
        "truncated": sum(f > max_length for _, f in lengths),
        "dropped": sum(p >= max_length for p, _ in lengths),
        "tokens": sum(min(f, max_length) for f in full),
        "mean_tokens": round(sum(full) / len(full), 1) if full else 0,
        "p95_tokens": full[int(0.95 * (len(full) - 1))] if full else 0,
        "max_tokens": full[-1] if full else 0,
    }


def sample_prompts(val_rows: list[dict[str, Any]], samples: Any) -> list[dict[str, str]]:
    """The first `count` held-out rows (stable across runs) plus the recipe's extra clauses."""
    prompts = [
        {
            "kind": "val",
            "id": str(r.get("id", "")),
            "instruction": r["instruction"],
            "reference": r["output"],
        }
        for r in val_rows[: samples.count]
    ]
    prompts += [
        {
            "kind": "clause",
            "id": f"clause-{i}",
            "instruction": AUDIT_INSTRUCTION.format(clause=c),
            "reference": "",
        }
        for i, c in enumerate(samples.clauses, 1)
    ]
    return prompts
