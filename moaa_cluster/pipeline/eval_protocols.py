"""The benchmark protocols' judging of one question, after both sides have answered.

``pairwise`` (our MoA judge, both orders) lives in ``eval_worker``; the three benchmark
protocols are here, each calling one judge model (``JudgeSpec.aggregator``) with the
benchmark's own prompt (``evaluation/protocols``) and recording what it read:

* ``alpaca_eval2``: one call, one token; the preference P(model preferred) from the token's
  top logprobs, else from the text; the reference in a fixed position (``output_1``) or a
  position drawn per question from the seed (recorded). With the judge's ``recover`` (as the
  pairwise judge re-asks an unparsable verdict), an answer naming neither identifier is asked
  once more with decoding constrained to ``m``/``M``, read the same way and recorded as
  recovered: a GPT-4-class judge never needs it, the packaged 270M judge always does (its
  top-5 first tokens are "You", "The", "{"...).
* ``arena_hard``: two games (baseline as A, then model as A); each verdict on the 5-level
  scale, as the model's outcome.
* ``mt_bench``: the model's answer graded 1-10, turn by turn, against the reference answer
  for math, reasoning and coding.

A verdict or grade that does not parse is kept as null and counted by the summary, never
scored; the judge's text is kept in the row's ``judge`` JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from moaa_cluster.data.sources import input_records, object_kind
from moaa_cluster.evaluation.protocols import alpaca_eval2, arena_hard, mt_bench
from moaa_cluster.evaluation.settings import ProtocolSettings
from moaa_cluster.runs import storage
from moaa_cluster.seeds import derive_seed


def _usage(out: dict, completions: list) -> None:
    out["judge_calls"] = len(completions)
    out["judge_prompt_tokens"] = sum(c.prompt_tokens for c in completions)
    out["judge_completion_tokens"] = sum(c.completion_tokens for c in completions)


def _sampling(settings: dict, max_tokens: int | None, seed: int | None, key: str) -> dict:
    params = dict(settings)
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    params["seed"] = derive_seed(seed, key, "judge")
    return params


def _read_alpaca(c, position: str) -> tuple[float | None, str]:
    """The preference from one judge answer: its first token's top logprobs, else its text."""
    if c.top_logprobs:
        p = alpaca_eval2.preference_from_logprobs(c.top_logprobs[0], position)
        if p is not None:
            return p, "logprobs"
    p = alpaca_eval2.preference_from_text(c.text, position)
    return p, "text" if p is not None else "none"


async def judge_alpaca(
    judge,
    question: str,
    model_answer: str,
    reference: str,
    ps: ProtocolSettings,
    key: str,
    recover: bool = False,
) -> dict:
    """AlpacaEval 2: the preference for the model's output (None when unreadable).

    ``recover``: an unreadable answer is asked again, constrained to the two identifiers.
    """
    position = (
        alpaca_eval2.model_position_for(ps.seed or 0, key)
        if ps.model_position == "random"
        else alpaca_eval2.DEFAULT_MODEL_POSITION
    )
    messages = alpaca_eval2.judge_messages(question, reference, model_answer, position)
    sampling = _sampling(alpaca_eval2.JUDGE_SETTINGS, None, ps.seed, key)
    c = await judge.chat(messages, sampling)
    calls = [c]
    p, how = _read_alpaca(c, position)
    record = {"model_position": position, "read_from": how, "text": c.text, "top": c.top_logprobs}
    if p is None and recover:
        ids = [alpaca_eval2.OUTPUT_1_ID, alpaca_eval2.OUTPUT_2_ID]
        retry = await judge.chat(messages, {**sampling, "structured_outputs": {"choice": ids}})
        calls.append(retry)
        p, how = _read_alpaca(retry, position)
        record["read_from"] = f"recovered_{how}" if p is not None else "none"
        record["recovery"] = {"text": retry.text, "top": retry.top_logprobs}
    out = {"preference": p}
    out["outcome"] = None if p is None else "win" if p > 0.5 else "loss" if p < 0.5 else "tie"
    out["judge"] = json.dumps(record)
    _usage(out, calls)
    return out


# a question without an MT-Bench category is graded like writing/roleplay/...: no reference
DEFAULT_CATEGORY = "general"
GAME_SCORE = {"strong_win": 3, "win": 1, "tie": 0, "loss": -1, "strong_loss": -3}


