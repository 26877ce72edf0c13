"""The protocols on the benchmarks' real files, where the project's ``../shared`` is present:
the fixture copies are verbatim, and every question loads and yields judge messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from moaa_cluster.evaluation.protocols import alpaca_eval2, arena_hard, mt_bench

REPO = Path(__file__).resolve().parents[4]
SHARED = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")

COPIES = {
    "alpaca_eval2_clf_prompt.txt": "protocols/alpaca_eval2_clf_prompt.txt",
    "alpaca_eval2_weighted_gpt4_turbo_config.yaml": (
        "protocols/alpaca_eval2_weighted_gpt4_turbo_config.yaml"
    ),
    "arena_hard_v0.1_judge_prompt.json": "protocols/arena_hard_v0.1_judge_prompt.json",
    "arena_hard_v0.1_config.yaml": "protocols/arena_hard_v0.1_config.yaml",
    "mt_bench_judge_prompts.jsonl": "mt_bench/judge_prompts.jsonl",
    "SOURCE.protocols.md": "protocols/SOURCE.md",
    "SOURCE.mt_bench.md": "mt_bench/SOURCE.md",
    "LICENSE.alpaca_eval": "protocols/LICENSE.alpaca_eval",
    "LICENSE.arena-hard-auto": "protocols/LICENSE.arena-hard-auto",
    "LICENSE.fastchat": "mt_bench/LICENSE",
}


@pytest.mark.parametrize(("copy", "source"), sorted(COPIES.items()))
def test_fixture_copy_is_verbatim(copy, source):
    assert (FIXTURES / copy).read_bytes() == (SHARED / source).read_bytes()


def test_every_fixture_is_accounted_for():
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted([*COPIES, "README.md"])


def test_mt_bench_questions_and_references_build_every_judge_call():
    questions = mt_bench.load_questions(SHARED / "mt_bench" / "question.jsonl")
    references = mt_bench.load_reference_answers(
        SHARED / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
    )
    assert len(questions) == 80
    guided = [q for q in questions if mt_bench.needs_reference(q.category)]
    assert len(guided) == 30
    assert sorted(references) == sorted(q.question_id for q in guided)
    names = set()
    for q in questions:
        answers = [f"answer 1 to {q.question_id}", f"answer 2 to {q.question_id}"]
        ref = references.get(q.question_id)
        for turn in (1, 2):
            system, user = mt_bench.judge_messages(q, answers, turn, ref)
            names.add(mt_bench.judge_prompt_for(q.category, turn).name)
            assert system["role"] == "system" and user["role"] == "user"
            assert q.turns[0] in user["content"] and answers[turn - 1] in user["content"]
            if ref is not None:
                assert ref[turn - 1] in user["content"]
    assert names == set(mt_bench.JUDGE_PROMPTS)


def test_arena_hard_questions_and_baseline_answers_build_both_games():
    base = SHARED / "arena_hard" / "arena-hard-v0.1"
    questions = arena_hard.load_questions(base / "question.jsonl")
    baseline = arena_hard.load_answers(base / "model_answer" / "gpt-4-0314.jsonl")
    assert len(questions) == 500
    assert {q.category for q in questions} == {"arena-hard-v0.1"}
    assert sorted(baseline) == sorted(q.uid for q in questions)
    for q in questions:
        games = arena_hard.build_games(q.uid, q.prompt, f"model answer {q.uid}", baseline[q.uid])
        assert [g.model_side for g in games] == ["B", "A"]
        for game in games:
            user = game.messages[1]["content"]
            assert user.startswith(f"<|User Prompt|>\n{q.prompt}\n\n")
            assert baseline[q.uid] in user and f"model answer {q.uid}" in user


def test_alpaca_eval_messages_for_real_arena_hard_prompts():
    # no AlpacaEval data is kept locally; real prompts and answers still exercise the filling
    base = SHARED / "arena_hard" / "arena-hard-v0.1"
    questions = arena_hard.load_questions(base / "question.jsonl")
    baseline = arena_hard.load_answers(base / "model_answer" / "gpt-4-0314.jsonl")
    for q in questions:
        game = alpaca_eval2.build_game(q.uid, q.prompt, baseline[q.uid], "MODEL", seed=1)
        user = game.messages[1]["content"]
        assert f'"instruction": """{q.prompt}""",' in user and baseline[q.uid] in user
