"""Progress counts: calls against the plan, an ETA from the measured rate, plain log lines."""

import asyncio
import io
import time

import pytest

from moaa_cluster.engines.backends import Completion
from moaa_cluster.judge.costs import calls_per_pair
from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.pipeline import progress as progress_mod
from moaa_cluster.pipeline.prefs import PrefsSettings, calls_per_row
from moaa_cluster.pipeline.progress import (
    CallTally,
    CountingBackend,
    Progress,
    Snapshot,
    count_calls,
    flush_all,
)


class _Remote:
    """Stands in for a Ray actor handle in these pure tests: ``.add.remote(...)`` runs."""

    def __init__(self, tally: CallTally):
        self.tally = tally
        self.add = self
        self.read = self

    def remote(self, *args):
        if args:
            return self.tally.add(*args)
        return self.tally.read()


class _Echo:
    spec = "echo-spec"

    async def chat(self, messages, sampling):
        return Completion("x", 3, sampling.get("n", 5), "stop", "echo")


def test_counting_backend_counts_calls_and_tokens_and_sends_them_batched(monkeypatch):
    tally = CallTally()
    backend = CountingBackend(_Echo(), _Remote(tally))
    assert backend.spec == "echo-spec"  # attributes of the wrapped backend still read

    async def three():
        for n in (5, 7, 9):
            await backend.chat([], {"n": n})

    asyncio.run(three())  # within the flush interval: nothing sent yet
    assert tally.read() == (0, 0)
    flush_all({"m": backend})
    assert tally.read() == (3, 21)
    monkeypatch.setattr(progress_mod, "FLUSH_EVERY_S", 0.0)  # every call is due
    asyncio.run(three())
    assert tally.read() == (6, 42)
    assert count_calls({"m": backend}, None) == {"m": backend}


def test_eta_comes_from_the_measured_call_rate_and_falls_back_to_rows():
    s = Snapshot(
        "synth", rows=0, rows_total=40, calls=30, calls_planned=120, tokens=900, elapsed_s=60.0
    )
    assert s.calls_per_s == pytest.approx(0.5)
    assert s.eta_s == pytest.approx(180.0)
    line = s.line()
    assert "[synth] calls 30/120 (25%), 0.50/s" in line and "rows 0/40" in line
    assert "ETA 3m00s" in line and "\r" not in line
    rows_only = Snapshot(
        "x", rows=10, rows_total=40, calls=0, calls_planned=None, tokens=0, elapsed_s=20.0
    )
    assert rows_only.eta_s == pytest.approx(60.0)
    assert Snapshot("x", 0, 4, 0, 10, 0, 5.0).eta_s is None
    over = Snapshot("x", 4, 4, 130, 120, 0, 10.0)  # judge recoveries: more calls than planned
    assert "(100%)" in over.line() and over.eta_s == 0


def test_a_log_gets_start_periodic_and_end_lines_without_carriage_returns():
    tally = CallTally()
    out = io.StringIO()  # not a terminal: plain lines, no bars
    p = Progress("prefs", 8, 100, tally.read, log_every_s=0.0, stream=out)
    with p:
        tally.add(12, 400)
        time.sleep(1.3)  # the watcher polls once a second
        p.rows_done(4)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "[prefs] started: 8 rows, about 100 model calls"
    assert any(line.startswith("[prefs] calls 12/100 (12%)") for line in lines[1:-1])
    assert lines[-1].startswith("[prefs] finished: 4/8 rows, 12 model calls, 400 tokens")


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with Progress("eval", 3, 9, None, enabled=False, stream=out) as p:
        p.rows_done(3)
    assert out.getvalue() == ""


def test_the_call_plans_count_every_seat_candidate_and_judge_call():
    judge = JudgeSpec("j", proposers=("a", "b"), aggregator="c")
    assert calls_per_pair(judge) == 1 + 2 * 3  # criteria once, 2 critiques + verdict per order
    no_filter = JudgeSpec("j", proposers=("a",), aggregator="a", criteria_filtering=False)
    assert calls_per_pair(no_filter) == 4
    paper = PrefsSettings(num_candidates=5, plan="round_robin")
    assert calls_per_row(judge, paper) == 5 + 10 * 7  # all 10 pairs of 5
    assert calls_per_row(None, paper) == 5  # sample only
    knockout = PrefsSettings(num_candidates=5, plan="knockout")
    assert calls_per_row(judge, knockout) == 5 + 6 * 7


@pytest.mark.parametrize("n", range(0, 9))
def test_planned_comparisons_are_what_the_plans_run(n):
    from moaa_cluster.judge.costs import planned_comparisons
    from moaa_cluster.judge.ranking import PairResult, make_plan

    for name in ("round_robin", "knockout"):
        plan = make_plan(name, n)
        ran = 0
        while pairs := plan.next_pairs():
            ran += len(pairs)
            plan.record([PairResult(i, j, "tie") for i, j in pairs])
        assert planned_comparisons(name, n) == ran, (name, n)


def test_the_frames_worker_wrapper_counts_every_backend_call_and_flushes_at_the_batch_end(
    tmp_path,
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moaa_cluster.pipeline.frame import _Counted

    class Worker:
        def __init__(self, n: int):
            self.n = n
            self.backends = {"a": _Echo(), "b": _Echo()}

        async def __call__(self, batch):
            for _ in range(self.n):
                await self.backends["a"].chat([], {"n": 2})
                await self.backends["b"].chat([], {"n": 3})
            yield batch

    schema = pa.schema([("id", pa.string()), ("error", pa.string())])
    tally = CallTally()
    wrapped = _Counted(Worker, {"n": 2}, _Remote(tally), str(tmp_path), schema)
    assert all(isinstance(b, CountingBackend) for b in wrapped.worker.backends.values())

    async def drain():
        return [b async for b in wrapped(pa.table({"id": ["x", "y"], "error": [None, "boom"]}))]

    out = asyncio.run(drain())
    # the worker wrote the block as a shard; only its counts went on
    assert [r for t in out for r in t.to_pylist()] == [{"rows": 2, "failed": 1}]
    (shard,) = (tmp_path / "shards").glob("*.parquet")
    assert pq.read_table(shard).to_pylist() == [
        {"id": "x", "error": None},
        {"id": "y", "error": "boom"},
    ]
    assert tally.read() == (4, 10)  # flushed when the batch ended, within the interval
    plain = _Counted(Worker, {"n": 1}, None, str(tmp_path), schema)  # progress off: untouched
    assert isinstance(plain.worker.backends["a"], _Echo)


def test_the_eval_plan_counts_each_protocols_judge_calls():
    from moaa_cluster.evaluation.settings import ProtocolSettings
    from moaa_cluster.judge.costs import calls_per_pair
    from moaa_cluster.pipeline.eval_inputs import calls_per_question

    judge = JudgeSpec("j", proposers=("g",), aggregator="g")  # the packaged eval judge
    two_turns = {"turns": ["q1", "q2"]}
    with_answers = {"turns": ["q1"], "baseline": ["an answer"]}

    def plan(protocol, row):
        return calls_per_question(ProtocolSettings(protocol), calls_per_pair(judge), row)

    assert plan("pairwise", two_turns) == 2 + 2 + 5  # both sides' turns, the pair
    assert plan("pairwise", with_answers) == 1 + 5  # the baseline's answers are given
    assert plan("alpaca_eval2", two_turns) == 2 + 2 + 1  # one call, one token
    assert plan("arena_hard", with_answers) == 1 + 2  # two games
    assert plan("mt_bench", two_turns) == 2 + 2  # no baseline; a grade per turn
