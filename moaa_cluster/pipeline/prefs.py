"""Stage 2: candidate sampling + MoA judging -> DPO preference pairs (``prefs.parquet``).

Per row, on a Ray Data actor pool: the sampler model (the SFT checkpoint in the paper) writes
N candidates (temperature 0.8, distinct seeds); the judge compares them with the configured
plan (the paper's round robin of all pairs, both orders); the best becomes ``chosen`` and the
worst ``rejected``. Rows whose N answers are identical, or whose scores show no strict
preference, are recorded in ``rejects.jsonl`` with that reason and produce no pair.

Truncated candidates (our rule; the paper does not discuss them): a candidate that stopped on
``finish_reason: length`` was cut off by ``max_tokens``, so it is flagged per candidate
(``candidate_truncated``) and counted. With ``truncated: exclude_from_chosen`` (the default) it
is still judged but never chosen, because DPO would teach the model to write text that stops
mid-sentence. It may be rejected: it is the policy's own sample, and an answer that runs past
the cap (2,048 tokens at paper scale, usually a loop) is one to push down, as long as the
judge ranks it worst. A row with no candidate that may be chosen becomes a recorded skip
(``all_truncated`` without judging, or ``truncated_preferred`` when only truncated candidates
score above the worst). ``truncated: allow`` treats them like any other candidate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.engines.describe import model_record
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.judge.costs import calls_per_pair, planned_comparisons
from moaa_cluster.judge.judge import JudgeSpec, rank
from moaa_cluster.pipeline.frame import PoolSettings, RowWorker, StreamJob, stream_dataset
from moaa_cluster.pipeline.instructions import Instructions, open_instructions
from moaa_cluster.pipeline.prefs_outputs import SHARD_SCHEMA, summary_text, write_outputs
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.task_run import TaskRun
from moaa_cluster.seeds import derive_seed

log = logging.getLogger(__name__)

SAMPLER = "sampler"  # backend key of the model that writes the candidates
TRUNCATED_POLICIES = ("exclude_from_chosen", "allow")


@dataclass
class PrefsSettings:
    """Knobs of one preference run (from ``conf/prefs.yaml``)."""

    num_candidates: int = 5
    sampling: dict = field(default_factory=lambda: {"temperature": 0.8, "max_tokens": 256})
    plan: str = "round_robin"
    seed: int | None = 0
    batch_size: int = 4
    workers: int = 2
    worker_cpus: float = 0.25
    request_timeout_s: float | None = 900.0
    truncated: str = "exclude_from_chosen"  # or "allow": see the module docstring

    def __post_init__(self) -> None:
        if self.truncated not in TRUNCATED_POLICIES:
            raise ConfigError(
                f"prefs truncated: {self.truncated!r} is not one of {list(TRUNCATED_POLICIES)}"
            )


def prompt_messages(row: dict) -> list[dict]:
    """The conversation to answer: earlier turns with their given answers, then the last turn.

    Raises:
        ValueError: a multi-turn row lacks the assistant answers of its earlier turns.
    """
    turns, answers = list(row["turns"]), list(row.get("answers") or [])
    if len(answers) < len(turns) - 1:
        raise ValueError(
            f"multi-turn prompt has {len(turns)} user turns but {len(answers)} assistant answers; "
            "stage 2 needs the answers of every earlier turn as history"
        )
    return chat_messages(row.get("system"), turns, answers[: len(turns) - 1])


def candidate_seed(base: int | None, row_id: str, k: int) -> int | None:
    return derive_seed(base, row_id, f"candidate{k}")


class PrefsWorker(RowWorker):
    """Ray Data actor: sample candidates, judge them, pick the pair, for each row of a batch."""

    schema = SHARD_SCHEMA

    def __init__(self, judge: JudgeSpec | None, specs: dict, settings: PrefsSettings):
        from moaa_cluster.engines.backends import make_backend

        self.judge = judge
        self.settings = settings
        self.backends = {k: make_backend(s, settings.request_timeout_s) for k, s in specs.items()}

    def start(self, row: dict) -> dict:
        out = {k: row.get(k) for k in ("id", "source", "source_id")}
        out.update(status=None, prompt=[], chosen=[], rejected=[], candidates=[])
        return out

    async def fill(self, row: dict, out: dict) -> None:
        prompt = prompt_messages(row)
        out["prompt"] = prompt
        await self._sample_and_rank(row, prompt, out)

    async def _sample_and_rank(self, row: dict, prompt: list[dict], out: dict) -> None:
        """Fills ``out`` with candidates, judge results and the pair (retried as a whole)."""
        s = self.settings
        samples = await asyncio.gather(
            *(
                self.backends[SAMPLER].chat(
                    prompt, {**s.sampling, "seed": candidate_seed(s.seed, row["id"], k)}
                )
                for k in range(s.num_candidates)
            )
        )
        texts = [c.text for c in samples]
        truncated = [c.finish_reason == "length" for c in samples]
        out["candidates"] = texts
        out["candidate_tokens"] = [c.completion_tokens for c in samples]
        out["candidate_finish_reasons"] = [c.finish_reason for c in samples]
        out["candidate_truncated"] = truncated
        exclude = s.truncated == "exclude_from_chosen"
        if len(set(texts)) == 1:
            out["status"] = "identical"
        elif self.judge is None:  # `moaa sample`: candidates only
            out["status"] = "sampled"
        elif exclude and all(truncated):  # no candidate may be chosen: judging cannot help
            out["status"] = "all_truncated"
        else:
            eligible = [not t for t in truncated] if exclude else None
            ranked = await rank(
                self.judge, self.backends, prompt, texts, s.plan, key=row["id"], eligible=eligible
            )
            record_ranking(out, ranked, texts)


def record_ranking(out: dict, ranked: dict, texts: list[str]) -> None:
    """Fills a row's scores, judge record, counts, status and pair from ``judge.rank``."""
    out["scores"] = ranked["scores"]
    out["judge"] = json.dumps(
        {"pairs": ranked["pairs"], "comparisons": ranked["comparisons"]}, ensure_ascii=False
    )
    out.update({f"judge_{k}": v for k, v in ranked["counts"].items()})
    if ranked["chosen"] is None:
        reasons = {"no_preference": "no_preference", "ineligible_preferred": "truncated_preferred"}
        out["status"] = reasons[ranked["no_pair"]]
        return
    out["status"] = "ok"
    out["chosen_index"] = ranked["chosen"]
    out["rejected_index"] = ranked["rejected"]
    out["chosen"] = [{"role": "assistant", "content": texts[ranked["chosen"]]}]
    out["rejected"] = [{"role": "assistant", "content": texts[ranked["rejected"]]}]


