"""The layered synth path on Ray Data, storage to storage: passes joined back by id, rows
without a pass's turn carried through, failures recorded with their pass, resume pass by pass.

The rows run through the real Ray Data plan (the session's local Ray); the models are
deterministic stand-ins whose text depends only on the prompt, so a layered row can be
compared with the same row run resident (``moa.mixture.run_row``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from moaa_cluster.engines.backends import Completion
from moaa_cluster.engines.placement import Capacity
from moaa_cluster.moa.mixture import Agent, Mixture, conversation, run_row
from moaa_cluster.pipeline.layered import LayeredJob, plan_passes, run_layered
from moaa_cluster.pipeline.synth import INPUT_SCHEMA, SHARD_SCHEMA, SynthSettings
from moaa_cluster.runs.options import RunOptions
from moaa_cluster.runs.shards import shard_dir


class PromptEcho:
    """Answers with a digest of the prompt: the same prompt gets the same text anywhere.

    ``fail`` (a row marker): a call whose prompt contains it raises (not a transient error),
    so the row fails in the pass that calls this model."""

    def __init__(self, name: str, fail: str | None = None):
        self.name, self.fail = name, fail

    async def chat(self, messages: list[dict], sampling: dict) -> Completion:
        text = json.dumps(messages, sort_keys=True)
        if self.fail and self.fail in text:
            raise RuntimeError(f"{self.name} refuses {self.fail}")
        digest = hashlib.sha1(f"{text}|{sampling.get('seed')}".encode()).hexdigest()[:10]
        return Completion(f"{self.name}:{digest}", 7, 3, "stop", self.name, seconds=0.001)


class Host:
    """Records which engines each pass asked for (no engine is started)."""

    def __init__(self):
        self.used: list[tuple[str, ...]] = []

    def use(self, specs: list) -> None:
        self.used.append(tuple(specs))


MIX = Mixture(layers=[[Agent("p1"), Agent("p2")], [Agent("agg")]])
SETTINGS = SynthSettings(defaults={"max_tokens": 8}, seed=5, workers=2, batch_size=2)
ROWS = [
    {
        "id": f"r{i}",
        "source": "s",
        "source_id": str(i),
        "system": "be brief" if i == 0 else None,
        "turns": [f"question {i}", f"follow-up {i}"] if i % 3 == 0 else [f"question {i}"],
    }
    for i in range(9)
]


def _job(fail: str | None = None) -> LayeredJob:
    backends = {n: PromptEcho(n, fail if n == "agg" else None) for n in ("p1", "p2", "agg")}
    return LayeredJob(
        MIX,
        {n: n for n in ("p1", "p2", "agg")},  # host.use gets the pass's models by name
        SETTINGS,
        INPUT_SCHEMA,
        SHARD_SCHEMA,
        worker_extra={"backends": backends, "fits": {}},
    )


def _passes():
    return plan_passes(MIX, Capacity(), "layered", max_turns=2)


def _shard_rows(run_dir) -> list[dict]:
    files = sorted(str(f) for f in shard_dir(run_dir).glob("*.parquet"))
    return pads.dataset(files, format="parquet").to_table().to_pylist() if files else []


def _resident(row: dict) -> list[dict]:
    backends = {n: PromptEcho(n) for n in ("p1", "p2", "agg")}
    answers, _ = asyncio.run(run_row(MIX, row, backends, defaults=SETTINGS.defaults, seed=5))
    return conversation(MIX, {**row, **answers})


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def test_every_row_gets_its_resident_answers_once_and_a_failure_is_recorded_then_retried(
    run_dir, ray_local
):
    passes = _passes()
    assert [p.turn for p in passes] == [0, 0, 1, 1]
    host = Host()
    opts = RunOptions(run_dir, progress=False)
    # r3 (two turns) fails in its second turn's aggregator pass
    written = run_layered(ROWS, _job(fail="follow-up 3"), passes, host, opts)

    assert written == len(ROWS)
    assert host.used == [("p1", "p2"), ("agg",), ("p1", "p2"), ("agg",)]
    rows = _shard_rows(run_dir)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in ROWS)  # each once
    by_id = {r["id"]: r for r in rows}
    failed = by_id.pop("r3")
    assert failed["error"].startswith("turn 2 layer 2 (agg): RuntimeError: agg refuses")
    assert failed["messages"] == []
    for row in ROWS:
        if row["id"] == "r3":
            continue
        got = by_id[row["id"]]
        assert got["error"] is None
        assert got["messages"] == _resident(row)  # same text as a resident run
        n_turns = len(row["turns"])
        assert [(c["turn"], c["layer"], c["seat"]) for c in got["calls"]] == [
            (t, layer, seat) for t in range(n_turns) for layer, seat in ((0, 0), (0, 1), (1, 0))
        ]
        assert got["turns"] == row["turns"] and got["system"] == row["system"]

    # the rerun (the refusal gone) runs r3's last pass only: its earlier passes are on disk
    host = Host()
    again = [r for r in ROWS if r["id"] == "r3"]  # what synth's resume leaves to do
    assert run_layered(again, _job(), passes, host, opts) == 1
    assert host.used == [("agg",)]
    final = [r for r in _shard_rows(run_dir) if r["id"] == "r3" and r["error"] is None]
    assert len(final) == 1 and final[0]["messages"] == _resident(again[0])


def _keep_only(pass_dir, ids: set[str]) -> None:
    """Rewrites a pass's shards with only ``ids``' rows: the pass as a kill left it."""
    from moaa_cluster.runs.shards import write_shard

    d = shard_dir(pass_dir)
    table = pads.dataset(str(d), format="parquet").to_table()
    for f in d.glob("*.parquet"):
        f.unlink()
    write_shard(
        pass_dir, table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(ids), pa.string())))
    )


def test_a_run_killed_between_passes_resumes_without_rerunning_finished_passes(run_dir, ray_local):
    passes = _passes()
    opts = RunOptions(run_dir, progress=False)
    run_layered(ROWS, _job(), passes, Host(), opts)
    first = {r["id"]: r for r in _shard_rows(run_dir)}
    # killed in the third pass: r0 finished it, r3 and r6 (the other two-turn rows) did not;
    # the last pass and the final shards were never written
    p3, p4 = (run_dir / "passes" / p.name for p in passes[2:])
    _keep_only(p3, {"r0"})
    _keep_only(p4, set())
    for f in shard_dir(run_dir).glob("*.parquet"):
        f.unlink()

    host = Host()
    written = run_layered(ROWS, _job(), passes, host, opts)

    assert written == len(ROWS)
    assert host.used == [("p1", "p2"), ("agg",)]  # passes 1-2 start no engine
    p3_ids = pads.dataset(str(shard_dir(p3)), format="parquet").to_table()["id"].to_pylist()
    assert sorted(p3_ids) == ["r0", "r3", "r6"]  # r0 not run twice
    p4_ids = pads.dataset(str(shard_dir(p4)), format="parquet").to_table()["id"].to_pylist()
    assert sorted(p4_ids) == ["r0", "r3", "r6"]
    rows = _shard_rows(run_dir)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in ROWS)  # each once
    for r in rows:
        assert r["error"] is None
        assert r["messages"] == first[r["id"]]["messages"]
        assert r["calls"] == first[r["id"]]["calls"]