async def judge_arena(
    judge, question: str, model_answer: str, baseline: str, ps: ProtocolSettings, key: str
) -> dict:
    """Arena-Hard: both games' verdicts as the model's outcomes (None when unparsed)."""
    import asyncio

    games = arena_hard.build_games(key, question, model_answer, baseline)
    calls = await asyncio.gather(
        *(
            judge.chat(
                g.messages,
                _sampling(
                    arena_hard.JUDGE_SETTINGS, ps.judge_max_tokens, ps.seed, f"{key}:{g.game}"
                ),
            )
            for g in games
        )
    )
    verdicts = [arena_hard.parse_verdict(c.text) for c in calls]
    outcomes = [
        None if v is None else arena_hard.model_outcome(v, g.model_side)
        for v, g in zip(verdicts, games, strict=True)
    ]
    out: dict = {"game_outcomes": outcomes}
    if None in outcomes:
        out["outcome"] = "unresolved"
    else:
        total = sum(GAME_SCORE[o] for o in outcomes)
        out["outcome"] = "win" if total > 0 else "loss" if total < 0 else "tie"
    out["judge"] = json.dumps(
        {
            "games": [
                {"game": g.game, "model_side": g.model_side, "verdict": v, "text": c.text}
                for g, v, c in zip(games, verdicts, calls, strict=True)
            ]
        },
        ensure_ascii=False,
    )
    _usage(out, list(calls))
    return out


async def grade_mt_bench(
    judge, row: dict, answers: list[str], ps: ProtocolSettings, key: str
) -> dict:
    """MT-Bench: a 1-10 grade per turn (None when unparsed), reference-guided by category."""
    category = row.get("category") or DEFAULT_CATEGORY
    question = mt_bench.MTBenchQuestion(row.get("source_id") or key, category, tuple(row["turns"]))
    reference = row.get("reference") or None
    calls, grades = [], []
    for turn in range(1, min(2, len(answers)) + 1):
        messages = mt_bench.judge_messages(question, answers, turn, reference)
        c = await judge.chat(
            messages,
            _sampling(mt_bench.JUDGE_SETTINGS, ps.judge_max_tokens, ps.seed, f"{key}:t{turn}"),
        )
        calls.append(c)
        grades.append(mt_bench.parse_rating(c.text))
    out = {"grades": grades, "category": category, "outcome": None}
    turns = [
        {"turn": t, "grade": g, "text": c.text}
        for t, (g, c) in enumerate(zip(grades, calls, strict=True), start=1)
    ]
    out["judge"] = json.dumps({"turns": turns}, ensure_ascii=False)
    _usage(out, calls)
    return out


def _jsonl_file(path: str) -> bool:
    """Whether ``path`` is a JSONL file, local or an object on object storage."""
    if Path(path).suffix != ".jsonl":
        return False
    if storage.is_uri(path):
        return object_kind(path, "questions") == "file"
    return Path(path).is_file()


def _parsed_lines(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record)`` of every line of a local file that parses as JSON (a line that is
    not UTF-8 or not JSON is skipped: the question reader records it as a reject; a
    byte-order mark is dropped)."""
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            yield f"{path.name}:{lineno}", json.loads(line.decode("utf-8-sig"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            continue


def _categories(sources: list) -> dict[tuple[str, str], str]:
    """``(source name, question id) -> category`` from JSONL question files that carry one
    (an object on object storage read from a local temporary copy)."""
    out: dict[tuple[str, str], str] = {}
    for src in sources:
        path = str(src.path or "")
        if not _jsonl_file(path):
            continue  # builtin sets, hub datasets: no categories (graded as general)
        for _, rec in input_records(path, "questions", _parsed_lines):
            if not isinstance(rec, dict):  # a bare number, string or list: a reject elsewhere
                continue
            qid = next((rec[k] for k in ("question_id", "uid", "id") if k in rec), None)
            if qid is not None and isinstance(rec.get("category"), str):
                out[(src.name, str(qid))] = rec["category"]
    return out


def mt_bench_lookup(sources: list, references: str | None) -> tuple[dict, dict]:
    """``(categories, reference answers)`` of ``sources``' questions, as
    :func:`attach_mt_bench` reads them (a worker reads them once for all its batches)."""
    refs = mt_bench.load_reference_answers(references) if references else {}
    return _categories(sources), refs


def attach_mt_bench(
    rows: list[dict], sources: list, references: str | None, lookup: tuple | None = None
) -> tuple[list[dict], list[dict]]:
    """Each question's MT-Bench category and, for math/reasoning/coding, its reference answer.

    ``lookup``: :func:`mt_bench_lookup` of ``sources`` and ``references`` read earlier.

    Returns:
        ``(rows, rejects)``: a reference-guided question without a reference answer is
        rejected on input with the reason (it cannot be graded as the benchmark grades it).
    """
    cats, refs = lookup or mt_bench_lookup(sources, references)
    kept, rejects = [], []
    for r in rows:
        category = cats.get((r["source"], str(r.get("source_id"))), DEFAULT_CATEGORY)
        ref = refs.get(int(r["source_id"])) if str(r.get("source_id")).isdigit() else None
        if mt_bench.needs_reference(category) and ref is None:
            rejects.append(
                {
                    "source": r["source"],
                    "where": r["id"],
                    "stage": "input",
                    "reason": f"mt_bench grades a {category} question against a reference "
                    "answer and protocol.references has none for it",
                    "record": {"turns": r["turns"], "source_id": r.get("source_id")},
                }
            )
            continue
        kept.append({**r, "category": category, "reference": list(ref) if ref else None})
    return kept, rejects
