"""Judge evaluation: accuracy of the MoA judge and each single judge on labeled pairs.

Input: JSONL of labeled pairs, either generic ``{prompt, chosen, rejected}`` (strings or
message lists) or HH-RLHF's ``{chosen, rejected}`` dialogue strings. Every pair is judged by
every judge in both orders. Reported per judge: accuracy (both orders prefer the labeled
chosen answer), position consistency (both orders agree), verdict parse failures before and
after recovery, criteria fallbacks, calls and tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pyarrow as pa

from moaa_cluster.data.records import Reject, describe
from moaa_cluster.data.sources import input_records
from moaa_cluster.engines.describe import model_record
from moaa_cluster.judge.costs import calls_per_pair
from moaa_cluster.judge.judge import JudgeSpec, judge_pair, summarize
from moaa_cluster.pipeline.frame import MESSAGE, PoolSettings, RowWorker, shard_schema, stream_rows
from moaa_cluster.runs.files import save_json
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import consolidate
from moaa_cluster.runs.storage import join, write_bytes
from moaa_cluster.runs.task_run import TaskRun, write_rejects

_HH_TURN = re.compile(r"\n\nHuman: |\n\nAssistant: ")


class BadPair(Reject):
    pass


def _hh_messages(text: object, what: str = "dialogue") -> list[dict]:
    if not isinstance(text, str):
        raise BadPair(f"{what} must be an HH-RLHF dialogue string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    roles = re.findall(r"\n\n(Human|Assistant): ", text)
    if parts[0].strip() or not roles:
        raise BadPair("not an HH-RLHF dialogue ('\\n\\nHuman: ... \\n\\nAssistant: ...')")
    return [
        {"role": "user" if r == "Human" else "assistant", "content": c.strip()}
        for r, c in zip(roles, parts[1:], strict=True)
    ]


def _as_messages(value: object, what: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise BadPair(f"{what} is empty")
        return [{"role": "user", "content": value}]
    # the prompt goes to the judges as chat messages (and into a Parquet column of strings)
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise BadPair(f"{what} must be a string or a list of {{role, content}} with text content")


def _answer(value: object, what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content")
        if isinstance(content, str) and content.strip():
            return content
    raise BadPair(f"{what} must be a non-empty string or message list")


def to_labeled_pair(rec: object) -> dict:
    """``{prompt: messages, chosen: str, rejected: str}`` from a generic or HH-RLHF record.

    Raises:
        BadPair: The record is neither shape, or a text is empty.
    """
    if not isinstance(rec, dict) or "chosen" not in rec or "rejected" not in rec:
        raise BadPair("record needs 'chosen' and 'rejected'")
    if "prompt" in rec:
        return {
            "prompt": _as_messages(rec["prompt"], "'prompt'"),
            "chosen": _answer(rec["chosen"], "'chosen'"),
            "rejected": _answer(rec["rejected"], "'rejected'"),
        }
    chosen = _hh_messages(rec["chosen"], "'chosen'")
    rejected = _hh_messages(rec["rejected"], "'rejected'")
    if (
        chosen[:-1] != rejected[:-1]
        or chosen[-1]["role"] != "assistant"
        or rejected[-1]["role"] != "assistant"
    ):
        raise BadPair(
            "chosen and rejected do not share the dialogue before the last assistant turn"
        )
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise BadPair("an empty final assistant answer")
    if not chosen[:-1]:
        raise BadPair("no dialogue before the answers")
    return {
        "prompt": chosen[:-1],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
    }


def load_pairs(path: Path | str, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Reads labeled pairs; returns ``(pairs, rejects)``.

    Any file :func:`moaa_cluster.data.records.read_records` reads (``.jsonl``, ``.jsonl.gz``,
    ``.json``, Parquet), local or on object storage (``s3://...``, its rejects naming the URI).
    Every record read before ``limit`` pairs are reached ends as exactly one pair or one reject
    ``{where, stage, reason}``; a record can fail only itself.

    Raises:
        ConfigError: An object-storage URI names no object.
    """
    import hashlib

    pairs, rejects = [], []
    for where, rec in input_records(path, "labeled pairs"):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            if isinstance(rec, Reject):
                raise rec
            pair = to_labeled_pair(rec)
            # the id as before: a resumed run finds the pairs it already judged
            pair["id"] = hashlib.sha256(json.dumps(pair, sort_keys=True).encode()).hexdigest()[:20]
        except Exception as exc:  # a record can fail only itself
            reason = str(exc) if isinstance(exc, Reject) else describe(exc)
            rejects.append({"where": where, "stage": "input", "reason": reason})
            continue
        pairs.append(pair)
    return pairs, rejects


INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
    ]
)
SHARD_SCHEMA = shard_schema(
    [
        ("id", pa.string()),
        ("results", pa.string()),  # JSON: {judge name: {outcome, comparisons}}
    ]
)


class JudgeEvalWorker(RowWorker):
    """Ray Data actor: every judge on every pair of a batch, both orders."""

    schema = SHARD_SCHEMA

    def __init__(
        self, judges: list[JudgeSpec], specs: dict, request_timeout_s: float | None = 900.0
    ):
        from moaa_cluster.engines.backends import make_backend

        self.judges = judges
        self.backends = {k: make_backend(s, request_timeout_s) for k, s in specs.items()}

    def start(self, row: dict) -> dict:
        return {"id": row["id"], "results": None}

    async def fill(self, row: dict, out: dict) -> None:
        answers = [row["chosen"], row["rejected"]]
        done = await asyncio.gather(
            *(
                judge_pair(j, self.backends, row["prompt"], answers, 0, 1, key=row["id"])
                for j in self.judges
            )
        )
        out["results"] = json.dumps(
            {
                j.name: {"outcome": str(res.outcome), "comparisons": cmps}
                for j, (res, cmps) in zip(self.judges, done, strict=True)
            },
            ensure_ascii=False,
        )


