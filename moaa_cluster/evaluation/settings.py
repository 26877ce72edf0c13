"""What one evaluation run compares and how: its settings and its baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError


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
        """The answers files, user-expanded; None for a baseline model.

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
        return [str(Path(str(p)).expanduser()) for p in items]

    def display_name(self) -> str:
        """The baseline's name in the summary and the report."""
        if self.name:
            return self.name
        return self.model.name if self.model is not None else Path(self.files()[0]).stem
