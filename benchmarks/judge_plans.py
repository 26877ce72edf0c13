"""Calls per item and agreement with the full round robin of every comparison plan, replayed
from a recorded round-robin ``moaa prefs`` run: no new inference.

    moaa prefs limit=8 plan=round_robin run_name=prefs-rr        # once, under the lock
    python -m benchmarks.judge_plans outputs/prefs-rr

A round robin judges every pair of candidates in both orders, so whatever pair another plan
(``judge.ranking.PLANS``) asks for has already been judged: each plan is driven to its end
over the recorded pair outcomes, and its calls are the recorded calls of the pairs it asked
for. Agreement is counted over the items where the round robin produced a DPO pair: same
chosen, same rejected, both. Writes ``benchmarks/results/judge_plans.json`` and prints one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import harness


def load_items(run_dir: Path) -> tuple[list[dict], dict]:
    """Judged items of a round-robin prefs run, from its shards (every judged row, with or
    without a preference) or, without shards, from ``prefs.parquet`` (rows with a pair only).

    Returns:
        ``(items, notes)``: an item has ``id``, ``n`` (candidates), ``outcomes`` and ``usage``
        per pair ``(i, j)`` with i < j, and the run's recorded ``chosen``/``rejected``.

    Raises:
        FileNotFoundError: Not a prefs run directory.
        ValueError: The run did not use the round-robin plan, or judged nothing.
    """
    import pyarrow.parquet as pq

    from moaa_cluster.runs.shards import consolidate, shard_dir

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a prefs run directory (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    plan = (manifest.get("judge") or {}).get("plan")
    if plan != "round_robin":
        raise ValueError(f"{run_dir} used plan {plan!r}; replaying needs a round_robin run")
    notes: dict = {"run_dir": str(run_dir), "created": manifest.get("created")}
    if shard_dir(run_dir).is_dir():
        rows, _ = consolidate(run_dir)
        notes["read_from"] = "shards (every judged row)"
    else:
        rows = pq.read_table(run_dir / "prefs.parquet").to_pylist()
        notes["read_from"] = "prefs.parquet (rows with a pair only: no-preference rows are missing)"
    items, incomplete = [], 0
    for row in rows:
        if not row.get("judge"):
            continue  # identical candidates, or a failed row: nothing was judged
        n = len(row["candidates"])
        record = json.loads(row["judge"])
        outcomes = {}
        for p in record["pairs"]:
            outcome = p["outcome"]
            key = (min(p["i"], p["j"]), max(p["i"], p["j"]))
            outcomes[key] = int(outcome) if outcome.lstrip("-").isdigit() else outcome
        if len(outcomes) != n * (n - 1) // 2:
            incomplete += 1
            continue
        usage: dict[tuple[int, int], dict[str, int]] = {k: _zero() for k in outcomes}
        for c in record["comparisons"]:
            u = usage[(min(c["a"], c["b"]), max(c["a"], c["b"]))]
            for k in u:
                u[k] += int(c.get(k) or 0)
        items.append(
            {
                "id": row["id"],
                "n": n,
                "outcomes": outcomes,
                "usage": usage,
                "chosen": row.get("chosen_index"),
                "rejected": row.get("rejected_index"),
            }
        )
    if not items:
        raise ValueError(f"{run_dir} holds no judged item")
    notes["items_skipped_incomplete"] = incomplete
    return items, notes


def _zero() -> dict[str, int]:
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}


def replay(plan_name: str, item: dict) -> dict:
    """Drives one plan to its end over an item's recorded outcomes.

    Returns:
        The plan's ``result`` (chosen, rejected) or None, its comparisons, sequential rounds,
        and the recorded calls and tokens of the pairs it asked for.
    """
    from moaa_cluster.judge.ranking import PairResult, make_plan

    plan = make_plan(plan_name, item["n"])
    used = _zero()
    rounds = 0
    while pairs := plan.next_pairs():
        rounds += 1
        results = []
        for i, j in pairs:
            key = (min(i, j), max(i, j))
            results.append(PairResult(i, j, item["outcomes"][key]))
            for k, v in item["usage"][key].items():
                used[k] += v
        plan.record(results)
    return {
        "result": plan.result(),
        "comparisons": plan.total_comparisons,
        "rounds": rounds,
        **used,
    }


def evaluate(items: list[dict], plans: list[str]) -> dict:
    """Per plan: mean comparisons, rounds, calls and tokens per item; agreement with the
    round robin over the items where it produced a pair."""
    baseline = {it["id"]: replay("round_robin", it)["result"] for it in items}
    consistent = sum(
        baseline[it["id"]] == ((it["chosen"], it["rejected"]) if it["chosen"] is not None else None)
        for it in items
    )
    with_pair = [it for it in items if baseline[it["id"]] is not None]
    kinds = {"win": 0, "tie": 0, "unresolved": 0}
    for it in items:
        for outcome in it["outcomes"].values():
            kinds["win" if isinstance(outcome, int) else str(outcome)] += 1
    # what picking uniformly at random would agree on, for scale (n candidates per item)
    chance = {
        "chosen": statistics.mean(1 / it["n"] for it in with_pair) if with_pair else None,
        "both": statistics.mean(1 / (it["n"] * (it["n"] - 1)) for it in with_pair)
        if with_pair
        else None,
    }
    out: dict = {
        "items": len(items),
        "candidates_per_item": sorted({it["n"] for it in items}),
        "items_with_round_robin_pair": len(with_pair),
        "round_robin_replay_matches_run": f"{consistent}/{len(items)}",
        "pair_outcomes": kinds,
        "agreement_by_chance": {
            k: round(v, 3) if v is not None else None for k, v in chance.items()
        },
        "plans": {},
    }
    for name in plans:
        runs = {it["id"]: replay(name, it) for it in items}
        agree = {"chosen": 0, "rejected": 0, "both": 0}
        for it in with_pair:
            rr, got = baseline[it["id"]], runs[it["id"]]["result"]
            if got is None:
                continue
            agree["chosen"] += got[0] == rr[0]
            agree["rejected"] += got[1] == rr[1]
            agree["both"] += got == rr
        denom = max(1, len(with_pair))
        out["plans"][name] = {
            **{
                f"{k}_per_item": round(statistics.mean(r[k] for r in runs.values()), 2)
                for k in ("comparisons", "rounds", "calls", "prompt_tokens", "completion_tokens")
            },
            "items_with_pair": sum(r["result"] is not None for r in runs.values()),
            "agreement_with_round_robin": {k: round(v / denom, 3) for k, v in agree.items()},
        }
    return out


def summary_line(result: dict) -> str:
    rr = result["plans"].get("round_robin")
    parts = []
    for name, p in result["plans"].items():
        share = (
            f" ({p['calls_per_item'] / rr['calls_per_item']:.0%} of round robin)"
            if rr and name != "round_robin"
            else ""
        )
        a = p["agreement_with_round_robin"]
        parts.append(
            f"{name} {p['comparisons_per_item']:g} comparisons, {p['calls_per_item']:g} calls/item"
            f"{share}, agrees chosen {a['chosen']:.0%} rejected {a['rejected']:.0%} both {a['both']:.0%}"
        )
    k = result["pair_outcomes"]
    return (
        f"judge_plans: {result['items']} items, {result['items_with_round_robin_pair']} with a "
        f"round-robin pair (pairs: {k['win']} won, {k['tie']} tied, {k['unresolved']} "
        f"unresolved); " + "; ".join(parts)
    )


def main(argv: list[str] | None = None) -> int:
    from moaa_cluster.judge.ranking import PLANS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.judge_plans",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a `moaa prefs ... plan=round_robin` run directory")
    p.add_argument("--plans", default=",".join(PLANS), help=f"comma-separated, of {list(PLANS)}")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        plans = [s.strip() for s in args.plans.split(",") if s.strip()]
        unknown = set(plans) - set(PLANS)
        if unknown:
            raise ValueError(f"unknown plans {sorted(unknown)}; known: {list(PLANS)}")
        items, notes = load_items(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"judge_plans: error: {exc}", file=sys.stderr)
        return 2
    result = {**evaluate(items, plans), "source": notes}
    path = harness.write_result("judge_plans", result, args.out)
    print(f"{summary_line(result)} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
