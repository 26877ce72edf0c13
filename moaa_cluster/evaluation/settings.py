"""What one evaluation run compares and how: its settings and its baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage

PROTOCOLS = ("pairwise", "alpaca_eval2", "arena_hard", "mt_bench")
MODEL_POSITIONS = ("fixed", "random")


@dataclass(frozen=True)
class ProtocolSettings:
    """How answers are judged (``conf/protocol/*.yaml``).

    Attributes:
        name: ``pairwise`` (our MoA judge, both orders, win rate), ``alpaca_eval2``,
            ``arena_hard`` or ``mt_bench`` (the benchmarks' prompts, one judge model).
        judge_max_tokens: The judge's answer budget for arena_hard / mt_bench (None: the
            benchmark's, 4,096 / 2,048; a small judge's context needs less).
        model_position: alpaca_eval2: ``fixed`` (the reference is output_1, the model
            output_2, as the annotator's config) or ``random`` (per question, from the seed).
        style_control: arena_hard: fit answer length and markdown as covariates.
        references: mt_bench: reference answers (JSONL) for math, reasoning and coding.
        seed: Judge sampling seeds and the random positions derive from it.
    """

    name: str = "pairwise"
    judge_max_tokens: int | None = None
    model_position: str = "fixed"
    style_control: bool = False
    references: str | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ConfigError(f"protocol {self.name!r} is not one of {list(PROTOCOLS)}")
        if self.model_position not in MODEL_POSITIONS:
            raise ConfigError(
                f"protocol.model_position {self.model_position!r} is not one of "
                f"{list(MODEL_POSITIONS)}"
            )

    @property
    def needs_baseline(self) -> bool:
        """MT-Bench grades each answer alone; the others compare with a baseline."""
        return self.name != "mt_bench"

    def judge_calls(self, turns: int, pair_calls: int) -> int:
        """Judge calls one question is planned to take (re-asks come on top): the pairwise
        judge's ``pair_calls``, one AlpacaEval 2 call, two Arena-Hard games, an MT-Bench grade
        for each of the first two turns."""
        if self.name == "mt_bench":
            return min(2, turns)
        return {"alpaca_eval2": 1, "arena_hard": 2}.get(self.name, pair_calls)


@dataclass
class EvalSettings:
    """Knobs of one evaluation run (from ``conf/eval.yaml``)."""

    sampling: dict = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 512})
    baseline_sampling: dict | None = None  # a baseline model's sampling; None: ``sampling``
    seed: int | None = 0
    batch_size: int = 8
    workers: int = 2
    worker_cpus: float = 0.25
    request_timeout_s: float | None = 900.0
    resamples: int = 1000  # bootstrap resamples of the win-rate interval (0: none)
    confidence: float = 0.95
    length_control: bool = True  # also the length-controlled win rate
    lc_l2: float = 0.1  # slope penalty of the length regression
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)

    @property
    def baseline_sampling_or_default(self) -> dict:
        """A generated baseline's sampling: its own, else the evaluated model's."""
        return self.baseline_sampling if self.baseline_sampling is not None else self.sampling


@dataclass(frozen=True)
class Baseline:
    """What the evaluated model is compared with: exactly one of an answers file and a model.

    Attributes:
        answers: Answer file(s) of the baseline, matched by question id.
        model: A model whose answers are generated during the run as the baseline.
        name: Name of the baseline in outputs (default: the model's name or the first
            answers file's stem).
    """

    answers: str | Path | list | None = None
    model: ModelSpec | None = None
    name: str | None = None

    def files(self) -> list[str] | None:
        """The answers files, user-expanded (a URI as given); None for a baseline model.

        Raises:
            ConfigError: Neither or both of ``answers`` and ``model``.
        """
        if (self.answers is None) == (self.model is None):
            raise ConfigError(
                "give exactly one baseline: baseline_answers=<answers file> or "
                "model@baseline_model=<model config>"
            )
        if self.answers is None:
            return None
        items = self.answers if isinstance(self.answers, list) else [self.answers]
        return [storage.expand(p) for p in items]

    def display_name(self) -> str:
        """The baseline's name in the summary and the report."""
        if self.name:
            return self.name
        return self.model.name if self.model is not None else Path(self.files()[0]).stem
