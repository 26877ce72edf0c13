"""Layered Mixture-of-Agents over multi-turn conversations (paper Eq. 1 and Eq. 3).

Pure method code: it plans which model answers what and builds each model's messages from a
row's state. Binding the plan to engines is ``moaa_cluster.pipeline.synth``'s job.

A row's state is a flat dict: ``turns`` (the user messages) and one answer column per
(turn, layer, agent), named by :func:`answer_column`. Turn t's context is the user turns and
the mixture's own final answers of turns < t (Eq. 3); layer i > 0 additionally sees the
previous layer's answers through the Aggregate-and-Synthesize system prompt (Eq. 1, K.1).
A call whose prompt would not fit its model's context gets its carried answers shortened by
the model's fitter (``moaa_cluster.moa.budget``), recorded in the call's ``context``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.moa.budget import ContextOverflow, Fitted
from moaa_cluster.moa.prompts import inject_responses
from moaa_cluster.seeds import derive_seed

# a model's context fitter: (messages without K.1, proposals or None, max_tokens) -> Fitted
Fit = Callable[[list[dict], list[str] | None, int | None], Fitted]


@dataclass(frozen=True)
class Agent:
    """One seat in a layer: a model (by its spec name) and its sampling settings.

    A ``solo`` seat answers like the other proposers of its layer, but the next layer does
    not see its answer: it exists for its own provenance, e.g. the aggregator model's single
    answers that the paper's Table 3 baselines (single teacher, Combined-5, Random-5) use.
    """

    model: str
    sampling: dict = field(default_factory=dict, hash=False, compare=False)
    solo: bool = False


@dataclass(frozen=True)
class Mixture:
    """``layers[0..-2]`` propose, ``layers[-1]`` holds the single aggregator."""

    layers: tuple[tuple[Agent, ...], ...]

    def __post_init__(self) -> None:
        if len(self.layers) < 2:
            raise ValueError("a mixture needs at least two layers (proposers, then aggregator)")
        if any(len(layer) == 0 for layer in self.layers):
            raise ValueError("every mixture layer needs at least one model")
        if len(self.layers[-1]) != 1:
            raise ValueError(
                f"the last layer must be a single aggregator, got {len(self.layers[-1])} models"
            )
        if self.layers[-1][0].solo:
            raise ValueError("the aggregator cannot be a solo seat")
        for i, layer in enumerate(self.layers[:-1]):
            flags = [a.solo for a in layer]
            if all(flags):
                raise ValueError(f"layer {i + 1} needs at least one seat that is not solo")
            if flags != sorted(flags):  # the aggregated seats keep K.1's numbering 1..n
                raise ValueError(f"layer {i + 1}: solo seats must come after the others")

    def aggregated(self, layer: int) -> int:
        """How many seats of ``layer`` the next layer sees (the first ones; solo seats last)."""
        return sum(not a.solo for a in self.layers[layer])

    @property
    def models(self) -> list[str]:
        """Distinct model names in first-use order."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            for agent in layer:
                seen.setdefault(agent.model, None)
        return list(seen)


@dataclass(frozen=True)
class Step:
    """One model call per row: the answer of ``agent`` at (turn, layer, index)."""

    turn: int
    layer: int
    index: int
    agent: Agent

    @property
    def column(self) -> str:
        return answer_column(self.turn, self.layer, self.index)


def answer_column(turn: int, layer: int, index: int) -> str:
    """Name of the column that holds one agent's answer (0-based turn, layer, seat)."""
    return f"t{turn}_l{layer}_a{index}"


def final_column(mixture: Mixture, turn: int) -> str:
    """Column holding the aggregator's answer for ``turn``: the synthetic response."""
    return answer_column(turn, len(mixture.layers) - 1, 0)


def plan_steps(mixture: Mixture, max_turns: int) -> list[Step]:
    """All model calls in dependency order: turn by turn, layer by layer."""
    return [
        Step(turn, layer_idx, idx, agent)
        for turn in range(max_turns)
        for layer_idx, layer in enumerate(mixture.layers)
        for idx, agent in enumerate(layer)
    ]


def step_parts(mixture: Mixture, step: Step, row: dict) -> tuple[list[dict], list[str] | None]:
    """``step``'s messages before the K.1 prompt goes in, and the proposals it carries.

    Returns:
        The optional system message, the earlier turns (with the mixture's final answers)
        and the current user turn; then the previous layer's answers for a layer > 0, else
        None. Raises ``IndexError`` when the row has no such turn.
    """
    turns = list(row["turns"])
    if step.turn >= len(turns):
        raise IndexError(f"row {row.get('id')} has no turn {step.turn + 1}")
    answers = [row[final_column(mixture, t)] for t in range(step.turn)]
    messages = chat_messages(row.get("system"), turns[: step.turn + 1], answers)
    if step.layer == 0:
        return messages, None
    previous = [
        row[answer_column(step.turn, step.layer - 1, j)]
        for j in range(mixture.aggregated(step.layer - 1))
    ]
    return messages, previous


