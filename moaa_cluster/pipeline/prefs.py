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
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from moaa_cluster.engines.describe import model_record
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.judge.judge import JudgeSpec, rank
from moaa_cluster.pipeline.frame import MESSAGE, RowWorker, shard_schema, stream_rows
from moaa_cluster.runs.files import write_parquet_atomic
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.shards import consolidate, finished_ids, open_run

log = logging.getLogger(__name__)

SAMPLER = "sampler"  # backend key of the model that writes the candidates
TRUNCATED_POLICIES = ("exclude_from_chosen", "allow")

COUNT_FIELDS = (
    "comparisons",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "verdict_unparsed",
    "verdict_recovered",
    "verdict_unresolved",
    "criteria_fallback",
)
INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("system", pa.string()),
        ("turns", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
    ]
)
SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.list_(MESSAGE)),
        ("rejected", pa.list_(MESSAGE)),
        ("candidates", pa.list_(pa.string())),
        ("candidate_tokens", pa.list_(pa.int64())),
        ("candidate_finish_reasons", pa.list_(pa.string())),
        ("candidate_truncated", pa.list_(pa.bool_())),  # finish_reason "length": cut off
        ("scores", pa.list_(pa.float64())),
        ("chosen_index", pa.int32()),
        ("rejected_index", pa.int32()),
        # ok | identical | all_truncated | no_preference | truncated_preferred | sampled
        ("status", pa.string()),
        ("judge", pa.string()),  # JSON: every comparison (criteria, critiques, verdicts)
        *[(f"judge_{f}", pa.int64()) for f in COUNT_FIELDS],
    ]
)
PAIR_COLUMNS = [
    "id",
    "source",
    "source_id",
    "prompt",
    "chosen",
    "rejected",
    "candidates",
    "candidate_tokens",
    "candidate_finish_reasons",
    "candidate_truncated",
    "scores",
    "chosen_index",
    "rejected_index",
    "judge",
    *[f"judge_{f}" for f in COUNT_FIELDS],
]


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
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for t, question in enumerate(turns):
        messages.append({"role": "user", "content": question})
        if t < len(turns) - 1:
            messages.append({"role": "assistant", "content": answers[t]})
    return messages


def candidate_seed(base: int | None, row_id: str, k: int) -> int | None:
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}:{row_id}:candidate{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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


CANDIDATE_COLUMNS = [
    "id",
    "source",
    "source_id",
    "prompt",
    "candidates",
    "candidate_tokens",
    "candidate_finish_reasons",
    "candidate_truncated",
]
SKIP_REASONS = {
    "identical": "all candidates identical: no preference to learn",
    "no_preference": "judge scores show no strict preference among the candidates",
    "all_truncated": "every candidate stopped at max_tokens (finish_reason: length), and "
    "prefs.truncated=exclude_from_chosen lets none be chosen; not judged",
    "truncated_preferred": "only candidates that stopped at max_tokens (finish_reason: length) "
    "score above the worst, and prefs.truncated=exclude_from_chosen lets none of them be chosen",
}
JUDGED = ("ok", "no_preference", "truncated_preferred")


def write_outputs(run_dir: Path, input_rejects: list[dict], sample_only: bool = False) -> dict:
    """Consolidates shards into ``prefs.parquet`` (TRL preference format) and rejects.

    With ``sample_only`` (``moaa sample``) it writes ``candidates.parquet`` instead.

    Returns:
        The run's counts (see ``run_counts``).
    """
    from moaa_cluster.runs.files import append_jsonl

    done, failed = consolidate(run_dir)

    def table(rows: list[dict], columns: list[str]) -> pa.Table:
        schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns])
        return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)

    if sample_only:
        sampled = sorted((r for r in done if r["status"] == "sampled"), key=lambda r: r["id"])
        write_parquet_atomic(
            table(sampled, CANDIDATE_COLUMNS), Path(run_dir) / "candidates.parquet"
        )
    pairs = sorted((r for r in done if r["status"] == "ok"), key=lambda r: (r["source"], r["id"]))
    write_parquet_atomic(table(pairs, PAIR_COLUMNS), Path(run_dir) / "prefs.parquet")
    rejects_path = Path(run_dir) / "rejects.jsonl"
    rejects_path.unlink(missing_ok=True)
    append_jsonl(rejects_path, input_rejects)
    append_jsonl(
        rejects_path,
        [
            {
                "source": r["source"],
                "where": r["id"],
                "stage": "prefs",
                "reason": SKIP_REASONS[r["status"]],
                "record": {
                    "status": r["status"],
                    "candidates": r["candidates"],
                    "candidate_truncated": r.get("candidate_truncated"),
                    "scores": r["scores"],
                },
            }
            for r in done
            if r["status"] in SKIP_REASONS
        ]
        + [
            {
                "source": r["source"],
                "where": r["id"],
                "stage": "inference",
                "reason": r["error"],
                "record": {"prompt": r["prompt"]},
            }
            for r in failed
        ],
    )
    return run_counts(done, failed, input_rejects)


