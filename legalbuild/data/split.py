"""The train/validation/test split: a row's side depends on the row alone, so adding rows never
moves existing ones.

Validation when sha256(salt, "row", normalized instruction) < val_fraction, or with
`split.by = "group"` sha256(salt, "group", group value), which keeps a group whole. Curated rows
are always split by doc_id: pairs from one contract share clause text. Rows without a group value
fall back to the row hash. When a side would be empty, the unit with the lowest (highest) hash
moves to validation (training). The test split (`split.test_fraction`, default none) takes the
units with val_fraction <= hash < val_fraction + test_fraction, so adding it never moves
validation rows. Afterwards a train row whose normalized instruction is in validation or test is
dropped (`in_validation`). Row ids are the first 16 hex digits of
sha256(instruction, output).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from legalbuild.data.rows import CURATED_GROUP_FIELD, CURATED_SOURCE

if TYPE_CHECKING:
    from legalbuild.data.output import RejectSink
    from legalbuild.data.rows import Pair
    from legalbuild.data.stats import Report
    from legalbuild.recipe import DataSection


def split_pairs(
    pairs: list[Pair], data: DataSection, report: Report, log: Callable[[str], None]
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Each pair's side (train, val, test) from a hash of its split unit (its group, or its
    folded instruction)."""
    settings = data.split
    if settings.by == "row" and any(p.source == CURATED_SOURCE for p in pairs):
        log(
            f"curated pairs are split by {CURATED_GROUP_FIELD} (whole contracts on one side); other sources by row"
        )
    units = [split_unit(p, settings.by, report) for p in pairs]
    fraction = {u: unit_fraction(settings.salt, u) for u in set(units)}
    val_units = {u for u, f in fraction.items() if f < settings.val_fraction}
    val_units = rescue_empty_side(fraction, val_units, report)
    test_units = test_side(fraction, val_units, settings.val_fraction, settings.test_fraction)
    if settings.test_fraction and len(test_units) + len(val_units) >= len(fraction):
        test_units = set()
        report.warnings.append("too few split units for a test split: test.jsonl is empty")
    held = val_units | test_units
    report.split_units = {
        "train": len(fraction) - len(held),
        "val": len(val_units),
        "test": len(test_units),
    }
    train = [p for p, u in zip(pairs, units, strict=True) if u not in held]
    val = [p for p, u in zip(pairs, units, strict=True) if u in val_units]
    test = [p for p, u in zip(pairs, units, strict=True) if u in test_units]
    return train, val, test


def test_side(
    fraction: dict[tuple[str, str], float],
    val_units: set,
    val_fraction: float,
    test_fraction: float,
) -> set:
    """The units of the test split: the hash range just above validation's."""
    top = val_fraction + test_fraction
    return (
        {u for u, f in fraction.items() if u not in val_units and f < top}
        if test_fraction
        else set()
    )


def split_unit(pair: Pair, by: str, report: Report) -> tuple[str, str]:
    if by == "group" or pair.source == CURATED_SOURCE:
        if pair.group is not None:
            return ("group", pair.group)
        report.rows_without_group += 1
    return ("row", pair.folded_instruction)


def unit_fraction(salt: str, unit: tuple[str, str]) -> float:
    """A number in [0, 1) that depends only on the salt and the unit: the split never reshuffles."""
    text = f"{salt}\x00{unit[0]}\x00{unit[1]}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2**64


def rescue_empty_side(
    fraction: dict[tuple[str, str], float], val_units: set, report: Report
) -> set:
    """With very few units a side can come out empty; move the unit nearest the threshold across."""
    if len(fraction) < 2:
        report.warnings.append("only one split unit (row or group): the validation split is empty")
        return val_units
    if not val_units:
        val_units = {min(fraction, key=fraction.get)}
        report.warnings.append(
            "no unit fell into validation by hash: the lowest-hash unit was moved there"
        )
    elif len(val_units) == len(fraction):
        val_units = val_units - {max(fraction, key=fraction.get)}
        report.warnings.append(
            "every unit fell into validation by hash: the highest-hash unit was moved to train"
        )
    return val_units


def drop_validation_instructions(
    train: list[Pair], val: list[Pair], sink: RejectSink
) -> list[Pair]:
    """No held-out (validation or test) instruction may be trained on (group splits can put twins
    on both sides)."""
    held_out = {p.folded_instruction for p in val}
    kept = []
    for pair in train:
        if pair.folded_instruction in held_out:
            sink.drop(
                pair,
                "in_validation",
                raw=None,
                detail="its instruction is in val.jsonl or test.jsonl",
            )
        else:
            kept.append(pair)
    return kept


def assign_ids(pairs: Iterable[Pair]) -> None:
    """Content ids; with dedup = "none" a repeated pair gets a -2, -3... suffix to stay unique."""
    seen: Counter[str] = Counter()
    for pair in pairs:
        text = f"{pair.instruction}\x00{pair.output}".encode("utf-8", "surrogatepass")
        base = hashlib.sha256(text).hexdigest()[:16]
        seen[base] += 1
        pair.id = base if seen[base] == 1 else f"{base}-{seen[base]}"
