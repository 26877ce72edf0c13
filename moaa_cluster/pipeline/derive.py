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
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KINDS = ("single", "combined", "random")


@dataclass(frozen=True)
class Teacher:
    """One seat's answers to one instruction, as the conversation that seat would teach.

    Attributes:
        index: Position among the row's teachers (seat order).
        seat: The seat that answered.
        teacher: Its model name; ``model#seat`` when the model sits twice in the layer.
        messages: System message (if any), then user turns with this seat's answers.
        truncated: Some turn of its answer stopped on ``finish_reason: length``.
    """

    index: int
    seat: int
    teacher: str
    messages: list[dict]
    truncated: bool


def teachers(row: dict, layer: int = 0) -> list[Teacher]:
    """Every seat of ``layer`` in a synth row (solo seats included), in seat order.

    Raises:
        ValueError: A seat has no answer for one of the row's turns.
    """
    seats: dict[int, dict[int, dict]] = {}
    for call in row["calls"]:
        if call["layer"] == layer:
            seats.setdefault(call["seat"], {})[call["turn"]] = call
    user_turns = [m["content"] for m in row["messages"] if m["role"] == "user"]
    system = [dict(m) for m in row["messages"][:1] if m["role"] == "system"]
    out: list[Teacher] = []
    names: set[str] = set()
    for index, (seat, by_turn) in enumerate(sorted(seats.items())):
        messages = list(system)
        for t, question in enumerate(user_turns):
            if t not in by_turn:
                raise ValueError(
                    f"row {row['id']}: seat {seat} of layer {layer} has no answer for turn {t + 1}"
                )
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": by_turn[t]["text"]})
        model = by_turn[0]["model"]
        name = model if model not in names else f"{model}#{seat}"
        names.add(name)
        truncated = any(c.get("finish_reason") == "length" for c in by_turn.values())
        out.append(Teacher(index, seat, name, messages, truncated))
    return out


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
        teachers = _teacher_rows(row, layer)
        if kind == "single":
            if model not in teachers:
                raise ValueError(
                    f"model {model!r} is not a layer-{layer} seat; seats: {sorted(teachers)}"
                )
            picked = [(model, teachers[model])]
        elif kind == "combined":
            picked = list(teachers.items())
        else:
            name = rng.choice(sorted(teachers))
            picked = [(name, teachers[name])]
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
    pq.write_table(pa.Table.from_pylist(result), out)
    print(f"{len(result)} rows -> {out}")
    return 0