def run_counts(done: list[dict], failed: list[dict], input_rejects: list[dict]) -> dict:
    """The manifest's counts: pairs, skips by reason, truncation, judge totals and rates."""
    judged = [r for r in done if r["status"] in JUDGED]
    totals = {f: sum(r[f"judge_{f}"] or 0 for r in judged) for f in COUNT_FIELDS}
    pairs = [r for r in done if r["status"] == "ok"]

    def truncated_at(r: dict, index: str) -> bool:
        flags, k = r.get("candidate_truncated") or [], r[index]
        return k is not None and k < len(flags) and bool(flags[k])

    return {
        "candidate_sets": sum(r["status"] != "identical" for r in done),
        "pairs": len(pairs),
        "skipped_identical": sum(r["status"] == "identical" for r in done),
        "skipped_no_preference": sum(r["status"] == "no_preference" for r in done),
        "skipped_all_truncated": sum(r["status"] == "all_truncated" for r in done),
        "skipped_truncated_preferred": sum(r["status"] == "truncated_preferred" for r in done),
        "candidates": sum(len(r.get("candidates") or []) for r in done),
        "candidates_truncated": sum(sum(r.get("candidate_truncated") or []) for r in done),
        "pairs_chosen_truncated": sum(truncated_at(r, "chosen_index") for r in pairs),
        "pairs_rejected_truncated": sum(truncated_at(r, "rejected_index") for r in pairs),
        "rows_failed": len(failed),
        "rows_retried": sum(1 for r in done + failed if r.get("retries")),
        "rejects_input": len(input_rejects),
        "judge": totals,
        "verdict_parse_failure_rate": totals["verdict_unparsed"] / max(1, totals["comparisons"]),
        "verdict_unresolved_rate": totals["verdict_unresolved"] / max(1, totals["comparisons"]),
    }


