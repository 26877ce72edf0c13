"""Instructions read as a Ray Data stream (``data.input_stream`` + ``pipeline.instructions``):
the same rows and rejects as the driver-side reader, rejects written by the read tasks,
duplicates counted by a Ray task or a groupby, limits and resume applied without rows on the driver."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from moaa_cluster.data import input_stream as stream
from moaa_cluster.data.sources import Source, load_rows
from moaa_cluster.pipeline import instructions
from moaa_cluster.runs.datasets import concat_rejects
from moaa_cluster.runs.files import read_jsonl


def _messy_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(
        b'{"instruction": "first"}\n'
        b'{"instruction": "second"\n'  # malformed
        b'{"instruction": "first"}\n'  # duplicate of a.jsonl:1
        b'{"nothing": 1}\n'  # no known field
        + b"".join(json.dumps({"instruction": f"a{i}"}).encode() + b"\n" for i in range(6))
    )
    (d / "b.jsonl").write_bytes(
        b'{"instruction": "first"}\n'  # duplicate across files of one source
        + b"".join(json.dumps({"instruction": f"b{i}"}).encode() + b"\n" for i in range(5))
    )
    (d / "notes.txt").write_text("not a data file")
    return d


def _key(rows):
    return [(r["id"], r["where"] if "where" in r else None) for r in rows]


def test_a_directory_is_one_unit_per_data_file_in_name_order(tmp_path):
    d = _messy_dir(tmp_path)
    units = stream.source_units(Source("s", path=str(d)), 3)
    assert [(u.index, u.path.rsplit("/", 1)[1]) for u in units] == [(3, "a.jsonl"), (4, "b.jsonl")]


def test_unit_picks_are_the_picks_of_the_whole_source():
    units = [stream.Unit(i, "s", f"f{i}") for i in range(3)]
    counts = {0: 4, 1: 0, 2: 6}
    src = Source("s", limit=5, sample_seed=7)
    from moaa_cluster.data.sources import picked

    want = list(picked(10, 5, 7))
    got = stream.unit_picks(units, counts, src)
    flat = [i for i in got[0]] + [4 + i for i in got[2]]
    assert flat == want and got[1] == []
    first = stream.unit_picks(units, counts, Source("s", limit=5))
    assert first == {0: [0, 1, 2, 3], 1: [], 2: [0]}


def test_first_occurrences_reject_the_later_ones_naming_the_first():
    located = [
        {
            "id": "x",
            "where": "b.jsonl:1",
            "_unit": 1,
            "_rec": 0,
            "source": "s",
            "turns": ["q"],
            "system": None,
        },
        {
            "id": "x",
            "where": "a.jsonl:3",
            "_unit": 0,
            "_rec": 2,
            "source": "s",
            "turns": ["q"],
            "system": None,
        },
        {
            "id": "x",
            "where": "a.jsonl:1",
            "_unit": 0,
            "_rec": 0,
            "source": "s",
            "turns": ["q"],
            "system": None,
        },
    ]
    rejects, drop = stream.first_occurrences(located)
    assert drop == {(0, 2), (1, 0)}
    assert [r["where"] for r in rejects] == ["a.jsonl:3", "b.jsonl:1"]
    assert all(r["reason"] == "duplicate of a.jsonl:1 (same source and content)" for r in rejects)


def _stream(tmp_path, sources, limit=None):
    from moaa_cluster.pipeline.instructions import open_instructions

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    found = open_instructions(sources, run, limit=limit)
    rows = [r for b in found.todo.iter_batches(batch_format="pyarrow") for r in b.to_pylist()]
    concat_rejects(run)
    return (
        found,
        sorted(rows, key=lambda r: (r["_unit"], r["_rec"])),
        read_jsonl(run / "rejects.jsonl"),
    )


@pytest.mark.parametrize("small_input_rows", [1_000_000, 0], ids=["one-task", "groupby"])
def test_streamed_read_matches_the_driver_read(tmp_path, ray_local, monkeypatch, small_input_rows):
    # duplicates counted by one Ray task (small inputs) and by the distributed groupby (large)
    monkeypatch.setattr(instructions, "SMALL_INPUT_ROWS", small_input_rows)
    d = _messy_dir(tmp_path)
    sources = [
        Source("s", path=str(d)),
        Source("t", path=str(d / "b.jsonl"), limit=3, sample_seed=1),
    ]
    want_rows, want_rejects = load_rows(sources)
    found, rows, rejects = _stream(tmp_path, sources)
    cols = ("id", "source", "source_id", "system", "turns", "answers")
    assert [{c: r[c] for c in cols} for r in rows] == want_rows
    assert (found.valid, found.todo_rows, found.turns) == (
        len(want_rows),
        len(want_rows),
        len(want_rows),
    )
    assert sorted((r["where"], r["reason"]) for r in rejects) == sorted(
        (r["where"], r["reason"]) for r in want_rejects
    )
    assert {r["stage"] for r in rejects} == {"input"}


@pytest.mark.parametrize("small_input_rows", [1_000_000, 0], ids=["one-task", "sort"])
def test_run_limit_keeps_the_first_rows_in_read_order(
    tmp_path, ray_local, monkeypatch, small_input_rows
):
    monkeypatch.setattr(instructions, "SMALL_INPUT_ROWS", small_input_rows)
    d = _messy_dir(tmp_path)
    sources = [Source("s", path=str(d))]
    want_rows, _ = load_rows(sources, limit=4)
    found, rows, rejects = _stream(tmp_path, sources, limit=4)
    assert [r["id"] for r in rows] == [r["id"] for r in want_rows]
    assert len(rejects) == 4  # rejects do not depend on the limit


def test_rows_an_earlier_run_finished_are_not_read_again(tmp_path, ray_local):
    from moaa_cluster.runs.shards import write_shard

    d = _messy_dir(tmp_path)
    sources = [Source("s", path=str(d))]
    want_rows, _ = load_rows(sources)
    run = tmp_path / "run"
    done = [want_rows[0]["id"], want_rows[3]["id"]]
    failed = want_rows[5]["id"]
    write_shard(
        run,
        pa.table(
            {"id": [*done, failed], "error": [None, None, "boom"]},
            schema=pa.schema([("id", pa.string()), ("error", pa.string())]),
        ),
    )
    found, rows, _ = _stream(tmp_path, sources)
    assert found.valid == len(want_rows)
    assert found.todo_rows == len(want_rows) - 2
    assert {r["id"] for r in rows} == {r["id"] for r in want_rows} - set(done)


class _OneTurnOnly:
    """A row check for the test: drops the conversations of more than one turn, its rejects'
    reason naming the read's ``tag``."""

    def __init__(self, rejects_dir: str, tag: str):
        self.rejects_dir, self.tag = rejects_dir, tag

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        rejects = [
            {"id": r["id"], "stage": "input", "reason": f"{self.tag}: {len(r['turns'])} turns"}
            for r in rows
            if len(r["turns"]) > 1
        ]
        stream.write_rejects_part(self.rejects_dir, f"3-test-{rows[0]['_rec']}", rejects)
        return pa.Table.from_pylist([r for r in rows if len(r["turns"]) == 1], schema=batch.schema)