def step_messages(mixture: Mixture, step: Step, row: dict) -> list[dict] | None:
    """Chat messages for ``step`` on ``row``, or ``None`` when the row has no such turn."""
    if step.turn >= len(row["turns"]):
        return None
    messages, proposals = step_parts(mixture, step, row)
    return messages if proposals is None else inject_responses(messages, proposals)


def conversation(mixture: Mixture, row: dict) -> list[dict]:
    """The synthesized conversation: user turns with the aggregator's answers (TRL format)."""
    answers = [row[final_column(mixture, t)] for t in range(len(row["turns"]))]
    return chat_messages(row.get("system"), row["turns"], answers)


def step_seed(base_seed: int | None, row_id: str, step: Step) -> int | None:
    """A per-call sampling seed derived from the row and the step, so reruns reproduce."""
    return derive_seed(base_seed, row_id, step.column)


@dataclass(frozen=True)
class CallContext:
    """What every model call of a mixture run on a row shares.

    Attributes:
        backends: Model name -> an object with ``async chat(messages, sampling)``.
        defaults: Sampling every call starts from (a seat's own ``sampling`` overrides it).
        seed: Base of the per-call sampling seeds (:func:`step_seed`); None: unseeded.
        record_prompts: Keep the exact messages sent in each call's record (as JSON).
        fits: Model name -> its context fitter (see :func:`run_step`); a model without one
            sends its prompts as built.
    """

    backends: dict
    defaults: dict | None = None
    seed: int | None = None
    record_prompts: bool = False
    fits: dict[str, Fit] | None = None


async def run_step(
    mixture: Mixture, step: Step, state: dict, calls: CallContext
) -> tuple[str, dict]:
    """One model call: ``step``'s answer on a row's ``state`` and its provenance record.

    The call goes to ``calls.backends[model]``, an object with ``async chat(messages,
    sampling)``. With ``calls.record_prompts`` the record keeps the exact messages sent (as
    JSON). The model's fitter in ``calls.fits`` (a
    :class:`~moaa_cluster.moa.budget.ContextFitter`) shortens carried answers that would not
    fit the model's context; the record's ``context`` says what it cut (None: nothing).

    Raises:
        ContextOverflow: the fitter found no way to fit the prompt (the row fails with it).
    """
    backend = calls.backends[step.agent.model]
    fit = (calls.fits or {}).get(step.agent.model)
    sampling = {**(calls.defaults or {}), **step.agent.sampling}
    if sampling.get("seed") is None:
        sampling["seed"] = step_seed(calls.seed, state["id"], step)
    context = None
    if fit is None:
        messages = step_messages(mixture, step, state)
    else:
        try:
            fitted = fit(*step_parts(mixture, step, state), sampling.get("max_tokens"))
        except ContextOverflow as exc:
            raise ContextOverflow(
                f"turn {step.turn + 1}, layer {step.layer + 1}, seat {step.index}: {exc}"
            ) from exc
        messages, context = fitted.messages, fitted.record()
    completion = await backend.chat(messages, sampling)
    return completion.text, {
        "turn": step.turn,
        "layer": step.layer,
        "seat": step.index,
        "model": completion.model,
        "text": completion.text,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 3),
        "prompt": json.dumps(messages, ensure_ascii=False) if calls.record_prompts else None,
        "context": context,
        # the model's template has no system role: its system text went into the first user
        # turn (engines.chat_template); `prompt` keeps the messages as built, before folding
        "system_folded": bool(getattr(completion, "system_folded", False)),
    }


async def run_steps(
    mixture: Mixture, steps: list[Step], state: dict, calls: CallContext
) -> list[tuple[str, dict]]:
    """The independent ``steps`` (seats of one layer) on ``state``, called concurrently."""
    import asyncio

    return await asyncio.gather(*(run_step(mixture, s, state, calls) for s in steps))


async def run_row(
    mixture: Mixture,
    row: dict,
    backends: dict,
    defaults: dict | None = None,
    seed: int | None = None,
    record_prompts: bool = False,
    fits: dict[str, Fit] | None = None,
) -> tuple[dict, list[dict]]:
    """Runs the whole mixture on one conversation, turn by turn, layer by layer.

    The seats of a layer are called concurrently; the next layer starts when they are all
    back. ``backends`` maps a model name to an object with ``async chat(messages, sampling)``;
    ``fits`` maps it to its context fitter (:func:`run_step`).

    Returns:
        The row's answer columns and one provenance record per model call, in step order.
    """
    context = CallContext(backends, defaults, seed, record_prompts, fits)
    state = dict(row)
    calls: list[dict] = []
    for turn in range(len(row["turns"])):
        for layer_idx, layer in enumerate(mixture.layers):
            steps = [Step(turn, layer_idx, i, agent) for i, agent in enumerate(layer)]
            results = await run_steps(mixture, steps, state, context)
            for step, (text, record) in zip(steps, results, strict=True):
                state[step.column] = text
                calls.append(record)
    answers = {k: v for k, v in state.items() if k not in row}
    return answers, calls
