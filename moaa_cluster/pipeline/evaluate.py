"""Offline pairwise evaluation: a model's answers against a baseline's, judged locally.

Per question, on a Ray Data actor pool (``eval_worker.EvalWorker``): the evaluated model
answers every turn with its own earlier answers as context; the baseline's answers come from
a file (Arena-Hard / MT-Bench / AlpacaEval / our own outputs, matched by question id) or are
generated the same way by a baseline model; the judge (the MoA judge or one model alone)
compares the two in both orders (``judge.judge_pair``: agreement wins, disagreement ties).
Multi-turn questions are judged on the full conversation (``answers.judge_inputs``).

Outputs in the run directory: ``answers.parquet`` (and ``baseline_answers.parquet`` for a
baseline model; both usable as a baseline file later), ``judgments.parquet``
(``eval_outputs.py``), ``summary.json`` (win/tie/loss, win rate with a bootstrap interval,
length-controlled win rate, judge statistics, tokens: ``evaluation/summary.py``),
``rejects.jsonl``, ``manifest.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moaa_cluster.engines.describe import model_record
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.answers import attach_baseline, load_baseline
from moaa_cluster.evaluation.lengths import length_rejects
from moaa_cluster.evaluation.protocol_summary import format_protocol, protocol_summary
from moaa_cluster.evaluation.settings import Baseline, EvalSettings, ProtocolSettings
from moaa_cluster.evaluation.summary import (
    JUDGED_ON,
    format_summary,
    summarize_judgments,
    tally_tokens,
    truncated_answers,
)
from moaa_cluster.judge.costs import calls_per_pair
from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.pipeline.eval_outputs import write_answers_and_judgments, write_eval_rejects
from moaa_cluster.pipeline.eval_protocols import attach_mt_bench
from moaa_cluster.pipeline.eval_worker import (
    BASELINE,
    INPUT_SCHEMA,
    MODEL,
    SHARD_SCHEMA,
    EvalWorker,
)
from moaa_cluster.pipeline.frame import PoolSettings, stream_rows
from moaa_cluster.runs.files import read_json, save_json
from moaa_cluster.runs.manifest import Manifest
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import consolidate, finished_ids, open_run
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
    """The questions to evaluate and those set aside before any engine starts."""

    rows: list[dict]
    rejects: list[dict]  # questions rejected on input
    baseline_rejects: list[dict]  # unusable records of the answers files, not questions


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
    t_start = time.monotonic()
    ev = _prepare(model, judge, judge_specs, baseline, settings or EvalSettings())
    questions = _read_questions(sources, ev.files, opts.limit, ev.settings.protocol)
    # the run's clock started before the questions were read: reading counts as its time
    run = TaskRun(
        opts, open_run(opts.run_dir, ev.specs.values(), overwrite=opts.overwrite), t_start
    )
    fingerprint = _fingerprint(model, ev.files, baseline.model, judge, ev.settings.protocol.name)
    _claim(run.run_dir, fingerprint)
    todo = _to_run(ev, questions, run)
    run.timings["read"] = run.elapsed()
    if todo:
        _answer_and_judge(ev, todo, run)
    finished, failed = _consolidated(run.run_dir, questions.rows)
    write_answers_and_judgments(run.run_dir, finished, model, baseline.model)
    write_eval_rejects(run.run_dir, questions.rejects + questions.baseline_rejects, failed)
    run.timings["total"] = run.elapsed()
    cumulative = _cumulative_timings(run)
    summary = _summary(ev, questions, finished, failed, run.timings, cumulative)
    save_json(join(run.run_dir, "summary.json"), summary)
    _save_manifest(ev, summary, finished + failed, run, cumulative)
    _print_result(summary, run.timings, run.run_dir, len(failed))
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


def _read_questions(
    sources: list, files: list[str] | None, limit: int | None, protocol: ProtocolSettings
) -> _Questions:
    """The questions, each with the baseline's answers from ``files`` (or none to generate)."""
    from moaa_cluster.data.sources import load_rows

    rows, rejects = load_rows(sources, limit)
    rows = [{**r, "answers": []} for r in rows]  # given answers are not used: we generate
    baseline_rejects: list[dict] = []
    if files is not None:
        index, baseline_rejects = load_baseline(files)
        rows, unmatched = attach_baseline(rows, index)
        rejects += unmatched
    else:
        rows = [{**r, "baseline": []} for r in rows]
    if protocol.name == "mt_bench":
        rows, no_reference = attach_mt_bench(rows, sources, protocol.references)
        rejects += no_reference
    return _Questions(rows, rejects, baseline_rejects)


