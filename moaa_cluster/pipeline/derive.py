"""Ablation datasets of the paper (Table 3), derived from a synth run's provenance.

No new inference: every proposer's answer is already in ``sft.parquet``'s ``calls``.
  * ``single:<model>``: SFT on one proposer's answers (single teacher).
  * ``combined``: every proposer's answer for every instruction (Combined-N, N x data).
  * ``random``: one proposer's answer per instruction, chosen with a seed (Random-N).
For multi-turn rows the teacher's own answer fills every assistant turn; its later turns were
generated with the mixture's earlier answers as context (that is how the run produced them).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moaa_cluster.moa.teachers import teachers
from moaa_cluster.runs.files import write_parquet_atomic

KINDS = ("single", "combined", "random")


def _teacher_rows(row: dict, layer: int) -> dict[str, list[dict]]:
    """``{model_or_seat: messages}`` for each proposer seat of ``layer`` in this row."""
    return {t.teacher: t.messages for t in teachers(row, layer)}


def derive(
    rows: list[dict], kind: str, model: str | None = None, seed: int = 0, layer: int = 0
) -> list[dict]:
    """Builds the ablation rows (``id, source, messages, teacher``) from synth rows."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    rng = random.Random(seed)
    out = []
    for row in rows:
        by_teacher = _teacher_rows(row, layer)
        if kind == "single":
            if model not in by_teacher:
                raise ValueError(
                    f"model {model!r} is not a layer-{layer} seat; seats: {sorted(by_teacher)}"
                )
            picked = [(model, by_teacher[model])]
        elif kind == "combined":
            picked = list(by_teacher.items())
        else:
            name = rng.choice(sorted(by_teacher))
            picked = [(name, by_teacher[name])]
        for name, messages in picked:
            rid = row["id"] if kind != "combined" else f"{row['id']}:{name}"
            out.append({"id": rid, "source": row["source"], "messages": messages, "teacher": name})
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="moaa derive",
        description="Write an ablation SFT dataset (single teacher, Combined-N, Random-N) "
        "from a synth run directory, without new inference.",
    )
    p.add_argument("run_dir", type=Path, help="a synth run directory holding sft.parquet")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--model", help="with `single`: the proposer model name")
    p.add_argument("--seed", type=int, default=0, help="with `random` (default 0)")
    p.add_argument("--layer", type=int, default=0, help="proposer layer to read (default 0)")
    p.add_argument("--out", type=Path, help="default: <run_dir>/ablations/<kind>[-model].parquet")
    args = p.parse_args(argv)
    rows = pq.read_table(args.run_dir / "sft.parquet").to_pylist()
    result = derive(rows, args.kind, args.model, args.seed, args.layer)
    suffix = (
        f"-{args.model}"
        if args.kind == "single"
        else (f"-seed{args.seed}" if args.kind == "random" else "")
    )
    out = args.out or args.run_dir / "ablations" / f"{args.kind}{suffix}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(pa.Table.from_pylist(result), out)
    print(f"{len(result)} rows -> {out}")
    return 0
