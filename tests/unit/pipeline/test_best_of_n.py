"""Best-of-N baseline (``moaa_cluster.pipeline.best_of_n``): the parts that need no engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moaa_cluster.engines import reward
from moaa_cluster.errors import ConfigError
from moaa_cluster.models.store import default_models_dir
from moaa_cluster.pipeline import best_of_n as bon
from moaa_cluster.pipeline.derive import _teacher_rows

PROPOSERS = ("prop-a", "prop-b", "prop-a")  # one model in two seats
AGG = "agg-model"


def _call(turn: int, layer: int, seat: int, model: str, text: str, finish: str = "stop") -> dict:
    return {
        "turn": turn,
        "layer": layer,
        "seat": seat,
        "model": model,
        "text": text,
        "finish_reason": finish,
    }


def synth_row(rid: str, n_turns: int = 1, *, solo: bool = False, system: str | None = None):
    """A row as synth writes it: proposers in layer 0 (then the solo seat), aggregator in 1."""
    calls, messages = [], []
    if system:
        messages.append({"role": "system", "content": system})
    seats = [*PROPOSERS, AGG] if solo else list(PROPOSERS)
    for turn in range(n_turns):
        for seat, model in enumerate(seats):
            calls.append(_call(turn, 0, seat, model, f"{rid}:s{seat}:t{turn}"))
        calls.append(_call(turn, 1, 0, AGG, f"{rid}:agg:t{turn}"))
        messages.append({"role": "user", "content": f"{rid} q{turn}"})
        messages.append({"role": "assistant", "content": f"{rid}:agg:t{turn}"})
    return {"id": rid, "source": "demo", "messages": messages, "calls": calls}


# --------------------------------------------------------------------------- candidates


def test_candidates_single_turn_in_seat_order_with_derive_names():
    row = synth_row("r1")
    cands = bon.candidates(row)
    assert [(c.index, c.seat, c.teacher) for c in cands] == [
        (0, 0, "prop-a"),
        (1, 1, "prop-b"),
        (2, 2, "prop-a#2"),
    ]
    assert cands[1].messages == [
        {"role": "user", "content": "r1 q0"},
        {"role": "assistant", "content": "r1:s1:t0"},
    ]
    # the same teachers and conversations `moaa derive` builds single/combined/random from
    assert {c.teacher: c.messages for c in cands} == _teacher_rows(row, 0)
    assert not any(c.truncated for c in cands)


def test_candidates_multi_turn_keep_system_and_each_teachers_own_answers():
    row = synth_row("r2", n_turns=2, system="Be terse.")
    cands = bon.candidates(row)
    assert cands[1].messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "r2 q0"},
        {"role": "assistant", "content": "r2:s1:t0"},
        {"role": "user", "content": "r2 q1"},
        {"role": "assistant", "content": "r2:s1:t1"},
    ]
    # never the aggregator's answers (layer 1) in a candidate
    assert not any("agg" in m["content"] for c in cands for m in c.messages)


def test_the_solo_seat_is_a_candidate():
    cands = bon.candidates(synth_row("r3", solo=True))
    assert [c.teacher for c in cands] == ["prop-a", "prop-b", "prop-a#2", AGG]
    assert cands[-1].seat == 3
    assert cands[-1].messages[-1]["content"] == "r3:s3:t0"


def test_a_turn_cut_at_max_tokens_marks_the_candidate_truncated():
    row = synth_row("r4", n_turns=2)
    for call in row["calls"]:
        if (call["layer"], call["seat"], call["turn"]) == (0, 1, 1):
            call["finish_reason"] = "length"
    assert [c.truncated for c in bon.candidates(row)] == [False, True, False]


def test_a_seat_without_an_answer_for_a_turn_is_an_error():
    row = synth_row("r5", n_turns=2)
    row["calls"] = [c for c in row["calls"] if (c["layer"], c["seat"], c["turn"]) != (0, 2, 1)]
    with pytest.raises(ValueError, match="seat 2 of layer 0 has no answer for turn 2"):
        bon.candidates(row)


def test_requests_one_per_candidate_as_json_and_skip_broken_rows():
    broken = synth_row("bad")
    broken["calls"] = [c for c in broken["calls"] if c["layer"] != 0]
    reqs = bon.requests([synth_row("r1", solo=True), broken])
    assert [(r["id"], r["index"]) for r in reqs] == [("r1", i) for i in range(4)]
    assert json.loads(reqs[3]["messages"])[-1] == {"role": "assistant", "content": "r1:s3:t0"}


# --------------------------------------------------------------------------- pick


def test_pick_highest_score():
    cands = bon.candidates(synth_row("r1"))
    assert bon.pick(cands, [0.1, 2.5, -1.0]).teacher == "prop-b"


def test_pick_tie_goes_to_the_lowest_seat_whatever_the_order():
    cands = bon.candidates(synth_row("r1"))
    assert bon.pick(cands, [1.0, 3.0, 3.0]).seat == 1
    assert bon.pick(list(reversed(cands)), [3.0, 3.0, 1.0]).seat == 1


def test_pick_skips_truncated_unless_allowed():
    row = synth_row("r1")
    row["calls"][1]["finish_reason"] = "length"  # seat 1, the best scored
    cands = bon.candidates(row)
    assert bon.pick(cands, [0.0, 9.0, 1.0]).seat == 2
    assert bon.pick(cands, [0.0, 9.0, 1.0], truncated="allow").seat == 1
    with pytest.raises(ValueError, match="truncated must be one of"):
        bon.pick(cands, [0.0, 9.0, 1.0], truncated="maybe")


# --------------------------------------------------------------------------- assemble


def _scores(row: dict, values: list[float]) -> dict:
    return {(row["id"], i): (v, None) for i, v in enumerate(values)}


def test_assemble_rows_in_derive_format_with_every_score():
    r1, r2 = synth_row("r1"), synth_row("r2", n_turns=2, solo=True)
    scored = {**_scores(r1, [0.5, -0.5, 0.7]), **_scores(r2, [1.0, 2.0, 3.0, 4.0])}
    out, rejects = bon.assemble([r1, r2], scored, "rm")
    assert rejects == []
    assert [r["id"] for r in out] == ["r1", "r2"]
    first = out[0]
    assert {"id", "source", "messages", "teacher"} <= set(first)
    assert (first["teacher"], first["score"], first["reward_model"]) == ("prop-a#2", 0.7, "rm")
    assert first["messages"][-1]["content"] == "r1:s2:t0"
    assert [c["score"] for c in first["candidates"]] == [0.5, -0.5, 0.7]
    assert out[1]["teacher"] == AGG  # the solo seat can win
    assert [m["content"] for m in out[1]["messages"] if m["role"] == "assistant"] == [
        "r2:s3:t0",
        "r2:s3:t1",
    ]


def test_assemble_rejects_a_row_with_any_unscored_candidate():
    r1, r2 = synth_row("r1"), synth_row("r2")
    scored = {**_scores(r1, [0.1, 0.2, 0.3]), **_scores(r2, [0.1, 0.2, 0.3])}
    scored[("r2", 1)] = (None, "conversation has 9000 tokens > the reward model's max_model_len")
    out, rejects = bon.assemble([r1, r2], scored, "rm")
    assert [r["id"] for r in out] == ["r1"]
    (rej,) = rejects
    assert rej["id"] == "r2" and rej["stage"] == "best-of-n"
    assert "1 of 3 candidates not scored" in rej["reason"]
    assert "prop-b (seat 1): conversation has 9000 tokens" in rej["reason"]
    assert [c["score"] for c in rej["candidates"]] == [0.1, None, 0.3]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_assemble_rejects_a_non_finite_score(bad):
    row = synth_row("r1")
    out, rejects = bon.assemble([row], _scores(row, [0.1, bad, 0.3]), "rm")
    assert out == [] and "score is not finite" in rejects[0]["reason"]


def test_assemble_rejects_missing_results_and_broken_rows():
    ok, missing, broken = synth_row("ok"), synth_row("missing"), synth_row("broken")
    broken["calls"] = [c for c in broken["calls"] if c["layer"] != 0]
    out, rejects = bon.assemble([ok, missing, broken], _scores(ok, [1, 2, 3]), "rm")
    assert [r["id"] for r in out] == ["ok"]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert "no score came back" in reasons["missing"]
    assert "no layer-0 answers" in reasons["broken"]


def test_assemble_rejects_a_row_whose_every_candidate_was_cut():
    row = synth_row("r1")
    for call in row["calls"]:
        call["finish_reason"] = "length"
    out, rejects = bon.assemble([row], _scores(row, [1, 2, 3]), "rm")
    assert out == [] and "all 3 candidates stopped at max_tokens" in rejects[0]["reason"]
    out, _ = bon.assemble([row], _scores(row, [1, 2, 3]), "rm", truncated="allow")
    assert out[0]["teacher"] == "prop-a#2"


# --------------------------------------------------------------------------- engine side


def test_engine_output_to_score_and_errors():
    assert reward._from_engine({"id": "a", "index": 2, "embeddings": [1.5]}) == {
        "id": "a",
        "index": 2,
        "score": 1.5,
        "error": None,
    }
    two = reward._from_engine({"id": "a", "index": 0, "embeddings": [0.1, 0.9]})
    assert two["score"] is None and "gives 2 outputs" in two["error"]
    failed = reward._from_engine({"id": "a", "index": 0, "__inference_error__": "ValueError: x"})
    assert (failed["score"], failed["error"]) == (None, "ValueError: x")
    # raw reward-head output, not squashed
    assert reward._to_engine({"tokenized_prompt": [1, 2]})["pooling_params"] == {
        "use_activation": False
    }


def test_render_uses_the_reward_models_template_without_a_generation_prompt(models_dir):
    path = str(models_dir / "smollm2-135m-instruct")
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    row = {"id": "a", "index": 0, "messages": json.dumps(messages)}
    out = reward.render(row, tokenizer_path=path, chat_template=None, fold=False, max_len=2048)
    assert out["render_error"] == ""
    tok = reward._tokenizer(path, False)
    text = tok.decode(out["tokenized_prompt"])
    assert text.endswith("<|im_start|>assistant\nHello.<|im_end|>\n")  # finished, not a prefill
    assert text.count("<|im_start|>assistant") == 1
    short = reward.render(row, tokenizer_path=path, chat_template=None, fold=False, max_len=10)
    assert (
        short["tokenized_prompt"] == []
        and "> the reward model's max_model_len 10" in (short["render_error"])
    )
    broken = reward.render(
        row,
        tokenizer_path=path,
        chat_template="{{ raise_exception('no') }}",
        fold=False,
        max_len=99,
    )
    assert broken["render_error"].startswith("chat template:")
    folded = reward.render(
        {**row, "messages": json.dumps([{"role": "system", "content": "SYS"}, *messages])},
        tokenizer_path=path,
        chat_template=None,
        fold=True,
        max_len=2048,
    )
    assert "<|im_start|>user\nSYS\n\nHi?<|im_end|>" in tok.decode(folded["tokenized_prompt"])


@pytest.fixture(scope="module")
def models_dir() -> Path:
    d = default_models_dir()
    if not (d / "smollm2-135m-instruct" / "tokenizer.json").exists():
        pytest.skip("packaged SmolLM2 not prepared (moaa models prepare)")
    return d


# --------------------------------------------------------------------------- configs


def test_the_stand_in_reward_config_is_a_pooling_model(tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    spec = bon.load_reward_spec("smollm2_135m_reward", models_dir=tmp_path)
    assert spec.name == "smollm2-135m-instruct"
    assert spec.engine_kwargs["runner"] == "pooling"
    assert spec.accelerator_type is None  # cluster=local


def test_the_paper_reward_config_resolves_for_the_gpu_cluster(tmp_path):
    (tmp_path / "Skywork-Reward-Llama-3.1-8B-v0.2").mkdir()
    (tmp_path / "Skywork-Reward-Llama-3.1-8B-v0.2" / "config.json").write_text("{}")
    spec = bon.load_reward_spec("skywork_reward_llama_3_1_8b", tmp_path, cluster="slurm_a100")
    assert spec.accelerator_type == "A100-80G"
    assert spec.engine_kwargs == {"runner": "pooling"}


def test_the_cluster_config_main_starts_ray_with_resolves_its_own_references():
    """`--cluster slurm_a100` interpolates `${cluster.accelerator_type}`: resolved in place."""
    cluster = bon.cluster_config("slurm_a100")
    assert cluster["accelerator_type"] == "A100-80G"
    assert all("${" not in str(v) for v in cluster.values())
    with pytest.raises(ConfigError, match="cluster config not found"):
        bon.cluster_config("no_such_cluster")


def test_a_generative_model_is_refused_as_reward_model(tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not configured as a reward model.*runner: pooling"):
        bon.load_reward_spec("smollm2_135m_instruct", models_dir=tmp_path)
    with pytest.raises(ConfigError, match="reward model config not found"):
        bon.load_reward_spec("no_such_model", models_dir=tmp_path)


def test_processor_config_serves_the_pooling_task_without_text_stages(tmp_path):
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    spec = bon.load_reward_spec("smollm2_135m_reward", models_dir=tmp_path)
    cfg = reward.processor_config(spec, batch_size=4)
    assert cfg.task_type == "classify"
    assert cfg.engine_kwargs["task_type"] == "classify"
    assert "runner" not in cfg.engine_kwargs  # the processor's task type sets it
    assert cfg.engine_kwargs["convert"] == "classify"
    assert cfg.engine_kwargs["hf_overrides"]["method"] == "from_2_way_softmax"
    assert cfg.engine_kwargs["max_model_len"] == 2048
    assert cfg.should_continue_on_error is True
    assert cfg.placement_group_config["bundles"][0]["CPU"] == 1.0
    assert not cfg.placement_group_config["bundles"][0].get("GPU")


def test_main_refuses_a_run_dir_without_sft_parquet(tmp_path, capsys, monkeypatch):
    # no Ray and no change to this process's environment: the error comes before either
    monkeypatch.setattr("moaa_cluster.runtime.init_ray", lambda cluster: None)
    monkeypatch.setattr("moaa_cluster.runtime.set_offline", lambda env=None: None)
    (tmp_path / "m" / "smollm2-135m-instruct").mkdir(parents=True)
    (tmp_path / "m" / "smollm2-135m-instruct" / "config.json").write_text("{}")
    code = bon.main(
        [
            str(tmp_path),
            "--reward-model",
            "smollm2_135m_reward",
            "--models-dir",
            str(tmp_path / "m"),
        ]
    )
    assert code == 1
    assert "sft.parquet does not exist" in capsys.readouterr().err
