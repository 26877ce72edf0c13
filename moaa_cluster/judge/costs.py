"""How many model calls a judgment takes: the plan that progress and its ETA count against."""

from __future__ import annotations

from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.judge.ranking import PLANS


def calls_per_pair(spec: JudgeSpec) -> int:
    """Model calls to judge one pair in both orders, without verdict recovery: the criteria
    choice (once per pair) and, per order, every proposer's critique and the verdict."""
    return int(spec.criteria_filtering) + 2 * (len(spec.proposers) + 1)


def planned_comparisons(name: str, n: int) -> int:
    """Comparisons (pairs, both orders each) a plan runs on ``n`` candidates: all pairs for
    ``round_robin``; for ``knockout`` the first round's pairs, then each bracket of
    ceil(n / 2) members down to one."""
    if name == "round_robin":
        return n * (n - 1) // 2
    if name == "knockout":
        return n // 2 + 2 * max(0, -(-n // 2) - 1)
    raise ValueError(f"unknown comparison plan {name!r}; expected one of {list(PLANS)}")
