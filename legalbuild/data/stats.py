"""Counts, warnings and stats.json of a normalize run."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from legalbuild.data.rows import CURATED_GROUP_FIELD

if TYPE_CHECKING:
    from legalbuild.data.rows import Pair
    from legalbuild.recipe import DataSection


def check_target(n_train: int, data: DataSection, report: Report) -> None:
    low, high = data.target_min_pairs, data.target_max_pairs
    if not low <= n_train <= high:
        side = "fewer" if n_train < low else "more"
        report.warnings.append(
            f"{n_train} training pairs: {side} than the target range {low}..{high} "
            "(data.target_min_pairs/target_max_pairs; 2,000-5,000 suits a domain specialisation)"
        )


@dataclass
class Report:
    rows_in: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    bad_rows: int = 0
    filtered: int = 0
    rows_without_group: int = 0
    split_units: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def drop_summary(self) -> str:
        return (
            ", ".join(f"{reason} {n}" for reason, n in sorted(self.drops.items())) or "none dropped"
        )

    def stats(
        self, train: list[Pair], val: list[Pair], data: DataSection, test: list[Pair] = ()
    ) -> dict[str, Any]:
        if self.rows_without_group:
            self.warnings.append(
                f"{self.rows_without_group} rows had no group value and were split by row"
            )
        kept = [*train, *val, *test]
        per_source: dict[str, dict[str, int]] = {
            name: {"train": 0, "val": 0, "test": 0} for name in self.rows_in
        }
        for side, pairs in (("train", train), ("val", val), ("test", test)):
            for pair in pairs:
                per_source[pair.source][side] += 1
        outputs_per_instruction: dict[str, set[str]] = {}
        for pair in kept:
            outputs_per_instruction.setdefault(pair.folded_instruction, set()).add(pair.output)
        return {
            "rows_in": dict(self.rows_in),
            "rows_in_total": sum(self.rows_in.values()),
            "rows_out": {"train": len(train), "val": len(val), "test": len(test)},
            "pairs_per_source": per_source,
            "drops": dict(sorted(self.drops.items())),
            "bad_rows": self.bad_rows,
            "filtered": self.filtered,
            "duplicates": {
                "mode": data.dedup,
                "exact": self.drops["duplicate_exact"],
                "normalized": self.drops["duplicate_normalized"],
            },
            "cross_split_removed": self.drops["in_validation"],
            "instructions_with_several_outputs": sum(
                len(o) > 1 for o in outputs_per_instruction.values()
            ),
            "split": {
                "by": data.split.by,
                "curated_by": CURATED_GROUP_FIELD,
                "val_fraction": data.split.val_fraction,
                "test_fraction": data.split.test_fraction,
                "salt": data.split.salt,
                "units": self.split_units,
            },
            "lengths": {
                "instruction": percentiles([len(p.instruction) for p in kept]),
                "output": percentiles([len(p.output) for p in kept]),
            },
            "target_pairs": [data.target_min_pairs, data.target_max_pairs],
            "warnings": list(self.warnings),
        }


def percentiles(values: list[int]) -> dict[str, int]:
    """p5/p50/p95 by the nearest-rank method, and the max (all 0 for no values)."""
    if not values:
        return {"p5": 0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p5": rank(5), "p50": rank(50), "p95": rank(95), "max": ordered[-1]}