def metrics(rows: list[dict], judges: list[JudgeSpec]) -> list[dict]:
    """One table row per judge from finished shard rows."""
    table = []
    for j in judges:
        per = [json.loads(r["results"])[j.name] for r in rows]
        outcomes = [p["outcome"] for p in per]
        n = len(per)
        counts = summarize([c for p in per for c in p["comparisons"]])
        table.append(
            {
                "judge": j.name,
                "pairs": n,
                "accuracy": sum(o == "0" for o in outcomes) / max(1, n),
                "wrong": sum(o == "1" for o in outcomes) / max(1, n),
                "ties": sum(o == "tie" for o in outcomes) / max(1, n),
                "position_consistency": sum(o in ("0", "1") for o in outcomes) / max(1, n),
                "parse_fail_before": counts["verdict_unparsed"] / max(1, counts["comparisons"]),
                "parse_fail_after": counts["verdict_unresolved"] / max(1, counts["comparisons"]),
                "criteria_fallback": counts["criteria_fallback"] / max(1, counts["comparisons"]),
                "calls": counts["calls"],
                "prompt_tokens": counts["prompt_tokens"],
                "completion_tokens": counts["completion_tokens"],
            }
        )
    return table


def format_table(table: list[dict]) -> str:
    cols = [
        ("judge", "{}"),
        ("pairs", "{}"),
        ("accuracy", "{:.3f}"),
        ("ties", "{:.3f}"),
        ("position_consistency", "{:.3f}"),
        ("parse_fail_before", "{:.3f}"),
        ("parse_fail_after", "{:.3f}"),
        ("criteria_fallback", "{:.3f}"),
        ("calls", "{}"),
        ("prompt_tokens", "{}"),
        ("completion_tokens", "{}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        lines.append("| " + " | ".join(f.format(row[c]) for c, f in cols) + " |")
    return "\n".join(lines)


def _pool(
    n_pairs: int, judges: list[JudgeSpec], batch_size: int, workers: int, opts: RunOptions
) -> PoolSettings:
    return PoolSettings(
        batch_size=batch_size,
        workers=workers,
        desc="judge-eval",
        progress=opts.progress,
        calls=n_pairs * sum(calls_per_pair(j) for j in judges),  # each pair, every judge
    )


def evaluate_judges(
    pairs_path: Path | str,
    judges: list[JudgeSpec],
    specs: dict,
    opts: RunOptions,
    *,
    batch_size: int = 4,
    workers: int = 2,
) -> list[dict]:
    """Judges every labeled pair with every judge; writes and prints the metrics table."""
    run = TaskRun.open(opts, specs.values())
    pairs, rejects = load_pairs(pairs_path, opts.limit)
    todo = run.todo(pairs)
    if todo:
        _judge(todo, judges, specs, _pool(len(todo), judges, batch_size, workers, opts), run)
    finished, failed = consolidate(run.run_dir)
    wanted = {p["id"] for p in pairs}
    finished = [r for r in finished if r["id"] in wanted]
    table = metrics(finished, judges)
    write_rejects(
        run.run_dir,
        rejects
        + [
            {"where": r["id"], "stage": "inference", "reason": r["error"]}
            for r in failed
            if r["id"] in wanted
        ],
    )
    run.timings["total"] = run.elapsed()
    text = format_table(table)
    write_bytes(join(run.run_dir, "judge_eval.md"), (text + "\n").encode())
    save_json(
        join(run.run_dir, "judge_eval.json"),
        {"table": table, "timings_s": run.timings, "pairs": len(pairs), "rejects": len(rejects)},
    )
    counts = {
        "pairs": len(pairs),
        "judged": len(finished),
        "rows_failed": sum(1 for r in failed if r["id"] in wanted),
        "rejects_input": len(rejects),
        # shards written before the frame kept `retries` have none
        "rows_retried": sum(1 for r in finished + failed if r.get("retries")),
        "per_judge": {
            row["judge"]: {k: row[k] for k in ("calls", "prompt_tokens", "completion_tokens")}
            for row in table
        },
    }
    metrics_record = {
        row["judge"]: {k: row[k] for k in ("accuracy", "position_consistency", "parse_fail_after")}
        for row in table
    }
    models = {k: model_record(s) for k, s in specs.items()}
    run.save_manifest("judge-eval", counts, models, {"metrics": metrics_record})
    print(text, flush=True)
    return table


def _judge(
    todo: list[dict], judges: list[JudgeSpec], specs: dict, pool: PoolSettings, run: TaskRun
) -> None:
    """Streams the ``todo`` pairs through :class:`JudgeEvalWorker`, every engine resident."""
    from moaa_cluster.engines import host as engine_host

    opts = run.opts
    with engine_host.engines(
        opts.cluster,
        list(specs.values()),
        keep=opts.keep_engines,
        timings=run.timings,
        report=run.ray,
    ):
        t0 = time.monotonic()
        stream_rows(
            todo,
            INPUT_SCHEMA,
            JudgeEvalWorker,
            {"judges": judges, "specs": specs},
            SHARD_SCHEMA,
            run.run_dir,
            pool,
        )
        run.timings["judging"] = time.monotonic() - t0
