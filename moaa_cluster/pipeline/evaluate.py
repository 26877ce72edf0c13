"""Offline pairwise evaluation: a model's answers against a baseline's, judged locally.

Per question, on a Ray Data actor pool (``eval_worker.EvalWorker``): the evaluated model
answers every turn with its own earlier answers as context; the baseline's answers come from
a file (Arena-Hard / MT-Bench / AlpacaEval / our own outputs, matched by question id) or are
generated the same way by a baseline model; the judge (the MoA judge or one model alone)
compares the two in both orders (``judge.judge_pair``: agreement wins, disagreement ties).
Multi-turn questions are judged on the full conversation (``answers.judge_inputs``).

Outputs in the run directory: ``answers/`` and ``answers.parquet`` (and ``baseline_answers/``
and ``baseline_answers.parquet`` for a baseline model; usable as a baseline file later),
``judgments/`` and ``judgments.parquet`` (``eval_outputs.py``), ``summary.json`` (win/tie/loss, win rate with a bootstrap interval,
length-controlled win rate, judge statistics, tokens: ``evaluation/summary.py``),
``rejects.jsonl``, ``manifest.json``.

Storage to storage, as synth's instructions: Ray Data read tasks validate the questions and a
row check (Ray tasks) matches their baseline answers and checks their lengths (``eval_inputs``), both
writing their rejects; the questions an earlier run finished are dropped by the shards' id
column; the outputs are written by one pass over the shards (``eval_outputs.write_outputs``),
which returns only each finished question's small fields for the summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moaa_cluster.engines.describe import model_record
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.protocol_summary import format_protocol, protocol_summary
from moaa_cluster.evaluation.settings import Baseline, EvalSettings
from moaa_cluster.evaluation.summary import (
    JUDGED_ON,
    format_summary,
    summarize_judgments,
    tally_tokens,
    truncated_answers,
)
from moaa_cluster.judge.costs import calls_per_pair
from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.pipeline.eval_inputs import (
    BASELINE_PART,
    planned_calls,
    read_questions,
)
from moaa_cluster.pipeline.eval_outputs import EvalResults, failure_rejects, write_outputs
from moaa_cluster.pipeline.eval_worker import BASELINE, MODEL, SHARD_SCHEMA, EvalWorker
from moaa_cluster.pipeline.frame import PoolSettings, StreamJob, stream_dataset
from moaa_cluster.pipeline.instructions import drop_finished, id_array_ref
from moaa_cluster.runs import storage
from moaa_cluster.runs.datasets import concat_rejects, part_lines
from moaa_cluster.runs.files import read_json, save_json
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import open_run, shard_dir
from moaa_cluster.runs.storage import join
from moaa_cluster.runs.task_run import TaskRun

log = logging.getLogger(__name__)


@dataclass
class _Eval:
    """One evaluation's fixed parts: what it compares, how, and the engines it needs."""

    model: ModelSpec
    judge: JudgeSpec
    judge_specs: dict[str, ModelSpec]
    baseline: Baseline
    settings: EvalSettings
    files: list[str] | None  # the baseline's answers files (None: a baseline model)
    specs: dict[str, ModelSpec]  # backend key -> spec: the model, the judge's, a baseline's


@dataclass
class _Questions:
    """The questions read (Ray datasets and counts; the rows stay in the cluster)."""

    valid: object  # the questions that passed the input checks
    todo: object  # those an earlier run of the directory did not finish
    counts: dict  # questions, rejected, baseline_records_rejected, valid, todo, calls


def evaluate(
    sources: list,
    model: ModelSpec,
    judge: JudgeSpec,
    judge_specs: dict[str, ModelSpec],
    baseline: Baseline,
    settings: EvalSettings | None,
    opts: RunOptions,
) -> dict:
    """Evaluates ``model`` against ``baseline`` on ``sources``' questions; returns the summary.

    Args:
        sources: Question sources (``data.sources.Source``; see ``answers.question_sources``).
        model: The model to evaluate (e.g. a DPO checkpoint's spec).
        judge: The judge (``JudgeSpec``; ``judge.single(key)`` for one model alone).
        judge_specs: Model specs of the judge's model keys.
        baseline: An answers file or a model to generate the baseline's answers, and its name.
        settings: Sampling, seeds, batching and statistics settings (None: the defaults).
        opts: Run directory (an unfinished run there is resumed), cluster, overwrite, limit
            of questions, progress bar, engines kept, extra manifest entries.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ConfigError: Neither or both baselines, a judge model without a spec, two roles
            sharing a name with different settings, or a run directory holding another
            evaluation.
    """
    from moaa_cluster.engines import host as engine_host

    t_start = time.monotonic()
    ev = _prepare(model, judge, judge_specs, baseline, settings or EvalSettings())
    run = TaskRun(
        opts, open_run(opts.run_dir, ev.specs.values(), overwrite=opts.overwrite), t_start
    )
    fingerprint = _fingerprint(model, ev.files, baseline.model, judge, ev.settings.protocol.name)
    _claim(run.run_dir, fingerprint)
    specs = list(ev.specs.values())
    engine_host.preflight(opts.cluster, specs)
    with engine_host.hosting(opts.cluster, keep=opts.keep_engines, timings=run.timings) as host:
        questions = _read_questions(ev, sources, run)
        run.timings["read"] = run.elapsed()
        if questions.counts["todo"]:
            host.use(specs)
            _answer_and_judge(ev, questions, run)
        results = write_outputs(
            run.run_dir,
            id_array_ref(questions.valid),
            model.name,
            baseline.model.name if baseline.model is not None else None,
        )
        concat_rejects(run.run_dir, failure_rejects(results.failed))
    run.timings["total"] = run.elapsed()
    cumulative = _cumulative_timings(run)
    summary = _summary(ev, questions.counts, results, run.timings, cumulative)
    save_json(join(run.run_dir, "summary.json"), summary)
    _save_manifest(ev, summary, results, run, cumulative, questions.counts)
    _print_result(summary, run.timings, run.run_dir, len(results.failed))
    return summary


