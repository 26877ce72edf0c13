"""Splitting rows by an up-front context-length check (synth and eval run one before any engine starts).

A task knows why one of its rows cannot fit a model's ``max_model_len`` (synth: the mixture's
floor prompts, ``moa/lengths.py``; eval: the answers and the judge's prompts,
``evaluation/lengths.py``); this module splits the rows by that reason, so a row that cannot
fit becomes an input reject with its reason instead of failing in inference, and a row whose
check itself fails rejects only itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# why a row cannot fit (None: it fits); may raise, which rejects only that row
ReasonFor = Callable[[dict], "str | None"]
# the reject record of a row and its reason (each task keeps its own record fields)
RejectFor = Callable[[dict, str], dict]


def split_by_length(
    rows: Iterable[dict], reason_for: ReasonFor, reject_for: RejectFor
) -> tuple[list[dict], list[dict]]:
    """``(rows that fit, reject records of those that cannot)``, in input order."""
    keep, rejects = [], []
    for row in rows:
        try:
            reason = reason_for(row)
        except Exception as exc:  # a record can fail only itself, never the run
            reason = f"length check failed: {type(exc).__name__}: {exc}"
        if reason is None:
            keep.append(row)
        else:
            rejects.append(reject_for(row, reason))
    return keep, rejects
