"""Which pairs normalize keeps: the recipe's length limits, and one copy of each duplicate (exact,
or equal once folded by `clean.fold_text`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from legalbuild.data.clean import fold_text
from legalbuild.data.rows import Pair

if TYPE_CHECKING:
    from legalbuild.recipe import FilterSettings


def filter_reason(pair: Pair, limits: FilterSettings) -> str | None:
    ins, out = len(pair.instruction), len(pair.output)
    checks = (
        (ins == 0, "empty_instruction"),
        (out == 0, "empty_output"),
        (ins < limits.min_instruction_chars, "instruction_too_short"),
        (ins > limits.max_instruction_chars, "instruction_too_long"),
        (out < limits.min_output_chars, "output_too_short"),
        (out > limits.max_output_chars, "output_too_long"),
    )
    return next((reason for failed, reason in checks if failed), None)


class Deduper:
    """Remembers the pairs kept so far; answers (reason, first copy's location) for a repeat."""

    def __init__(self, mode: str):
        self.mode = mode
        self.exact: dict[tuple[str, str], str] = {}
        self.folded: dict[tuple[str, str], str] = {}

    def duplicate_of(self, pair: Pair) -> tuple[str, str] | None:
        if self.mode == "none":
            return None
        exact_key = (pair.instruction, pair.output)
        if (first := self.exact.get(exact_key)) is not None:
            return "duplicate_exact", first
        self.exact[exact_key] = pair.where
        if self.mode == "normalized":
            folded_key = (pair.folded_instruction, fold_text(pair.output))
            if (first := self.folded.get(folded_key)) is not None:
                return "duplicate_normalized", first
            self.folded[folded_key] = pair.where
        return None
