"""The context budget (``moa/budget.py``) and synth's up-front length check.

The rule's arithmetic runs on a fake counter (one character = one token, each message costs
a fixed overhead), where every boundary is exact. The same rule then runs on the real SmolLM2
tokenizer and chat template, and on the paper's mixtures composed from ``conf/`` (skipped
only when the packaged model or the MT-Bench copy is missing).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest

from moaa_cluster import build
from moaa_cluster.moa.budget import (
    MARKER,
    ContextFitter,
    ContextOverflow,
    plan_cuts,
    reserved_tokens,
    water_fill,
    water_fill_marked,
)
from moaa_cluster.moa.fitters import tokenizer_fitter
from moaa_cluster.moa.lengths import length_rejects
from moaa_cluster.moa.prompts import AGGREGATE_AND_SYNTHESIZE, inject_responses
from moaa_cluster.models.store import default_models_dir
from tests.conftest import SHARED

MODELS_DIR = default_models_dir()
SMOLLM2 = MODELS_DIR / "smollm2-135m-instruct"
MT_BENCH = SHARED / "data" / "mt_bench" / "question.jsonl"
needs_smollm2 = pytest.mark.skipif(
    not (SMOLLM2 / "tokenizer.json").exists(), reason=f"{SMOLLM2} not prepared (make models)"
)
CUT = "[cut]"  # a 5-token marker for the fake counter
PER_MESSAGE = 3


def fake_count(messages: list[dict]) -> int:
    return sum(len(m["content"]) + PER_MESSAGE for m in messages) + 1  # +1: generation prompt


def fake_fitter(max_model_len: int, marker: str = CUT, count=fake_count) -> ContextFitter:
    return ContextFitter(
        max_model_len, count, len, lambda text, n: text[:n], marker=marker, name="fake"
    )


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# -- water-filling ---------------------------------------------------------------------------


def test_water_fill_gives_equal_shares_and_passes_unused_shares_on():
    # 600 / 3 = 200 each: the 100-token answer keeps all of it, its unused 100 goes to the others
    assert water_fill([100, 300, 500], 600) == [100, 250, 250]
    assert water_fill([500, 100, 300], 600) == [250, 100, 250]  # by length, not by seat
    assert water_fill([10, 20, 30], 600) == [10, 20, 30]  # room for all: nothing cut
    assert water_fill([50, 50], 0) == [0, 0]
    assert water_fill([50, 50], -7) == [0, 0]
    # an uneven split: the spare token goes to the earliest of equally long answers
    assert water_fill([9, 9, 9], 10) == [4, 3, 3]
    assert water_fill([], 10) == []


def test_water_fill_marked_pays_each_cut_answers_marker_from_the_budget():
    # two answers are cut: 2 x 5 marker tokens come off, the 590 left are water-filled
    assert water_fill_marked([100, 300, 500], 600, 5) == [100, 245, 245]
    kept = water_fill_marked([100, 300, 500], 600, 5)
    assert sum(kept) + 5 * 2 == 600
    # 290: all three are cut (96 < 100 at the first try), so 275 is shared after three markers
    assert water_fill_marked([100, 300, 500], 290, 5) == [91, 92, 92]
    assert water_fill_marked([100, 300, 500], 14, 5) is None  # three markers need 15
    assert water_fill_marked([100, 300, 500], 15, 5) == [0, 0, 0]


def test_plan_cuts_shortens_proposals_before_history_and_history_oldest_first():
    # proposals alone can free 2 x (100 - 5) = 190 tokens
    props, hist = plan_cuts([100, 100], [50, 60], 190, 5)
    assert props == [0, 0] and hist == [50, 60]
    props, hist = plan_cuts([100, 100], [50, 60], 30, 5)
    assert props == [80, 80] and hist == [50, 60]  # each 80 + a 5-token marker: 170 = 200 - 30
    # 10 more than the proposals can free: the oldest answer goes first
    props, hist = plan_cuts([100, 100], [50, 60], 200, 5)
    assert props == [0, 0] and hist == [35, 60]  # 50 - 35 - 5 = 10 freed
    # the oldest to the marker alone (45 freed), then 15 from the next one
    props, hist = plan_cuts([100, 100], [50, 60], 250, 5)
    assert hist == [0, 40]
    assert plan_cuts([100, 100], [50, 60], 290, 5) == ([0, 0], [0, 0])
    assert plan_cuts([100, 100], [50, 60], 291, 5) is None  # nothing can free one more
    assert plan_cuts([100], [], 0, 5) == ([100], [])


def test_answers_no_longer_than_the_marker_are_never_replaced_by_it():
    props, hist = plan_cuts([3, 100], [4, 80], 160, 5)
    assert props == [3, 0]  # the 3-token proposal keeps its text at the floor
    assert hist == [4, 10]  # 95 from the proposal, 65 from the second answer (the first is tiny)
    assert plan_cuts([3, 100], [4, 80], 170, 5) == ([3, 0], [4, 0])
    assert plan_cuts([3, 100], [4, 80], 171, 5) is None


def test_reserved_tokens():
    assert reserved_tokens(2048) == 2048
    assert reserved_tokens(None) == 1  # the engine generates into whatever is left
    assert reserved_tokens(0) == 1


# -- the fitter on the fake counter ------------------------------------------------------------


def _aggregator_case(limit_slack: int):
    """Messages, 3 proposals and a max_model_len ``limit_slack`` tokens over their total."""
    messages = [user("q" * 20)]
    proposals = ["a" * 100, "b" * 300, "c" * 500]
    full = fake_count(inject_responses(messages, proposals))
    return messages, proposals, full + 64 - limit_slack  # 64: max_tokens


def test_a_prompt_that_fits_exactly_is_sent_unchanged():
    messages, proposals, max_model_len = _aggregator_case(0)
    fitted = fake_fitter(max_model_len)(messages, proposals, 64)
    assert fitted.messages == inject_responses(messages, proposals)
    assert fitted.cuts == () and fitted.record() is None
    assert fitted.prompt_tokens + 64 == max_model_len


def test_one_token_over_cuts_the_longest_proposal_with_the_marker():
    messages, proposals, max_model_len = _aggregator_case(1)
    fitted = fake_fitter(max_model_len)(messages, proposals, 64)
    assert fitted.prompt_tokens + 64 == max_model_len  # fits exactly, to the token
    system = fitted.messages[0]["content"]
    assert system.startswith(AGGREGATE_AND_SYNTHESIZE + "\n1. " + "a" * 100 + "\n2. " + "b" * 300)
    assert system.endswith("\n3. " + "c" * (500 - 6) + CUT)  # 1 over + 5 of marker
    assert fitted.messages[1:] == messages
    record = json.loads(fitted.record())
    assert record == {
        "cut": [{"what": "proposal", "seat": 2, "tokens": 500, "kept": 494}],
        "budget": max_model_len,
        "max_tokens": 64,
        "prompt_tokens": max_model_len - 64,
    }


def test_proposals_share_the_room_left_by_water_filling():
    messages, proposals, max_model_len = _aggregator_case(400)
    fitted = fake_fitter(max_model_len)(messages, proposals, 64)
    cuts = {c.index: c for c in fitted.cuts}
    # 900 tokens of proposals - 400 = 500: the short one keeps its 100; 400 - 2 markers
    # split equally between the others
    assert set(cuts) == {1, 2}
    assert cuts[1].kept == cuts[2].kept == 195
    assert (cuts[1].tokens, cuts[2].tokens) == (300, 500)
    assert fitted.prompt_tokens + 64 == max_model_len
    system = fitted.messages[0]["content"]
    assert "\n1. " + "a" * 100 + "\n2. " + "b" * 195 + CUT + "\n3. " + "c" * 195 + CUT in system


def test_the_default_marker_marks_a_cut_in_the_text():
    messages, proposals, _ = _aggregator_case(0)
    full = fake_count(inject_responses(messages, proposals))
    fitter = fake_fitter(full + 64 - 50, marker=MARKER)
    fitted = fitter(messages, proposals, 64)
    assert fitted.messages[0]["content"].endswith(MARKER)
    assert MARKER == "\n[... truncated to fit the context]"
    assert fitted.prompt_tokens + 64 <= fitter.max_model_len


def test_the_system_prompt_and_the_k1_template_are_never_cut():
    messages = [{"role": "system", "content": "S" * 40}, user("q" * 20)]
    proposals = ["x" * 300, "y" * 300]
    fitter = fake_fitter(fake_count(inject_responses(messages, proposals)) + 10 - 200)
    fitted = fitter(messages, proposals, 10)
    system = fitted.messages[0]["content"]
    assert system.startswith("S" * 40 + "\n\n" + AGGREGATE_AND_SYNTHESIZE + "\n1. ")
    assert fitted.messages[1] == user("q" * 20)


def _history_case():
    """Turn 3 of a row: two earlier final answers, then two proposals."""
    messages = [user("q0"), assistant("h" * 200), user("q1"), assistant("i" * 200), user("q2")]
    return messages, ["p" * 100, "r" * 100]


def test_history_is_cut_oldest_first_only_when_the_proposals_are_at_the_marker():
    messages, proposals = _history_case()
    full = fake_count(inject_responses(messages, proposals))
    # the proposals can free 2 x 95 = 190; 250 over: 60 more from the oldest answer
    fitter = fake_fitter(full + 16 - 250)
    fitted = fitter(messages, proposals, 16)
    assert [(c.what, c.index, c.kept) for c in fitted.cuts] == [
        ("proposal", 0, 0),
        ("proposal", 1, 0),
        ("history", 0, 135),
    ]
    assert fitted.messages[2]["content"] == "h" * 135 + CUT
    assert fitted.messages[4]["content"] == "i" * 200  # the newer answer is untouched
    assert fitted.messages[0]["content"].endswith("\n1. " + CUT + "\n2. " + CUT)
    assert fitted.prompt_tokens + 16 == fitter.max_model_len
    assert json.loads(fitted.record())["cut"][2] == {
        "what": "history",
        "turn": 0,
        "tokens": 200,
        "kept": 135,
    }


def test_a_layer_0_call_shortens_its_history_only():
    messages, _ = _history_case()
    fitter = fake_fitter(fake_count(messages) + 16 - 300)
    fitted = fitter(messages, None, 16)
    # 195 from the oldest (to the marker alone), then 105 from the next
    assert [(c.what, c.index, c.kept) for c in fitted.cuts] == [
        ("history", 0, 0),
        ("history", 1, 90),
    ]
    assert fitted.messages[0]["role"] == "user"  # no K.1 prompt on layer 0
    assert fitted.prompt_tokens + 16 == fitter.max_model_len


def test_a_prompt_that_cannot_fit_raises_with_the_numbers():
    messages, proposals = _history_case()
    full = fake_count(inject_responses(messages, proposals))
    freeable = 2 * 95 + 2 * 195
    fitter = fake_fitter(full + 16 - freeable)
    assert fitter(messages, proposals, 16).prompt_tokens + 16 == fitter.max_model_len
    tighter = fake_fitter(full + 16 - freeable - 1)
    with pytest.raises(ContextOverflow, match=r"prompt too long for fake \(max_model_len \d+\)"):
        tighter(messages, proposals, 16)


def test_tokens_lost_at_the_joins_are_taken_off_in_another_round():
    # a counter where every marker costs 7 tokens more inside the prompt than on its own
    def joins(messages):
        return fake_count(messages) + 7 * sum(m["content"].count(CUT) for m in messages)

    messages, proposals, max_model_len = _aggregator_case(100)
    fitter = fake_fitter(max_model_len, count=joins)
    fitted = fitter(messages, proposals, 64)
    assert fitted.prompt_tokens == joins(fitted.messages)
    assert fitted.prompt_tokens + 64 <= max_model_len


def test_floor_check_rejects_only_what_cannot_fit_with_every_answer_at_the_marker():
    messages, _ = _history_case()
    floor = [
        user("q0"),
        assistant(CUT),
        user("q1"),
        assistant(CUT),
        user("q2"),
    ]
    need = fake_count(inject_responses(floor, [CUT, CUT]))
    assert fake_fitter(need + 16).floor_check(messages, 2, 16) is None
    assert fake_fitter(need + 15).floor_check(messages, 2, 16) == need
    assert fake_fitter(10**6).floor_check(messages, 2, 16) is None  # settled by the cheap bound


# -- the real tokenizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    if not (SMOLLM2 / "tokenizer.json").exists():
        pytest.skip(f"{SMOLLM2} not prepared (make models)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SMOLLM2), local_files_only=True)


@functools.cache
def _prose_ids(tokenizer) -> list[int]:
    text = MT_BENCH.read_text() if MT_BENCH.exists() else "The quick brown fox. " * 2000
    return tokenizer(text * 4, add_special_tokens=False)["input_ids"]


def answer_of(tokenizer, n_tokens: int, seed: int) -> str:
    """Prose of exactly ``n_tokens`` tokens (the MT-Bench questions, shifted per answer)."""
    ids = _prose_ids(tokenizer)[seed * 997 :]
    out = tokenizer.decode(ids[:n_tokens])
    while len(tokenizer(out, add_special_tokens=False)["input_ids"]) > n_tokens:
        out = out[:-1]
    return out


def engine_count(tokenizer, messages) -> int:
    """Prompt tokens as vLLM counts them: the chat template rendered and tokenized."""
    return len(
        tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)[
            "input_ids"
        ]
    )


def test_real_tokenizer_fits_four_2048_token_proposals_into_8192(smollm2):
    fitter = tokenizer_fitter(smollm2, 8192, name="Qwen1.5-110B-Chat")
    proposals = [answer_of(smollm2, 2048, s) for s in range(4)]
    messages = [user("Explain the difference between a list and a tuple in Python.")]
    assert engine_count(smollm2, inject_responses(messages, proposals)) + 2048 > 8192
    fitted = fitter(messages, proposals, 2048)
    sent = engine_count(smollm2, fitted.messages)
    assert sent == fitted.prompt_tokens and sent + 2048 <= 8192
    assert 8192 - 2048 - sent <= 4  # the room is used, not wasted
    kept = [c.kept for c in fitted.cuts]
    assert [c.index for c in fitted.cuts] == [0, 1, 2, 3]
    assert max(kept) - min(kept) <= 1  # equal shares
    system = fitted.messages[0]["content"]
    assert system.startswith(AGGREGATE_AND_SYNTHESIZE + "\n1. ")
    assert system.count(MARKER) == 4
    for i, text in enumerate(proposals):  # each proposal's own first tokens, then the marker
        head = smollm2.decode(smollm2(text, add_special_tokens=False)["input_ids"][: kept[i]])
        assert f"\n{i + 1}. {head}{MARKER}" in system


def test_real_tokenizer_counts_a_template_without_system_role_folded(smollm2):
    gemma2_style = (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] "
        "+ '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    )
    fitter = tokenizer_fitter(smollm2, 8192, chat_template=gemma2_style)
    messages = [{"role": "system", "content": "Be brief."}, user("Hi")]
    folded = [user("Be brief.\n\nHi")]
    expected = smollm2.apply_chat_template(
        folded, tokenize=True, add_generation_prompt=True, chat_template=gemma2_style
    )["input_ids"]
    assert fitter.count_prompt(messages) == len(expected)
    proposals = [answer_of(smollm2, 3000, s) for s in range(3)]
    fitted = fitter([user("q")], proposals, 2048)  # K.1 goes in a system message: folded too
    assert fitted.prompt_tokens + 2048 <= 8192 and len(fitted.cuts) == 3


# -- the up-front check on the paper's mixtures ------------------------------------------------


def paper_mixture(compose, name: str):
    """The paper mixture from ``conf/`` with every model's tokenizer the packaged SmolLM2."""
    mixture, specs, defaults = build.mixture(compose("synth", [f"mixture={name}"]).mixture)
    specs = {k: replace(s, path=str(SMOLLM2)) for k, s in specs.items()}
    assert {s.max_model_len for s in specs.values()} == {8192}
    assert defaults["max_tokens"] == 2048
    return mixture, specs, defaults


