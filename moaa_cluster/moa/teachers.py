"""The seats of a synth run as teachers: each seat's answers to an instruction, as the
conversation that seat would teach.

A synth row keeps every call of the mixture as provenance (``sft.parquet``'s ``calls``), so
each proposer seat's own answers can be read back as a whole conversation without new
inference. ``moaa derive``'s ablations (single teacher, Combined-N, Random-N) train on them,
and Best-of-N scores them as its candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from moaa_cluster.data.chat import chat_messages


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
        for t in range(len(user_turns)):
            if t not in by_turn:
                raise ValueError(
                    f"row {row['id']}: seat {seat} of layer {layer} has no answer for turn {t + 1}"
                )
        answers = [by_turn[t]["text"] for t in range(len(user_turns))]
        messages = [*system, *chat_messages(None, user_turns, answers)]
        model = by_turn[0]["model"]
        name = model if model not in names else f"{model}#{seat}"
        names.add(name)
        truncated = any(c.get("finish_reason") == "length" for c in by_turn.values())
        out.append(Teacher(index, seat, name, messages, truncated))
    return out