def make_preferences(
    sources: list,
    judge: JudgeSpec | None,
    specs: dict[str, ModelSpec],
    settings: PrefsSettings,
    opts: RunOptions,
) -> dict:
    """Runs stage 2 end to end into ``opts.run_dir``; ``specs`` holds ``sampler`` and judge
    models.

    The prompts stream from storage to storage as synth's instructions do
    (:func:`moaa_cluster.pipeline.instructions.open_instructions`: read and validated by Ray
    Data tasks, rejects written by them, duplicates and finished rows dropped there); the
    workers write the shards and Ray Data the outputs. With ``judge=None`` it only samples
    the candidates (``moaa sample``).
    """
    from moaa_cluster.engines import host as engine_host

    if SAMPLER not in specs:
        raise ValueError(f"specs need a {SAMPLER!r} model")
    run = TaskRun.open(opts, specs.values())
    engine_host.preflight(opts.cluster, list(specs.values()))
    with engine_host.hosting(
        opts.cluster, keep=opts.keep_engines, timings=run.timings, report=run.ray
    ) as host:
        found = open_instructions(sources, run.run_dir, limit=opts.limit)
        run.timings.update(found.timings)
        if found.todo_rows:
            host.use(list(specs.values()))
            _sample_and_judge(found, judge, specs, settings, run)
        t0 = time.monotonic()
        counts = write_outputs(run.run_dir, sample_only=judge is None)
        run.timings["write"] = time.monotonic() - t0
    counts.update(
        {
            "rows_in": found.valid + counts["rejects_input"],
            "rows_resumed": found.valid - found.todo_rows,
        }
    )
    manifest = run.save_manifest(
        "prefs" if judge else "sample",
        counts,
        {k: model_record(s) for k, s in specs.items()},
        {
            "judge": None if judge is None else judge_record(judge, settings),
            "candidates": {
                "num": settings.num_candidates,
                "sampling": settings.sampling,
                "truncated": settings.truncated,  # exclude_from_chosen | allow
            },
        },
    )
    text = summary_text(counts, run.timings, run.run_dir, settings, sampled_only=judge is None)
    print(text, flush=True)
    return manifest


def _sample_and_judge(
    found: Instructions,
    judge: JudgeSpec | None,
    specs: dict[str, ModelSpec],
    settings: PrefsSettings,
    run: TaskRun,
) -> None:
    """Streams the rows left to do through :class:`PrefsWorker` (every engine resident)."""
    t0 = time.monotonic()
    try:
        stream_dataset(
            found.todo,
            found.todo_rows,
            StreamJob(
                PrefsWorker,
                {"judge": judge, "specs": specs, "settings": settings},
                SHARD_SCHEMA,
                run.run_dir,
            ),
            PoolSettings(
                batch_size=settings.batch_size,
                workers=settings.workers,
                worker_cpus=settings.worker_cpus,
                desc="prefs",
                progress=run.opts.progress,
                calls=found.todo_rows * calls_per_row(judge, settings),
            ),
        )
    finally:
        run.timings["sample_and_judge"] = time.monotonic() - t0


def calls_per_row(judge: JudgeSpec | None, settings: PrefsSettings) -> int:
    """Model calls one instruction is planned to take: its candidates, then the judge's pairs
    (fewer when candidates are identical or all truncated, more when a verdict is asked again)."""
    k = settings.num_candidates
    if judge is None:
        return k
    return k + planned_comparisons(settings.plan, k) * calls_per_pair(judge)


def judge_record(judge: JudgeSpec, settings: PrefsSettings) -> dict:
    """The judge as the manifest records it (with the comparison plan)."""
    return {
        "name": judge.name,
        "proposers": judge.proposers,
        "aggregator": judge.aggregator,
        "criteria_filtering": judge.criteria_filtering,
        "plan": settings.plan,
    }
