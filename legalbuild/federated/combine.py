"""LoRA aggregation arithmetic on plain arrays (numpy), shared by the coordinator and the tests.

A silo's adapter changes a weight by s * B @ A (s = alpha / r). Averaging A and B separately
(what FedAvg does to any parameters) gives s * mean(B) @ mean(A), which is not the mean of the
silos' changes s * mean(B @ A). The exact combination concatenates ranks: with weights w_i summing
to 1, A = [sqrt(w_i) A_i] stacked and B = [sqrt(w_i) B_i] side by side give B @ A = sum w_i B_i A_i
exactly, an adapter of rank r x silos with alpha x silos (the same scale s); merge folds it in like
any adapter. PEFT's `add_weighted_adapter(combination_type="cat")` builds the same matrices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Arrays = dict[str, Any]  # parameter name -> numpy array (PEFT's adapter state dict names)


def normalized(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the weights must sum to more than 0")
    return [float(w) / total for w in weights]


def weighted_mean(updates: list[Arrays], weights: list[float]) -> Arrays:
    """sum w_i x_i for every parameter (FedAvg's aggregate, weights normalized)."""
    w = normalized(weights)
    return {
        key: sum(wi * np.asarray(u[key], dtype=np.float64) for wi, u in zip(w, updates, strict=True)).astype(np.float32)
        for key in updates[0]
    }  # fmt: skip


def lora_pairs(arrays: Arrays) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA module."""
    return [(k, k.replace("lora_A", "lora_B")) for k in sorted(arrays) if ".lora_A." in k]


def exact_combination(updates: list[Arrays], weights: list[float]) -> Arrays:
    """The rank-concatenated adapter whose B @ A is the weighted mean of the silos' B_i @ A_i
    (other parameters, if any, averaged)."""
    w = normalized(weights)
    out: Arrays = {}
    for a_key, b_key in lora_pairs(updates[0]):
        out[a_key] = np.concatenate(
            [math.sqrt(wi) * np.asarray(u[a_key], np.float64) for wi, u in zip(w, updates, strict=True)], axis=0
        ).astype(np.float32)  # fmt: skip
        out[b_key] = np.concatenate(
            [math.sqrt(wi) * np.asarray(u[b_key], np.float64) for wi, u in zip(w, updates, strict=True)], axis=1
        ).astype(np.float32)  # fmt: skip
    rest = [k for k in updates[0] if k not in out]
    if rest:
        out.update(weighted_mean([{k: u[k] for k in rest} for u in updates], weights))
    return out


def product_error(updates: list[Arrays], weights: list[float]) -> dict[str, float]:
    """How far averaging A and B separately lands from the mean of the products, over every module:
    ||mean(B) mean(A) - mean(B A)||_F / ||mean(B A)||_F (and the same for the largest module)."""
    w = normalized(weights)
    num = den = worst = 0.0
    for a_key, b_key in lora_pairs(updates[0]):
        exact = sum(wi * (np.asarray(u[b_key], np.float64) @ np.asarray(u[a_key], np.float64)) for wi, u in zip(w, updates, strict=True))  # fmt: skip
        mean_a = sum(
            wi * np.asarray(u[a_key], np.float64) for wi, u in zip(w, updates, strict=True)
        )
        mean_b = sum(
            wi * np.asarray(u[b_key], np.float64) for wi, u in zip(w, updates, strict=True)
        )
        diff = float(np.linalg.norm(mean_b @ mean_a - exact)) ** 2
        size = float(np.linalg.norm(exact)) ** 2
        num, den = num + diff, den + size
        if size > 0:
            worst = max(worst, math.sqrt(diff / size))
    return {
        "relative_error": math.sqrt(num / den) if den else 0.0,
        "worst_module_relative_error": worst,
    }


def nbytes(arrays: Arrays) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