def _conversations(tmp_path):
    turn = lambda q: [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]  # noqa: E731
    f = tmp_path / "conv.jsonl"
    f.write_text(
        "".join(
            json.dumps({"messages": [t for q in qs for t in turn(q)]}) + "\n"
            for qs in (["a"], ["b", "c"], ["d", "e", "f"], ["g"])
        )
    )
    return [Source("c", path=str(f))]


def test_figures_of_the_rows_to_run_come_per_block(tmp_path, ray_local):
    sources = _conversations(tmp_path)
    found = instructions.open_instructions(sources, tmp_path / "run")
    assert (found.valid, found.todo_rows, found.turns, found.max_turns) == (4, 4, 7, 3)
    empty = instructions.open_instructions(sources, tmp_path / "run2", limit=0)
    assert (empty.valid, empty.todo_rows, empty.turns, empty.max_turns) == (0, 0, 0, 1)


def test_a_row_check_runs_each_read_with_its_own_arguments(tmp_path, ray_local):
    # Ray tasks keep a check per worker process and read: a second read (another run
    # directory, another tag) must not reuse the first one's
    sources = _conversations(tmp_path)
    for tag in ("first", "second"):
        run = tmp_path / tag
        check = instructions.RowCheck(_OneTurnOnly, {"tag": tag})
        found = instructions.open_instructions(sources, run, check=check)
        assert (found.valid, found.turns) == (2, 2)
        concat_rejects(run)
        rejects = read_jsonl(run / "rejects.jsonl")
        assert sorted(r["reason"] for r in rejects) == [f"{tag}: 2 turns", f"{tag}: 3 turns"]
