"""Rehearsals of the paper configs on the real stack (`make test-rehearsal`, run by CI).

One Ray cluster for the session; the rehearsal engine (the packaged SmolLM2 answering for
every paper model) starts once and is kept from one test to the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.integration.conftest import models_dir, ray_session  # noqa: F401  (session fixtures)

MT_BENCH = SHARED / "data" / "mt_bench" / "question.jsonl"


@pytest.fixture(scope="session")
def mt_bench_rows(tmp_path_factory) -> Path:
    """Two real MT-Bench questions: one cut to its first turn, one with both turns."""
    if not MT_BENCH.exists():
        pytest.skip(f"{MT_BENCH} is absent (shared data beside the repository)")
    records = [json.loads(line) for line in MT_BENCH.read_text().splitlines() if line.strip()]
    by_id = {r["question_id"]: r for r in records}
    single = {**by_id[81], "turns": by_id[81]["turns"][:1]}  # writing, one turn
    path = tmp_path_factory.mktemp("data") / "mt_bench_2.jsonl"
    path.write_text(json.dumps(single) + "\n" + json.dumps(by_id[101]) + "\n")  # 101: reasoning
    return path
