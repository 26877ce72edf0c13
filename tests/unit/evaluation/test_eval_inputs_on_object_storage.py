"""Evaluation inputs on object storage (``s3://...``) through a real S3-compatible server (moto,
``tests/s3_server.py``): questions with their MT-Bench categories, MT-Bench reference answers,
baseline answers and judge-eval's labeled pairs read as the same files read locally; rejects
and errors name the URI, a missing object is a one-line ``ConfigError``."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from moaa_cluster.data.records import UnreadableFile
from moaa_cluster.data.sources import load_rows
from moaa_cluster.errors import ConfigError
from moaa_cluster.evaluation.answers import load_baseline, question_sources
from moaa_cluster.evaluation.protocols import arena_hard, mt_bench
from moaa_cluster.evaluation.settings import Baseline, ProtocolSettings
from moaa_cluster.pipeline.eval_protocols import attach_mt_bench
from moaa_cluster.pipeline.judge_pairs import load_pairs
from moaa_cluster.runs import storage
from tests.conftest import SHARED
from tests.unit.pipeline.test_eval_stream import driver_questions as _read_questions

ARENA = SHARED / "data" / "arena_hard" / "arena-hard-v0.1"
MT_BENCH = SHARED / "data" / "mt_bench"


def _lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _upload(s3, local: Path) -> str:
    """Copies the local file or directory ``local`` to a fresh prefix; returns its URI."""
    uri = s3.uri("eval-inputs", uuid.uuid4().hex[:8], local.name)
    storage.copy_tree(pafs.LocalFileSystem(), str(local), uri)
    return uri


def _on(uri: str, where: str) -> str:
    """A local location (``file.jsonl:3``) as the object next to ``uri`` names it."""
    return f"{uri.rsplit('/', 1)[0]}/{where}"


def _mt_set(tmp_path) -> Path:
    """``mt/``: four MT-Bench questions (one malformed line among them) and the reference
    answer of the math one (the coding one has none)."""
    d = tmp_path / "mt"
    d.mkdir()
    qs = [
        {"question_id": i, "category": c, "turns": [f"q{i}", f"f{i}"]}
        for i, c in ((1, "writing"), (2, "math"), (3, "coding"), (4, "roleplay"))
    ]
    (d / "question.jsonl").write_bytes(_lines(*qs[:2]) + b'{"question_id": 9,\n' + _lines(*qs[2:]))
    ref = {"question_id": 2, "choices": [{"turns": ["r1", "r2"]}]}
    (d / "reference.jsonl").write_bytes(_lines(ref))
    return d


def _mt_read(questions: str, references: str) -> tuple[list[dict], list[dict]]:
    """What ``moaa eval protocol=mt_bench`` reads: rows with categories, and the rejects."""
    found = _read_questions(
        question_sources(questions), None, None, ProtocolSettings("mt_bench", references=references)
    )
    return found.rows, found.rejects


def test_question_sources_keep_a_uri_and_name_it_by_its_folder():
    uris = ["s3://b/sets/mt/question.jsonl", "s3://b/q.jsonl.gz", "s3://c/mt/question.jsonl"]
    srcs = question_sources(uris)
    assert [s.path for s in srcs] == uris
    assert [s.name for s in srcs] == ["mt/question", "b/q.jsonl", "mt/question#2"]


def test_mt_bench_questions_on_s3_keep_their_categories(tmp_path, s3):
    d = _mt_set(tmp_path)
    uri = _upload(s3, d)
    want_rows, want_rejects = _mt_read(str(d / "question.jsonl"), str(d / "reference.jsonl"))
    rows, rejects = _mt_read(f"{uri}/question.jsonl", f"{uri}/reference.jsonl")
    assert rows == want_rows
    assert [(r["source_id"], r["category"], r["reference"]) for r in rows] == [
        ("1", "writing", None),
        ("2", "math", ["r1", "r2"]),
        ("4", "roleplay", None),
    ]
    # the malformed line (located by the URI), then the coding question without a reference
    assert [r["where"] for r in rejects] == [
        f"{uri}/question.jsonl:3",
        want_rejects[1]["where"],
    ]
    assert want_rejects[0]["where"] == "question.jsonl:3"
    assert "coding question against a reference" in rejects[1]["reason"]


def test_categories_come_from_the_object_the_rows_were_read_from(tmp_path, s3):
    d = _mt_set(tmp_path)
    uri = _upload(s3, d)
    sources = question_sources(f"{uri}/question.jsonl")
    rows, _ = load_rows(sources)
    kept, _ = attach_mt_bench(rows, sources, f"{uri}/reference.jsonl")
    assert {r["source_id"]: r["category"] for r in kept} == {
        "1": "writing",
        "2": "math",
        "4": "roleplay",
    }


def test_mt_bench_reference_file_errors_name_the_uri(tmp_path, s3):
    d = _mt_set(tmp_path)
    (d / "reference.jsonl").write_bytes(_lines({"question_id": 2, "choices": []}) + b"{oops\n")
    uri = _upload(s3, d)
    with pytest.raises(ConfigError) as info:
        mt_bench.load_reference_answers(f"{uri}/reference.jsonl")
    assert str(info.value).startswith(f"MT-Bench answer file {uri}/reference.jsonl:2: malformed")
    assert "moaa-input-" not in str(info.value)
    missing = f"{uri}/nothing.jsonl"
    with pytest.raises(ConfigError) as info:
        mt_bench.load_reference_answers(missing)
    assert str(info.value) == f"MT-Bench answer file: {missing} does not exist"


def test_arena_hard_files_on_s3_read_as_local(tmp_path, s3):
    q = tmp_path / "question.jsonl"
    q.write_bytes(_lines({"uid": "u1", "category": "c", "prompt": "P?"}))
    a = tmp_path / "answer.jsonl"
    msgs = [{"role": "user", "content": "P?"}, {"role": "assistant", "content": {"answer": "A"}}]
    a.write_bytes(_lines({"uid": "u1", "messages": msgs}))
    assert arena_hard.load_questions(_upload(s3, q)) == arena_hard.load_questions(q)
    assert arena_hard.load_answers(_upload(s3, a)) == arena_hard.load_answers(a) == {"u1": "A"}


def _answers_dir(tmp_path) -> Path:
    """``base/``: baseline answers as JSONL (with a malformed line and an unusable record)
    and as our own ``answers.parquet``."""
    d = tmp_path / "base"
    d.mkdir()
    (d / "answers.jsonl").write_bytes(
        _lines({"question_id": 1, "choices": [{"turns": ["a1", "a1b"]}]})
        + b"not json\n"
        + _lines({"question_id": 2, "answer": "  "}, {"id": "3", "answer": "a3"})
    )
    row = {"source_id": "4", "messages": [{"role": "user", "content": "q4"}]}
    row["messages"].append({"role": "assistant", "content": "a4"})
    pq.write_table(pa.Table.from_pylist([row]), d / "answers.parquet")
    return d


def test_baseline_answers_on_s3_read_as_the_local_files(tmp_path, s3):
    d = _answers_dir(tmp_path)
    uri = _upload(s3, d)
    local = [str(d / "answers.jsonl"), str(d / "answers.parquet")]
    objects = [f"{uri}/answers.jsonl", f"{uri}/answers.parquet"]
    want, want_rejects = load_baseline(local)
    got, rejects = load_baseline(objects)
    assert got.files == objects and want.files == local
    assert sorted(got.by_id) == sorted(want.by_id) == ["1", "3", "4"]
    for qid, ans in got.by_id.items():
        assert ans.answers == want.by_id[qid].answers
        assert ans.where == _on(objects[0], want.by_id[qid].where)
    assert got.by_text.keys() == want.by_text.keys() == {"q4"}
    assert [r["where"] for r in rejects] == [f"{uri}/answers.jsonl:2", f"{uri}/answers.jsonl:3"]
    assert [r["reason"] for r in rejects] == [r["reason"] for r in want_rejects]


def test_baseline_files_keep_a_uri():
    uri = "s3://bucket/answers/gpt-4-0314.jsonl"
    baseline = Baseline(answers=[uri, "~/local.jsonl"])
    assert baseline.files() == [uri, str(Path("~/local.jsonl").expanduser())]
    assert Baseline(answers=uri).display_name() == "gpt-4-0314"


def test_a_missing_or_unreadable_baseline_object(tmp_path, s3):
    missing = s3.uri("eval-inputs", "nowhere", "answers.jsonl")
    with pytest.raises(ConfigError) as info:
        load_baseline(missing)
    assert str(info.value) == f"baseline answers: {missing} does not exist"
    with pytest.raises(FileNotFoundError, match="do not exist"):  # a local file: as before
        load_baseline(tmp_path / "nowhere.jsonl")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    uri = _upload(s3, broken)
    with pytest.raises(UnreadableFile) as info:
        load_baseline(uri)
    assert uri in str(info.value) and "moaa-input-" not in str(info.value)


def test_questions_and_baseline_on_s3_match_as_eval_reads_them(tmp_path, s3):
    d = _mt_set(tmp_path)
    answers = tmp_path / "answers.jsonl"
    answers.write_bytes(_lines({"question_id": 1, "choices": [{"turns": ["b1", "b1b"]}]}))
    q_uri, a_uri = _upload(s3, d), _upload(s3, answers)

    def read(questions, files):
        return _read_questions(question_sources(questions), files, None, ProtocolSettings())

    want = read(str(d / "question.jsonl"), [str(answers)])
    got = read(f"{q_uri}/question.jsonl", [a_uri])
    assert got.rows == want.rows and [r["baseline"] for r in got.rows] == [["b1", "b1b"]]
    assert [r["reason"] for r in got.rejects] == [
        r["reason"].replace(str(answers), a_uri) for r in want.rejects
    ]
    assert got.rejects[-1]["reason"] == f"no baseline answer for question id 4 in {a_uri}"


def _pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl.gz"
    hh = {
        "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!",
        "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away.",
    }
    data = (
        _lines({"prompt": "Q1", "chosen": "good", "rejected": "bad"}, hh)
        + b'{"prompt": "cut\n'
        + _lines({"prompt": "Q2", "chosen": "x"}, {"prompt": "Q3", "chosen": "y", "rejected": "z"})
    )
    path.write_bytes(gzip.compress(data))
    return path


def test_labeled_pairs_on_s3_read_as_the_local_file(tmp_path, s3):
    local = _pairs_file(tmp_path)
    uri = _upload(s3, local)
    want, want_rejects = load_pairs(local)
    got, rejects = load_pairs(uri)
    assert got == want and len(got) == 3
    assert [r["where"] for r in rejects] == [_on(uri, r["where"]) for r in want_rejects]
    assert [r["where"] for r in rejects] == [f"{uri}:3", f"{uri}:4"]
    assert [r["reason"] for r in rejects] == [r["reason"] for r in want_rejects]
    assert load_pairs(uri, limit=2) == load_pairs(local, limit=2)


def test_a_missing_pairs_object_is_a_config_error(s3):
    missing = s3.uri("eval-inputs", "nowhere", "pairs.jsonl")
    with pytest.raises(ConfigError) as info:
        load_pairs(missing)
    assert str(info.value) == f"labeled pairs: {missing} does not exist"


@pytest.mark.skipif(not MT_BENCH.exists(), reason="shared data not available")
def test_real_mt_bench_on_s3_keeps_its_categories(tmp_path, s3):
    uri = _upload(s3, MT_BENCH)
    questions, refs = "question.jsonl", "reference_answer/gpt-4.jsonl"
    want_rows, want_rejects = _mt_read(str(MT_BENCH / questions), str(MT_BENCH / refs))
    rows, rejects = _mt_read(f"{uri}/{questions}", f"{uri}/{refs}")
    assert rows == want_rows and rejects == want_rejects
    assert len(rows) == 80 and len({r["category"] for r in rows}) == 8
    assert "general" not in {r["category"] for r in rows}


@pytest.mark.skipif(not ARENA.exists(), reason="shared data not available")
def test_real_arena_hard_questions_and_baseline_on_s3(tmp_path, s3):
    uri = _upload(s3, ARENA)
    baseline = "model_answer/gpt-4-0314.jsonl"

    def read(root: str):
        sources = question_sources(f"{root}/question.jsonl")
        return _read_questions(sources, [f"{root}/{baseline}"], 20, ProtocolSettings())

    want, got = read(str(ARENA)), read(uri)
    assert got.rows == want.rows and len(got.rows) == 20
    assert not got.rejects and not got.baseline_rejects