def mt_bench_rows() -> list[dict]:
    from moaa_cluster.data.sources import Source, load_rows

    if not MT_BENCH.exists():
        pytest.skip(f"{MT_BENCH} is absent")
    rows, rejects = load_rows([Source(name="mt_bench", path=str(MT_BENCH))], limit=12)
    assert not rejects and len(rows) == 12
    assert all(len(r["turns"]) == 2 for r in rows)
    return rows


@needs_smollm2
@pytest.mark.parametrize("name", ["paper_small_scale", "paper_stage1"])
def test_paper_mixtures_reject_no_mt_bench_row_up_front(compose, name):
    mixture, specs, defaults = paper_mixture(compose, name)
    rows = mt_bench_rows()
    keep, rejects = length_rejects(rows, mixture, specs, defaults)
    assert rejects == []
    assert keep == rows


@needs_smollm2
def test_a_row_whose_own_text_cannot_fit_is_rejected_with_a_reason(compose, smollm2):
    mixture, specs, defaults = paper_mixture(compose, "paper_small_scale")
    long_turn = answer_of(smollm2, 9000, 0)
    rows = [
        {"id": "ok", "source": "s", "source_id": "1", "system": None, "turns": ["Hello?"]},
        {"id": "long", "source": "s", "source_id": "2", "system": None, "turns": [long_turn]},
    ]
    keep, rejects = length_rejects(rows, mixture, specs, defaults)
    assert [r["id"] for r in keep] == ["ok"]
    assert len(rejects) == 1
    reject = rejects[0]
    assert {k: reject[k] for k in ("source", "where", "stage")} == {
        "source": "s",
        "where": "long",
        "stage": "input",
    }
    assert reject["record"] == {"turns": [long_turn], "system": None}
    # the first call that cannot fit: a layer-1 seat on turn 1
    assert reject["reason"].startswith("prompt too long for gemma-2-9b-it (max_model_len 8192): ")
    assert "turn 1, layer 1 needs " in reject["reason"]
    assert "+ 2048 to generate" in reject["reason"]