def _prepare(
    model: ModelSpec,
    judge: JudgeSpec,
    judge_specs: dict[str, ModelSpec],
    baseline: Baseline,
    settings: EvalSettings,
) -> _Eval:
    """Checks the baseline and the roles' specs; the engines every role needs, by key."""
    files = baseline.files() if settings.protocol.needs_baseline else None
    if settings.protocol.name != "pairwise":  # the benchmarks' prompts ask one judge model
        judge = judge.single(judge.aggregator)
    missing = [k for k in judge.models if k not in judge_specs]
    if missing:
        raise ConfigError(f"judge {judge.name}: no model spec for {missing}")
    specs = {MODEL: model, **{k: judge_specs[k] for k in judge.models}}
    if baseline.model is not None:
        specs[BASELINE] = baseline.model
    _check_models(specs)
    return _Eval(model, judge, judge_specs, baseline, settings, files, specs)


def _read_questions(ev: _Eval, sources: list, run: TaskRun) -> _Questions:
    """The questions, each with the baseline's answers (or none to generate), read and checked
    by Ray Data (``eval_inputs``); the rejects written as parts of the run's ``rejects/``."""
    s = ev.settings
    lengths = {
        "model": ev.model,
        "baseline_model": ev.baseline.model,
        "judge": ev.judge,
        "judge_specs": ev.judge_specs,
        "settings": s,
    }
    valid = read_questions(sources, run.run_dir, run.opts.limit, ev.files, lengths)
    n_valid = valid.count()
    todo = drop_finished(valid, run.run_dir)
    n_todo, calls = planned_calls(todo, s.protocol, calls_per_pair(ev.judge)) if n_valid else (0, 0)
    parts = part_lines(run.run_dir)
    baseline_rejected = parts.pop(BASELINE_PART, 0)
    counts = {
        "questions": n_valid + sum(parts.values()),
        "rejected": sum(parts.values()),
        "baseline_records_rejected": baseline_rejected,
        "valid": n_valid,
        "todo": n_todo,
        "calls": calls,
    }
    log.info(
        "%d questions to evaluate (%d rejected, %d already done, %d to run)",
        n_valid,
        counts["rejected"],
        n_valid - n_todo,
        n_todo,
    )
    return _Questions(valid, todo, counts)


def _cumulative_timings(run: TaskRun) -> dict:
    """This invocation's wall times added to those of the earlier ones on the run directory.

    A resumed run adds to the time its earlier invocations spent on this run directory, so
    the cost and throughput of the whole result stay known (the report reads them).
    """
    previous = (read_json(join(run.run_dir, "manifest.json")) or {}).get("timings_s") or {}
    timings = run.timings
    return {k: previous.get(k, 0.0) + timings.get(k, 0.0) for k in {**previous, **timings}}


def _claim(run_dir: Path | str, fingerprint: dict) -> None:
    """Records which evaluation the run directory holds; refuses to mix in another one."""
    run_file = join(run_dir, "run.json")
    held = read_json(run_file)
    # rows of another model, baseline or judge must not be mixed into this one: any shard
    # refuses (a shard of failed rows only too; the finished ids are not read here)
    shards = storage.list_files(shard_dir(run_dir), ".parquet")
    if held is not None and held != fingerprint and shards:
        raise ConfigError(
            f"{run_dir} holds an evaluation with another model, baseline or judge "
            f"({run_file}); use overwrite=true or another run_name"
        )
    save_json(run_file, fingerprint)


def _answer_and_judge(ev: _Eval, questions: _Questions, run: TaskRun) -> None:
    """Streams the questions still to do into the shards, every role's engine resident."""
    t0 = time.monotonic()
    try:
        job = StreamJob(
            EvalWorker,
            {"judge": ev.judge, "specs": ev.specs, "settings": ev.settings},
            SHARD_SCHEMA,
            run.run_dir,
        )
        pool = PoolSettings(
            batch_size=ev.settings.batch_size,
            workers=ev.settings.workers,
            worker_cpus=ev.settings.worker_cpus,
            desc="eval",
            progress=run.opts.progress,
            calls=questions.counts["calls"],
        )
        stream_dataset(questions.todo, questions.counts["todo"], job, pool)
    finally:
        run.timings["answer_and_judge"] = time.monotonic() - t0