def _to_run(ev: _Eval, questions: _Questions, run: TaskRun) -> list[dict]:
    """Rejects the questions too long for a model's context; returns those not yet finished."""
    questions.rows, too_long = length_rejects(
        questions.rows, ev.model, ev.baseline.model, ev.judge, ev.judge_specs, ev.settings
    )
    questions.rejects += too_long
    todo = run.todo(questions.rows)
    log.info(
        "%d questions to evaluate (%d rejected, %d already done, %d to run)",
        len(questions.rows),
        len(questions.rejects),
        len(questions.rows) - len(todo),
        len(todo),
    )
    return todo


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
    # finished rows of another model, baseline or judge must not be mixed into this one
    if held is not None and held != fingerprint and finished_ids(run_dir):
        raise ConfigError(
            f"{run_dir} holds an evaluation with another model, baseline or judge "
            f"({run_file}); use overwrite=true or another run_name"
        )
    save_json(run_file, fingerprint)


def _answer_and_judge(ev: _Eval, todo: list[dict], run: TaskRun) -> None:
    """Starts every role's engine and streams the ``todo`` questions into the shards."""
    from moaa_cluster.engines import host as engine_host

    opts = run.opts
    specs = list(ev.specs.values())
    with engine_host.engines(opts.cluster, specs, keep=opts.keep_engines, timings=run.timings):
        t0 = time.monotonic()
        try:
            stream_rows(
                todo,
                INPUT_SCHEMA,
                EvalWorker,
                {"judge": ev.judge, "specs": ev.specs, "settings": ev.settings},
                SHARD_SCHEMA,
                run.run_dir,
                PoolSettings(
                    batch_size=ev.settings.batch_size,
                    workers=ev.settings.workers,
                    worker_cpus=ev.settings.worker_cpus,
                    desc="eval",
                    progress=opts.progress,
                    calls=sum(_calls_per_question(ev, r) for r in todo),
                ),
            )
        finally:
            run.timings["answer_and_judge"] = time.monotonic() - t0


def _calls_per_question(ev: _Eval, row: dict) -> int:
    """The model's turns, the baseline model's turns when it answers, the judge's calls."""
    turns, ps = len(row["turns"]), ev.settings.protocol
    baseline = turns if ps.needs_baseline and not row.get("baseline") else 0
    return turns + baseline + ps.judge_calls(turns, calls_per_pair(ev.judge))


def _consolidated(run_dir: Path | str, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The shards' finished rows of this run's questions (by source, id) and its failed rows."""
    finished, failed = consolidate(run_dir)
    wanted = {r["id"] for r in rows}
    finished = sorted(
        (r for r in finished if r["id"] in wanted), key=lambda r: (r["source"], r["id"])
    )
    return finished, [r for r in failed if r["id"] in wanted]


def _summary(
    ev: _Eval,
    questions: _Questions,
    finished: list[dict],
    failed: list[dict],
    timings: dict,
    cumulative: dict,
) -> dict:
    """``summary.json``: counts, win rates, judge statistics, tokens and wall times."""
    protocol = ev.settings.protocol
    baseline = ev.baseline.display_name() if protocol.needs_baseline else None
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
        "questions": len(questions.rows) + len(questions.rejects),
        "evaluated": len(finished),
        "failed": len(failed),
        "rejected": len(questions.rejects),
        "baseline_records_rejected": len(questions.baseline_rejects),
        **judged,
        "answers_truncated": truncated_answers(finished),
        "tokens_per_model": tally_tokens(finished, ev.model, ev.baseline.model, ev.judge.name),
        "timings_s": {k: round(v, 2) for k, v in cumulative.items()},
        "last_invocation_s": {k: round(v, 2) for k, v in timings.items()},
    }


def _save_manifest(
    ev: _Eval, summary: dict, rows: list[dict], run: TaskRun, cumulative: dict
) -> None:
    """The eval manifest; ``rows`` are the finished and failed rows."""
    judge = ev.judge
    Manifest(
        task="eval",
        # complete: every question that passed the input checks was answered and judged
        counts={
            "questions": summary["questions"],
            "evaluated": summary["evaluated"],
            "rows_failed": summary["failed"],
            "rejects": summary["rejected"],
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
