"""What the report knows about one run directory (:class:`RunPart`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# the phase of each task's timings that is inference (for throughput)
INFERENCE_PHASE = {
    "synth": "generation",
    "prefs": "sample_and_judge",
    "sample": "sample_and_judge",
    "judge-eval": "judging",
    "eval": "answer_and_judge",
}


@dataclass
class RunPart:
    """What the report knows about one run directory: a task's run or one pipeline stage."""

    name: str
    kind: str
    path: Path
    manifest: dict | None = None
    timings: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)  # model -> {calls, prompt_tokens, completion_tokens}
    gpus: float | None = None
    gpu_note: str = ""
    judge_rates: list[dict] = field(default_factory=list)  # label, parse failures, consistency
    win_rates: list[dict] = field(default_factory=list)  # label, rate, interval, lc
    scores: tuple[list[float], list[float]] | None = None  # chosen, rejected
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step, loss)
    lines: list[str] = field(default_factory=list)  # markdown details
    missing: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float | None:
        return self.timings.get("total")

    @property
    def inference_s(self) -> float | None:
        phase = INFERENCE_PHASE.get(self.kind)
        return self.timings.get(phase) if phase else None
