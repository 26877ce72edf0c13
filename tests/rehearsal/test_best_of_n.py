"""Best-of-N (Table 3) on the real stack: a ``ray.data.llm`` processor serving the packaged
SmolLM2 in vLLM's pooling runner as the stand-in reward model.

The input is a small synth run written here (``sft.parquet`` with the provenance synth
writes: four layer-0 seats, the last a solo seat, and the aggregator; one two-turn row), so
what is under test is the scoring: the reward model's chat template, the pooling task, the
pick and the rejects. SmolLM2 was never trained as a reward model: its scores (the
logit("Yes") - logit("No") head vLLM derives from its LM head) are checked against the same
computation in transformers, not for judging anything.
"""

from __future__ import annotations

import json
import math
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster.engines import reward
from moaa_cluster.pipeline import best_of_n as bon

SEATS = ("WizardLM-2-8x22B", "Qwen2-72B-Instruct", "gemma-2-27b-it", "Qwen1.5-110B-Chat")
AGG = "Qwen1.5-110B-Chat"


def _row(rid: str, turns: list[str], answers: list[list[str]], finish: str = "stop") -> dict:
    """A synth row: ``answers[turn][seat]`` from the four layer-0 seats (the last one solo)."""
    calls, messages = [], []
    for t, question in enumerate(turns):
        for seat, model in enumerate(SEATS):
            calls.append(
                {
                    "turn": t,
                    "layer": 0,
                    "seat": seat,
                    "model": model,
                    "text": answers[t][seat],
                    "finish_reason": finish,
                }
            )
        calls.append(
            {
                "turn": t,
                "layer": 1,
                "seat": 0,
                "model": AGG,
                "text": f"aggregated {t}",
                "finish_reason": "stop",
            }
        )
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"aggregated {t}"},
        ]
    return {"id": rid, "source": "mt_bench", "messages": messages, "calls": calls}


PARIS = [
    "The capital of France is Paris.",
    "Paris.",
    "I think it is Lyon.",
    "Paris is the capital and largest city of France.",
]
ROWS = [
    _row("capital", ["What is the capital of France?"], [PARIS]),
    # the same conversation under another id: a deterministic engine scores it the same
    _row("capital-again", ["What is the capital of France?"], [PARIS]),
    _row(
        "two-turn",
        ["Name a prime number.", "Now double it."],
        [["7", "2", "9 is prime.", "Seven."], ["14", "4", "18", "Fourteen."]],
    ),
    # longer than the reward model's 2,048-token context: a reject, with its reason
    _row("too-long", ["Repeat a word."], [["word " * 3000, "ok", "ok", "ok"]]),
]


@pytest.fixture(scope="module")
def result(models_dir, ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("synth-run")
    pq.write_table(pa.Table.from_pylist(ROWS), run_dir / "sft.parquet")
    started = time.perf_counter()
    code = bon.main(
        [
            str(run_dir),
            "--reward-model",
            "smollm2_135m_reward",
            "--models-dir",
            str(models_dir),
            "--batch-size",
            "8",
        ]
    )
    seconds = time.perf_counter() - started
    print(f"best-of-n scoring, {len(ROWS)} rows x {len(SEATS)} candidates: {seconds:.1f} s")
    out = run_dir / "ablations" / "best-of-n-smollm2-135m-instruct.parquet"
    rejects = run_dir / "ablations" / "best-of-n-smollm2-135m-instruct.rejects.jsonl"
    return code, {r["id"]: r for r in pq.read_table(out).to_pylist()}, rejects, seconds


def test_every_row_is_picked_or_rejected(result):
    code, rows, rejects_path, seconds = result
    assert code == 0
    assert sorted(rows) == ["capital", "capital-again", "two-turn"]
    (reject,) = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert reject["id"] == "too-long" and reject["stage"] == "best-of-n"
    assert "1 of 4 candidates not scored" in reject["reason"]
    assert "> the reward model's max_model_len 2048" in reject["reason"]
    assert seconds < 180


def test_the_best_scored_candidate_is_the_sft_row(result):
    _, rows, _, _ = result
    for row in rows.values():
        table = row["candidates"]
        assert [c["teacher"] for c in table] == list(SEATS)  # the solo seat is a candidate
        scores = [c["score"] for c in table]
        assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        assert row["teacher"] == SEATS[best] and row["score"] == scores[best]
        assert row["reward_model"] == "smollm2-135m-instruct"
        assert row["messages"][-1]["role"] == "assistant"
    two = rows["two-turn"]
    seat = SEATS.index(two["teacher"])
    answers = [m["content"] for m in two["messages"] if m["role"] == "assistant"]
    assert answers == [ROWS[2]["calls"][seat]["text"], ROWS[2]["calls"][5 + seat]["text"]]


def test_scores_are_the_reward_heads_raw_output(result, models_dir):
    """The pooled score equals logit("Yes") - logit("No") at the last token, computed by
    transformers on the same token ids: the template, the last-token pooling and the raw
    (no sigmoid) output are what we think they are."""
    import torch
    from transformers import AutoModelForCausalLM

    _, rows, _, _ = result
    path = str(models_dir / "smollm2-135m-instruct")
    tok = reward._tokenizer(path, False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    yes, no = tok.convert_tokens_to_ids(["Yes", "No"])
    cands = bon.candidates(ROWS[0])
    expected = []
    for c in cands:
        text = tok.apply_chat_template(c.messages, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        expected.append(float(logits[yes] - logits[no]))
    got = [c["score"] for c in rows["capital"]["candidates"]]
    print("vLLM", got, "transformers", expected)
    # bf16 engine vs float32 reference (the scores themselves are ~0.2-0.4): measured at most
    # 0.062 apart, and a batch can move a bf16 score by ~0.05; 0.15 still fails a sigmoid
    # (~0.55-0.6 here) or a zero head (0.0)
    assert got == pytest.approx(expected, abs=0.15)
    # the same conversation, scored in another request, gets the same score up to bf16 on
    # CPU, where a batch's composition moves a score (the first candidate measured 0.364 in one
    # run and 0.408 in another)
    again = [c["score"] for c in rows["capital-again"]["candidates"]]
    assert again == pytest.approx(got, abs=0.15)
    assert len({round(s, 2) for s in got}) > 1  # a real head, not a constant
