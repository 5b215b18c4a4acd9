"""The Pair record and the seeded, balanced pick of pairs: task quotas from `[curate] task_mix`,
then caps on the share of any one rule, severity and source (`[curate] max_*_share`)."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass

TASKS = ("audit", "defect", "fix", "explain", "missing")


@dataclass
class Pair:
    instruction: str
    output: str
    doc_id: str
    source: str
    rule_id: str | None
    severity: str
    clause_type: str
    task: str
    verified_by: str
    clause: str = ""  # the clause (or short contract) inside the instruction, for eval
    # selection bookkeeping (not written)
    edit: str | None = None
    clean: bool = False

    def row(self) -> dict:
        row = asdict(self)
        row.pop("edit"), row.pop("clean")
        return row


def rng_for(seed: int, *key: object) -> random.Random:
    """A Random that depends only on the seed and a stable key."""
    return random.Random(hashlib.sha256(repr((seed, *key)).encode()).hexdigest())


def quotas(target: int, mix: dict[str, float]) -> dict[str, int]:
    total = sum(mix.get(t, 0) for t in TASKS)
    raw = {t: target * mix.get(t, 0) / total for t in TASKS}
    out = {t: math.floor(v) for t, v in raw.items()}
    for t in sorted(TASKS, key=lambda t: raw[t] - out[t], reverse=True)[
        : target - sum(out.values())
    ]:
        out[t] += 1
    return out


def select_pairs(candidates: list[Pair], settings) -> list[Pair]:
    """A seeded, balanced selection: task quotas, clean share of audits, caps per rule, severity
    and source; unused quota of a task that runs short goes to the other tasks.

    The source cap is a share of the pairs produced, so when the smaller corpora cannot supply
    their part, the total is lowered (and every task quota with it) rather than the cap broken."""
    first = _select(candidates, settings, settings.target_pairs)
    counts = Counter(p.source for p in first)
    if len(counts) < 2 or settings.max_source_share >= 1:
        return first
    others = len(first) - counts.most_common(1)[0][1]
    reachable = math.floor(others / (1 - settings.max_source_share))
    if reachable >= len(first):
        return first
    return _enforce_source_share(
        _select(candidates, settings, reachable), settings.max_source_share
    )


def _select(candidates: list[Pair], settings, target: int) -> list[Pair]:
    need = quotas(target, settings.task_mix)
    rule_cap = max(1, math.floor(settings.max_rule_share * target))
    severity_cap = max(1, math.floor(settings.max_severity_share * target))
    source_cap = max(1, math.floor(settings.max_source_share * target))
    seen: set[str] = set()
    counts = {"rule": Counter(), "severity": Counter(), "source": Counter()}
    chosen: list[Pair] = []

    def admit(p: Pair) -> bool:
        if p.instruction in seen:
            return False
        if p.rule_id and counts["rule"][p.rule_id] >= rule_cap:
            return False
        if p.severity != "none" and counts["severity"][p.severity] >= severity_cap:
            return False
        if counts["source"][p.source] >= source_cap:
            return False
        seen.add(p.instruction)
        counts["rule"][p.rule_id] += 1
        counts["severity"][p.severity] += 1
        counts["source"][p.source] += 1
        chosen.append(p)
        return True

    ordered = _balanced_order(candidates, settings.seed)
    clean_quota = round(need["audit"] * settings.clean_share)
    groups = {
        ("audit", True): clean_quota,
        ("audit", False): need["audit"] - clean_quota,
        **{(t, False): need[t] for t in TASKS if t != "audit"},
    }
    for _ in range(3):  # later rounds hand quota left unused by short tasks to the others
        for (task, clean), quota in groups.items():
            taken = sum(1 for p in chosen if p.task == task and p.clean == clean)
            for p in ordered:
                if taken >= quota or len(chosen) >= target:
                    break
                if p.task == task and p.clean == clean and admit(p):
                    taken += 1
        short = target - len(chosen)
        if short <= 0:
            break
        open_groups = [g for g in groups if g != ("audit", True)]
        for g in open_groups:
            groups[g] += math.ceil(short / len(open_groups))
    return sorted(chosen, key=lambda p: rng_for(settings.seed, p.instruction).random())


def _balanced_order(candidates: list[Pair], seed: int) -> list[Pair]:
    """Small sources first (the source cap makes every pair of theirs count), then round-robin over
    rules, in seeded order."""
    shuffled = sorted(candidates, key=lambda p: rng_for(seed, p.task, p.instruction).random())
    rank_in_rule: Counter = Counter()
    size = Counter(p.source for p in candidates)
    keyed = []
    for i, p in enumerate(shuffled):
        group = p.rule_id or f"clean:{p.clause_type}"
        keyed.append((size[p.source], rank_in_rule[group], i, p))
        rank_in_rule[group] += 1
    return [p for *_, p in sorted(keyed, key=lambda k: k[:3])]


def _enforce_source_share(chosen: list[Pair], cap: float) -> list[Pair]:
    """Drop the last-chosen pairs of a source above its share of the final total."""
    if cap >= 1:
        return chosen
    while True:
        counts = Counter(p.source for p in chosen)
        source, n = counts.most_common(1)[0]
        others = len(chosen) - n
        if n <= cap * len(chosen) or others == 0:
            return chosen
        allowed = math.floor(cap * others / (1 - cap))
        drop = n - allowed
        keep_rev = []
        for p in reversed(chosen):
            if p.source == source and drop > 0:
                drop -= 1
                continue
            keep_rev.append(p)
        chosen = keep_rev[::-1]