def make_preferences(
    sources: list,
    judge: JudgeSpec | None,
    specs: dict[str, ModelSpec],
    settings: PrefsSettings,
    run_dir: Path,
    cluster: dict,
    *,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    keep_engines: bool = False,
    manifest_extra: dict | None = None,
) -> dict:
    """Runs stage 2 end to end into ``run_dir``; ``specs`` holds ``sampler`` and judge models.

    With ``judge=None`` it only samples the candidates (``moaa sample``).
    """
    from moaa_cluster import runtime
    from moaa_cluster.data.sources import load_rows

    t_start = time.monotonic()
    if SAMPLER not in specs:
        raise ValueError(f"specs need a {SAMPLER!r} model")
    run_dir = open_run(run_dir, specs.values(), overwrite=overwrite)
    rows, rejects = load_rows(sources, limit)
    done = finished_ids(run_dir)
    todo = [r for r in rows if r["id"] not in done]
    timings: dict[str, float] = {"read": time.monotonic() - t_start}
    ray_report: dict = {}  # Ray session, engines released, placement groups left
    if todo:
        with runtime.engines(
            cluster, list(specs.values()), keep=keep_engines, timings=timings, report=ray_report
        ):
            t0 = time.monotonic()
            try:
                stream_rows(
                    todo,
                    INPUT_SCHEMA,
                    PrefsWorker,
                    {"judge": judge, "specs": specs, "settings": settings},
                    SHARD_SCHEMA,
                    run_dir,
                    batch_size=settings.batch_size,
                    workers=settings.workers,
                    worker_cpus=settings.worker_cpus,
                    desc="prefs rows",
                    progress=progress,
                )
            finally:
                timings["sample_and_judge"] = time.monotonic() - t0
    counts = write_outputs(run_dir, rejects, sample_only=judge is None)
    counts.update({"rows_in": len(rows) + len(rejects), "rows_resumed": len(rows) - len(todo)})
    timings["total"] = time.monotonic() - t_start
    manifest = Manifest(
        task="prefs" if judge else "sample",
        counts=counts,
        timings_s=timings,
        models={k: model_record(s) for k, s in specs.items()},
        details={
            "judge": None
            if judge is None
            else {
                "name": judge.name,
                "proposers": judge.proposers,
                "aggregator": judge.aggregator,
                "criteria_filtering": judge.criteria_filtering,
                "plan": settings.plan,
            },
            "candidates": {
                "num": settings.num_candidates,
                "sampling": settings.sampling,
                "truncated": settings.truncated,  # exclude_from_chosen | allow
            },
            "ray": ray_report or None,
            **(manifest_extra or {}),
        },
    ).save(run_dir)
    print(summary_text(counts, timings, run_dir, settings, sampled_only=judge is None), flush=True)
    return manifest


def summary_text(
    counts: dict, timings: dict, run_dir: Path, settings: PrefsSettings, sampled_only: bool
) -> str:
    """The lines a run prints at its end: what was produced, skipped, truncated, and spent."""
    lines = []
    if counts["rows_retried"]:
        lines.append(
            f"retried: {counts['rows_retried']} rows hit a transient engine error (an engine "
            "restarting) and were run again"
        )
    failed = f"{counts['rows_failed']} failed, {counts['rejects_input']} rejected on input"
    truncated = (
        f"truncated (finish_reason: length, max_tokens {settings.sampling.get('max_tokens')}): "
        f"{counts['candidates_truncated']} of {counts['candidates']} candidates"
    )
    wall = "wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    if sampled_only:
        return "\n".join(
            [
                *lines,
                f"candidate sets: {counts['candidate_sets']} x {settings.num_candidates} "
                f"(skipped: {counts['skipped_identical']} identical; {failed})",
                truncated,
                wall,
                f"output: {run_dir / 'candidates.parquet'}  (rejects: rejects.jsonl)",
            ]
        )
    j = counts["judge"]
    policy = settings.truncated
    return "\n".join(
        [
            *lines,
            f"pairs: {counts['pairs']} (skipped: {counts['skipped_identical']} identical, "
            f"{counts['skipped_no_preference']} no preference, "
            f"{counts['skipped_all_truncated']} all truncated, "
            f"{counts['skipped_truncated_preferred']} only truncated preferred; {failed})",
            f"{truncated}; truncated={policy}: {counts['pairs_chosen_truncated']} chosen, "
            f"{counts['pairs_rejected_truncated']} rejected",
            f"judge: {j['comparisons']} comparisons, {j['calls']} calls, {j['prompt_tokens']} "
            f"prompt + {j['completion_tokens']} generated tokens; verdicts unparsed "
            f"{j['verdict_unparsed']}, recovered {j['verdict_recovered']}, unresolved "
            f"{j['verdict_unresolved']}; criteria fallbacks {j['criteria_fallback']}",
            wall,
            f"output: {run_dir / 'prefs.parquet'}  (rejects: rejects.jsonl)",
        ]
    )