@needs_smollm2
def test_the_floor_is_exact_at_the_boundary(compose, smollm2):
    # a question that leaves the aggregator's floor prompt (K.1 with 3 markers) exactly
    # max_tokens short of 8192 passes; one token more and the row is rejected
    from moaa_cluster.engines.chat_template import FOLD, fold_system, system_mode

    mixture, specs, defaults = paper_mixture(compose, "paper_small_scale")
    folds = system_mode(specs["gemma_2_9b_it"]) == FOLD  # Gemma-2 has no system role

    def sent(question: str) -> int:  # the aggregator's floor prompt as the backend sends it
        messages = inject_responses([user(question)], [MARKER] * 3)
        return engine_count(smollm2, fold_system(messages) if folds else messages)

    room = 8192 - 2048 - sent("")
    fits, over = answer_of(smollm2, room, 1), answer_of(smollm2, room + 1, 1)
    assert (sent(fits), sent(over)) == (8192 - 2048, 8192 - 2048 + 1)
    row = {"id": "r", "source": "s", "source_id": "1", "system": None, "turns": [fits]}
    assert length_rejects([row], mixture, specs, defaults) == ([row], [])
    keep, rejects = length_rejects([{**row, "turns": [over]}], mixture, specs, defaults)
    assert keep == []
    assert "turn 1, layer 2 needs 6145 prompt tokens" in rejects[0]["reason"]
    assert rejects[0]["reason"].endswith("+ 2048 to generate = 8193")