def _summary(
    ev: _Eval, counts: dict, results: EvalResults, timings: dict, cumulative: dict
) -> dict:
    """``summary.json``: counts, win rates, judge statistics, tokens and wall times."""
    protocol = ev.settings.protocol
    baseline = ev.baseline.display_name() if protocol.needs_baseline else None
    finished = results.finished
    if protocol.name == "pairwise":
        judged = summarize_judgments(finished, ev.settings)
    else:
        judged = {"protocol": protocol_summary(finished, ev.settings, ev.model.name, baseline)}
    return {
        "model": ev.model.name,
        "baseline": baseline,
        "judge_name": ev.judge.name,
        "judge_models": ev.judge.models,
        "judged_on": JUDGED_ON,
        "length_unit": "characters of all the side's answer turns",
        "questions": counts["questions"],
        "evaluated": len(finished),
        "failed": len(results.failed),
        "rejected": counts["rejected"],
        "baseline_records_rejected": counts["baseline_records_rejected"],
        **judged,
        "answers_truncated": truncated_answers(finished),
        "tokens_per_model": tally_tokens(finished, ev.model, ev.baseline.model, ev.judge.name),
        "timings_s": {k: round(v, 2) for k, v in cumulative.items()},
        "last_invocation_s": {k: round(v, 2) for k, v in timings.items()},
    }


def _save_manifest(
    ev: _Eval,
    summary: dict,
    results: EvalResults,
    run: TaskRun,
    cumulative: dict,
    counts: dict,
) -> None:
    """The eval manifest; ``counts``: the questions read (:class:`_Questions`)."""
    judge = ev.judge
    rows = results.finished + results.failed
    Manifest(
        task="eval",
        # complete: every question that passed the input checks was answered and judged
        counts={
            "questions": summary["questions"],
            "evaluated": summary["evaluated"],
            "rows_failed": summary["failed"],
            "rejects": summary["rejected"],
            "rows_resumed": counts["valid"] - counts["todo"],
            # shards written before the frame kept `retries` have none
            "rows_retried": sum(1 for r in rows if r.get("retries")),
            "tokens_per_model": summary["tokens_per_model"],
        },
        timings_s=cumulative,
        models={k: model_record(s) for k, s in ev.specs.items()},
        details={
            "last_invocation_s": summary["last_invocation_s"],
            "summary": {
                k: summary[k]
                for k in ("model", "baseline", "judge_name", "win_rate", "protocol")
                if k in summary
            },
            "baseline": {"answers": ev.files}
            if ev.files
            else {"model": ev.baseline.model.name if ev.baseline.model else None},
            "judge": {
                "name": judge.name,
                "proposers": judge.proposers,
                "aggregator": judge.aggregator,
                "criteria_filtering": judge.criteria_filtering,
            },
            "settings": asdict(ev.settings),
            "cluster": run.opts.cluster,
            **(run.opts.manifest_extra or {}),
        },
    ).save(run.run_dir)


def _print_result(summary: dict, timings: dict, run_dir: Path | str, failed: int) -> None:
    text = format_protocol(summary) if "protocol" in summary else format_summary(summary)
    print(text, flush=True)
    print(
        "wall time: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"\noutput: {run_dir}  (answers.parquet, judgments.parquet, summary.json, "
        "rejects.jsonl)",
        flush=True,
    )
    if failed:
        print(
            f"WARNING: {failed} question(s) failed in inference (reasons in rejects.jsonl); "
            "rerun the same command to retry only those",
            flush=True,
        )


def _check_models(specs: dict[str, ModelSpec]) -> None:
    """Two roles may share an engine only if they describe the same model the same way."""
    by_name: dict[str, tuple[str, ModelSpec]] = {}
    for key, spec in specs.items():
        prev = by_name.get(spec.name)
        if prev is None:
            by_name[spec.name] = (key, spec)
        elif asdict(prev[1]) != asdict(spec):
            raise ConfigError(
                f"{prev[0]} and {key} are both named {spec.name!r} but differ "
                f"({prev[1].source} vs {spec.source}); give one of them another name "
                f"(e.g. model.name=...)"
            )


def _fingerprint(
    model: ModelSpec,
    baseline: list[str] | None,
    baseline_model: ModelSpec | None,
    judge,
    protocol: str = "pairwise",
) -> dict:
    out = {
        "model": {"name": model.name, "source": model.source},
        "baseline": {"answers": baseline}
        if baseline
        else {"name": baseline_model.name, "source": baseline_model.source}
        if baseline_model
        else None,
        "judge": {"name": judge.name, "models": judge.models},
    }
    if protocol != "pairwise":  # (pairwise runs written before protocols existed resume)
        out["protocol"] = protocol
    return out
