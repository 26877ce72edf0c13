"""The placement planner on the paper's mixtures and judge, the embedded default, and its refusals.

Pure arithmetic: every case here is decided by the numbers in ``conf/`` (model sizes and
architectures, the cluster inventory, the published throughput table), so each test states
the numbers it expects and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moaa_cluster import build
from moaa_cluster.engines import placement
from moaa_cluster.engines.placement import Costing, Inventory, PlanSettings, fit, format_plan
from moaa_cluster.engines.spec import ModelSpec, spec_from_dict
from moaa_cluster.engines.throughput import Rate, ThroughputTable
from moaa_cluster.engines.workload import (
    Phase,
    Seat,
    Step,
    Workload,
    comparison_rounds,
    prefs_workload,
    synth_workload,
)
from moaa_cluster.errors import ConfigError
from moaa_cluster.judge.ranking import PairResult, make_plan

REPO = Path(__file__).resolve().parents[4]
GIB = 2**30


def a100(nodes: int, memory_gb: float = 80) -> Inventory:
    return Inventory(nodes=nodes, gpus_per_node=8, gpu_memory_gb=memory_gb, accelerator="A100-80G")


@pytest.fixture(scope="module")
def stage1(compose):
    """Paper stage 1 (conf/mixture/paper_stage1) as `moaa plan` composes it."""
    cfg = compose("plan", ["mixture=paper_stage1", "cluster=slurm_a100"])
    mix, specs, defaults = build.mixture(cfg.mixture)
    return synth_workload("synth paper_stage1", mix, defaults, turns=1), specs, cfg


@pytest.fixture(scope="module")
def stage2(compose):
    """Paper stage-2 judge (conf/judge/paper_stage2) ranking Llama-3.1-8B-Instruct samples."""
    cfg = compose(
        "plan",
        ["judge=paper_stage2", "cluster=slurm_a100", "model@sampler=llama_3_1_8b_instruct"],
    )
    judge, specs = build.judge(cfg.judge)
    specs["sampler"] = build.model_specs({"sampler": cfg.sampler})["sampler"]
    work = prefs_workload("prefs paper_stage2", judge, "sampler", 5, 2048)
    return work, specs, cfg


@pytest.fixture(scope="module")
def table(compose):
    cfg = compose("plan", [])
    return ThroughputTable.from_dict(dict(cfg.throughput))


def _tps(p) -> dict[str, int]:
    return {k: e.tp for k, e in p.engines.items()}


def _check_stage_fits_nodes(p, inv: Inventory) -> None:
    for stage in p.stages:
        assert len(stage.nodes) == inv.nodes
        for node in stage.nodes:
            assert sum(p.engines[k].tp for k in node) <= inv.gpus_per_node, stage
        assert stage.gpus == sum(p.engines[k].gpus for k in stage.engines)


# --------------------------------------------------------------------------- paper stage 1


PAPER_TP = {  # smallest power of two that holds weights + KV for 16 x 8192 tokens + 5 GiB/GPU
    "wizardlm_2_8x22b": 8,  # 262.6 GiB of bf16 weights: TP 4 offers 288 GiB, needs 310.6
    "qwen2_72b_instruct": 4,
    "gemma_2_27b_it": 2,
    "llama_3_1_70b_instruct": 4,
    "qwen1_5_110b_chat": 4,
}


def test_stage1_on_4x8_a100_is_all_resident(stage1):
    work, specs, _ = stage1
    inv = a100(4)
    p = placement.plan(work, specs, inv)
    assert p.mode == "resident"
    assert _tps(p) == PAPER_TP
    # the planner's choice agrees with the TP the model configs ship with
    assert all(e.tp == e.configured_tp for e in p.engines.values())
    (stage,) = p.stages
    assert stage.gpus == 22 and p.peak_gpus == 22
    assert "22 of 32 GPUs" in p.reason
    _check_stage_fits_nodes(p, inv)
    assert set(stage.engines) == set(PAPER_TP)
    for e in p.engines.values():
        assert e.need_gb <= e.capacity_gb
        assert e.sequences >= 16  # the KV room holds the 16 sequences asked for


def test_stage1_on_2x8_a100_runs_layer_one_in_waves(stage1):
    work, specs, _ = stage1
    inv = a100(2)
    p = placement.plan(work, specs, inv)
    # 22 GPUs do not fit 16, and neither does layer 1 alone (8 + 4 + 2 + 4 = 18): the four
    # proposers run in two waves, then the aggregator layer
    assert p.mode == "waves"
    assert "all engines at once need 22 GPUs" in p.reason
    assert "layer 1 needs 18 GPUs" in p.reason
    labels = [s.label for s in p.stages]
    assert labels == ["layer 1 wave 1/2", "layer 1 wave 2/2", "layer 2"]
    assert [s.gpus for s in p.stages] == [16, 2, 4]
    _check_stage_fits_nodes(p, inv)
    waves = [set(s.engines) for s in p.stages[:2]]
    assert waves[0] | waves[1] == set(PAPER_TP) - {"qwen1_5_110b_chat"}
    assert not waves[0] & waves[1]  # each proposer answers in exactly one wave
    assert p.stages[2].engines == ("qwen1_5_110b_chat",)
    assert p.loads_per_run == 5


def test_stage1_on_1x8_a100_plans_waves_or_refuses_layers(stage1):
    work, specs, _ = stage1
    inv = a100(1)
    p = placement.plan(work, specs, inv)
    assert p.mode == "waves"
    assert [s.gpus for s in p.stages] == [8, 8, 2, 4]
    assert p.stages[0].engines == ("wizardlm_2_8x22b",)  # TP 8 takes the whole node
    _check_stage_fits_nodes(p, inv)
    # strictly layer by layer, layer 1 cannot be resident on one node: refused with numbers
    with pytest.raises(ConfigError) as err:
        placement.plan(work, specs, inv, PlanSettings(strategy="layers"))
    msg = str(err.value)
    assert "layer 1 needs 18 GPUs" in msg
    assert "WizardLM-2-8x22B 8" in msg and "gemma-2-27b-it 2" in msg
    assert "1 node x 8 A100-80G" in msg and "= 8 GPUs" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="all engines at once need 22 GPUs"):
        placement.plan(work, specs, inv, PlanSettings(strategy="resident"))


def test_stage1_on_a100_40gb_refuses_wizardlm(stage1):
    work, specs, _ = stage1
    with pytest.raises(ConfigError) as err:
        placement.plan(work, specs, a100(4, memory_gb=40))
    msg = str(err.value)
    # 262.6 GiB of weights alone exceed 8 x 40 x 0.9 = 288 - 40 GiB of overhead
    assert msg.startswith("model WizardLM-2-8x22B does not fit one node")
    assert "weights 262.6" in msg and "288.0 GiB" in msg and "TP 8" in msg


def test_config_tp_too_small_is_refused_with_the_smallest_that_fits(stage1):
    _, specs, _ = stage1
    spec = replace(specs["qwen2_72b_instruct"], tensor_parallel_size=2)
    settings = PlanSettings(tensor_parallel="config")
    with pytest.raises(ConfigError) as err:
        placement.size_engine("qwen2_72b_instruct", spec, a100(1), settings)
    msg = str(err.value)
    assert "tensor_parallel_size 2 is too small" in msg
    assert "weights 135.4" in msg and "144.0 GiB" in msg  # 2 x 80 x 0.9
    assert msg.endswith("smallest TP that fits: 4")
    wide = replace(specs["qwen2_72b_instruct"], tensor_parallel_size=16)
    with pytest.raises(ConfigError, match="16 > 8 GPUs per node"):
        placement.size_engine("q", wide, a100(4), settings)


def test_auto_tp_divides_attention_heads(stage1):
    _, specs, _ = stage1
    # 48 heads (WizardLM) admit 1, 2, 4, 8; 9 heads (SmolLM2) only 1
    assert fit._tp_candidates(specs["wizardlm_2_8x22b"], 8) == [1, 2, 4, 8]
    odd = ModelSpec(name="odd", path="/m", num_attention_heads=9, num_key_value_heads=3)
    assert fit._tp_candidates(odd, 8) == [1]


def test_tp_mismatch_with_config_is_noted(stage1):
    work, specs, _ = stage1
    roomy = {**specs, "gemma_2_27b_it": replace(specs["gemma_2_27b_it"], tensor_parallel_size=4)}
    p = placement.plan(work, roomy, a100(4))
    assert p.engines["gemma_2_27b_it"].tp == 2
    assert any("planned at TP 2" in n and "set tensor_parallel_size: 2" in n for n in p.notes)


# --------------------------------------------------------------------------- paper stage 2


def test_stage2_loads_qwen2_once_for_all_its_roles(stage2):
    work, specs, _ = stage2
    p = placement.plan(work, specs, a100(4))
    assert p.mode == "resident"
    qwen = [k for k, e in p.engines.items() if e.name == "Qwen2-72B-Instruct"]
    assert qwen == ["qwen2_72b_instruct"]  # one engine, not one per role
    assert p.engines["qwen2_72b_instruct"].roles == ("criteria", "critic", "verdict")
    # sampler 1 + gemma 2 + llama-70b 4 + qwen2 4; a second Qwen2 engine would make it 15
    assert p.stages[0].gpus == 11
    assert any(
        n.startswith("Qwen2-72B-Instruct serves criteria, critic, verdict: one engine, loaded once")
        for n in p.notes
    )


def test_stage2_on_one_node_keeps_qwen2_loaded_across_neighbouring_stages(stage2):
    work, specs, _ = stage2
    p = placement.plan(work, specs, a100(1))
    assert p.mode == "waves"  # critiques need 2 + 4 + 4 = 10 GPUs
    labels = [s.label for s in p.stages]
    assert labels == ["sample", "criteria", "critiques wave 1/2", "critiques wave 2/2", "verdict"]
    # the first critique wave shares Qwen2 with the criteria stage, so it is not reloaded there
    assert "qwen2_72b_instruct" in p.stages[2].engines
    assert p.loads_per_run == 5
    assert any("loaded 2 times per run" in n for n in p.notes)


def test_prefs_workload_counts_the_paper_judge_calls(stage2):
    work, _, _ = stage2
    calls: dict[str, float] = {}
    for phase in work.phases:
        for step in phase.steps:
            for seat in step.seats:
                calls[seat.model] = calls.get(seat.model, 0) + seat.calls * phase.repeats
    # 5 candidates: 10 pairs x 2 orders = 20 comparisons, each 3 critiques + a verdict, and
    # one criteria call per pair, shared by its two orders
    assert calls == {
        "sampler": 5,
        "qwen2_72b_instruct": 50,  # 10 criteria + 20 critiques + 20 verdicts
        "gemma_2_27b_it": 20,
        "llama_3_1_70b_instruct": 20,
    }


@pytest.mark.parametrize("n", range(0, 10))
def test_comparison_rounds_match_the_ranking_plans(n):
    for name in ("round_robin", "knockout"):
        plan, rounds = make_plan(name, n), []
        while pairs := plan.next_pairs():
            rounds.append(len(pairs))
            plan.record([PairResult(i, j, min(i, j)) for i, j in pairs])
        assert comparison_rounds(name, n) == rounds, (name, n)
    assert comparison_rounds("knockout", 5) == [2, 2, 2]  # 6 comparisons, 3 rounds


def test_comparison_rounds_unknown_plan():
    with pytest.raises(ConfigError, match="unknown comparison plan 'swiss'"):
        comparison_rounds("swiss", 5)


# --------------------------------------------------------------------------- embedded default


def test_embedded_default_plans_on_cpu(compose, table):
    cfg = compose("plan", [])
    mix, specs, defaults = build.mixture(cfg.mixture)
    inv = Inventory.from_dict({**dict(cfg.inventory), "cpu_memory_gb": 24})
    assert inv.on_cpu and inv.cpu_kv_cache_gb == 1.0  # VLLM_CPU_KVCACHE_SPACE of cluster=local
    work = synth_workload("synth embedded", mix, defaults)
    p = placement.plan(work, specs, inv, PlanSettings(), Costing(table, 40))
    assert p.mode == "resident"
    assert set(p.engines) == {"smollm2_135m_instruct", "gemma_3_270m"}
    smol = p.engines["smollm2_135m_instruct"]
    assert smol.roles == ("L1 proposer", "L2 aggregator")
    assert smol.tp == 1 and smol.gpus == 0
    # 2 x 30 layers x 3 KV heads x 64 x 2 bytes = 23040 B/token; 2048 tokens = 45 MiB; 1 GiB
    # of CPU KV space holds 22.8 such sequences
    assert smol.sequences == pytest.approx(GIB / (23040 * 2048))
    est = p.estimate
    assert est.gpu_hours is None and est.allocated_gpu_hours is None
    # CPU engines share the cores: wall = sum of busy times (+ loads)
    busy = sum(c.busy_hours for c in est.engines)
    assert est.wall_hours == pytest.approx(busy + est.load_hours)
    # 40 rows: SmolLM2 proposes (160 tokens) and aggregates (160) -> 12,800 tokens at 150/s
    assert est.engines[0].output_tokens == 40 * 320
    assert est.engines[0].busy_hours == pytest.approx(40 * 320 / 150 / 3600)


def test_cpu_refusals():
    spec = ModelSpec(
        name="m",
        path="/m",
        params_b=0.135,
        max_model_len=65536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
    )
    inv = Inventory(cpu_kv_cache_gb=1.0, cpu_memory_gb=8)
    with pytest.raises(ConfigError, match=r"65536-token sequence needs 1.41 GiB .* get 1 GiB"):
        placement.size_engine("m", spec, inv, PlanSettings())
    with pytest.raises(ConfigError, match="tensor_parallel_size 2 needs GPUs"):
        placement.size_engine("m", replace(spec, tensor_parallel_size=2), inv, PlanSettings())
    big = replace(spec, params_b=8.0, max_model_len=2048)
    with pytest.raises(ConfigError, match=r"needs 16.9 GiB of RAM .* a node has 8.0 GiB"):
        placement.size_engine("m", big, inv, PlanSettings())


# --------------------------------------------------------------------------- memory arithmetic


def test_kv_cache_bytes_per_token(stage1):
    _, specs, _ = stage1
    # Qwen2-72B: 2 (K and V) x 80 layers x 8 KV heads x 128 x 2 bytes
    assert fit._kv_bytes_per_token(specs["qwen2_72b_instruct"], 4) == 2 * 80 * 8 * 128 * 2
    # one KV head replicated on each of 2 GPUs: twice the cache of TP 1
    gemma3 = ModelSpec(name="g", num_hidden_layers=18, num_key_value_heads=1, head_dim=256)
    assert fit._kv_bytes_per_token(gemma3, 2) == 2 * fit._kv_bytes_per_token(gemma3, 1)
    fp8 = replace(gemma3, engine_kwargs={"kv_cache_dtype": "fp8"})
    assert fit._kv_bytes_per_token(fp8, 1) == fit._kv_bytes_per_token(gemma3, 1) / 2
    assert fit._kv_bytes_per_token(ModelSpec(name="x"), 1) is None


def test_weights_follow_dtype_and_quantization():
    spec = ModelSpec(name="m", path="/m", params_b=10.0)
    inv, st = a100(1), PlanSettings()
    assert fit._size(spec, 1, inv, st)["weights_gb"] == pytest.approx(20e9 / GIB)
    awq = replace(spec, engine_kwargs={"quantization": "awq"})
    assert fit._size(awq, 1, inv, st)["weights_gb"] == pytest.approx(5e9 / GIB)
    with pytest.raises(ConfigError, match="quantization 'hqq' is unknown"):
        fit._size(replace(spec, engine_kwargs={"quantization": "hqq"}), 1, inv, st)


def test_overhead_default_matches_published_max_context(stage1):
    """Lambda's table: Mixtral-8x22B (WizardLM's architecture) on 4 x A100-80GB served 16k tokens
    of context but not 32k (vLLM v0.5.4, gpu_memory_utilization 0.9)."""
    _, specs, _ = stage1
    mixtral = replace(specs["wizardlm_2_8x22b"], params_b=140.6, tensor_parallel_size=4)
    one_seq = PlanSettings(tensor_parallel="config", concurrent_sequences=1)
    placement.size_engine("m", replace(mixtral, max_model_len=16384), a100(1), one_seq)
    with pytest.raises(ConfigError, match="too small"):
        placement.size_engine("m", replace(mixtral, max_model_len=32768), a100(1), one_seq)


def test_spec_validates_architecture_facts():
    ok = dict(name="m", path="/m", num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    spec_from_dict("m", ok).validate(check_files=False)
    with pytest.raises(ConfigError, match="tensor_parallel_size 3 must divide"):
        spec_from_dict("m", {**ok, "tensor_parallel_size": 3}).validate(check_files=False)
    with pytest.raises(ConfigError, match="num_key_value_heads 5 must divide"):
        spec_from_dict("m", {**ok, "num_key_value_heads": 5}).validate(check_files=False)
    with pytest.raises(ConfigError, match="head_dim must be a positive integer"):
        spec_from_dict("m", {**ok, "head_dim": 0}).validate(check_files=False)
    with pytest.raises(ConfigError, match="params_b must be > 0"):
        spec_from_dict("m", {**ok, "params_b": -1}).validate(check_files=False)


FACTS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")


def _model_file(path: Path) -> ModelSpec:
    from omegaconf import OmegaConf

    root = OmegaConf.create(
        {"models_dir": "/models", "cluster": {"accelerator_type": None}, "m": OmegaConf.load(path)}
    )
    return spec_from_dict(path.stem, OmegaConf.to_container(root, resolve=True)["m"])


@pytest.mark.parametrize(
    "path", sorted((REPO / "conf" / "model").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_model_config_has_planning_facts(path):
    spec = _model_file(path)
    spec.validate(check_files=False)
    assert spec.params_b
    assert all(getattr(spec, key) for key in FACTS), path.stem
    assert spec.head_dim in (64, 128, 256)


@pytest.mark.parametrize("stem", ["smollm2_135m_instruct", "gemma_3_270m"])
def test_packaged_model_facts_match_their_checkpoints(stem):
    """The packaged models' facts equal the config.json `moaa models prepare` writes."""
    spec = _model_file(REPO / "conf" / "model" / f"{stem}.yaml")
    root = Path(os.environ.get("MOAA_MODELS_DIR", "/tmp/moaa-models"))
    config = root / spec.name / "config.json"
    if not config.is_file():
        pytest.skip(f"{config} not prepared (moaa models prepare)")
    data = json.loads(config.read_text(encoding="utf-8"))
    assert {k: getattr(spec, k) for k in FACTS} == {k: data[k] for k in FACTS}


def test_fill_from_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512})
    )
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    spec = placement.fill_from_checkpoint(ModelSpec(name="sft", path=str(tmp_path)))
    assert (spec.num_hidden_layers, spec.num_attention_heads) == (4, 8)
    assert spec.head_dim == 64 and spec.num_key_value_heads == 8  # no GQA in the config
    assert spec.params_b == pytest.approx(0.001)  # 2 MB of bf16
    assert placement.fill_from_checkpoint(ModelSpec(name="x", path=str(tmp_path / "no"))).path
    # the checkpoint wins over facts written for another model; a configured params_b stays
    stale = ModelSpec(
        name="s", path=str(tmp_path), params_b=7.0, num_hidden_layers=30, head_dim=128
    )
    spec = placement.fill_from_checkpoint(stale)
    assert (spec.num_hidden_layers, spec.head_dim, spec.params_b) == (4, 64, 7.0)


# --------------------------------------------------------------------------- estimate


def _one_engine_workload(rows_tokens: float = 1000.0):
    seat = Seat("m", "proposer", calls=2.0, tokens_per_call=rows_tokens)
    return Workload("w", (Phase((Step("layer 1", (seat,)),)),))


def test_gpu_hours_arithmetic_resident():
    spec = ModelSpec(name="M", path="/m", params_b=20.0, max_model_len=1024)
    table = ThroughputTable("t", {}, measured={"m": {2: 500.0}})
    settings = PlanSettings(tensor_parallel="config", engine_start_s=100, load_gb_per_s=1)
    specs = {"m": replace(spec, tensor_parallel_size=2)}
    p = placement.plan(_one_engine_workload(), specs, a100(1), settings, Costing(table, 900))
    est = p.estimate
    # 900 rows x 2 calls x 1000 tokens = 1.8M tokens at 500 tokens/s = 3600 s busy
    (cost,) = est.engines
    assert cost.output_tokens == 1_800_000 and cost.calls == 1800
    assert cost.busy_hours == pytest.approx(1.0)
    load = 100 + 20e9 * 2 / GIB  # start + 37.25 GiB at 1 GiB/s
    assert est.load_hours == pytest.approx(load / 3600)
    assert est.wall_hours == pytest.approx(1.0 + load / 3600)
    assert est.gpu_hours == pytest.approx(2 * est.wall_hours)  # the engine holds 2 GPUs
    assert est.allocated_gpu_hours == pytest.approx(8 * est.wall_hours)  # the node has 8
    # 6 idle GPUs become 3 more replicas of the only engine: 4 x the throughput
    assert p.replica_hint == {"m": 4}
    assert p.replica_estimate.wall_hours == pytest.approx(0.25 + load / 3600)


def test_gpu_hours_arithmetic_layer_by_layer(stage1, table):
    work, specs, _ = stage1
    p = placement.plan(work, specs, a100(1), PlanSettings(), Costing(table, 1000))
    est = p.estimate
    tokens = 1000 * 2048
    busy = {c.key: tokens / c.tokens_per_s for c in est.engines}
    stages = [max(busy[k] for k in s.engines) for s in p.stages]
    loads = [
        max(120 + p.engines[k].weights_gb / 2 for k in s.engines) for s in p.stages
    ]  # every stage loads new engines on one node
    assert est.wall_hours == pytest.approx((sum(stages) + sum(loads)) / 3600)
    held = sum((b + ld) * s.gpus for b, ld, s in zip(stages, loads, p.stages, strict=True))
    assert est.gpu_hours == pytest.approx(held / 3600)
    assert est.allocated_gpu_hours == pytest.approx(est.wall_hours * 8)


def test_stage1_estimate_on_4x8_is_bounded_by_the_aggregator(stage1, table):
    work, specs, _ = stage1
    p = placement.plan(work, specs, a100(4), PlanSettings(), Costing(table, 10_000))
    est = p.estimate
    by = {c.key: c for c in est.engines}
    # Qwen1.5-110B at TP 4 takes the Mistral-Large-2407 (123B) figure: 642.03 tokens/s
    assert by["qwen1_5_110b_chat"].tokens_per_s == pytest.approx(642.03)
    assert "Mistral-Large-Instruct-2407" in by["qwen1_5_110b_chat"].source
    assert by["wizardlm_2_8x22b"].tokens_per_s == pytest.approx(946.22)  # Mixtral-8x22B, TP 8
    slowest = 10_000 * 2048 / 642.03 / 3600
    assert est.wall_hours - est.load_hours == pytest.approx(slowest)
    assert est.gpu_hours == pytest.approx(est.wall_hours * 22)


def test_throughput_lookup_order_and_tp_fallback(stage1):
    _, specs, _ = stage1
    spec = specs["qwen2_72b_instruct"]
    devices = {
        "A100-80G": {
            "models": {"Qwen2-72B-Instruct": {"tokens_per_s": {4: 1000.0}, "source": "lab"}},
            "classes": [{"max_params_b": 80, "proxy": "p", "tokens_per_s": {2: 600.0, 8: 1200}}],
        }
    }
    t = ThroughputTable("t", devices, measured={"qwen2_72b_instruct": {4: 1850}})
    assert t.lookup("A100-80G", "qwen2_72b_instruct", spec, 4) == Rate(1850, "measured")
    t = ThroughputTable("t", devices)
    assert t.lookup("A100-80G", "qwen2_72b_instruct", spec, 4) == Rate(1000, "lab")
    other = replace(spec, name="other")
    rate = t.lookup("A100-80G", "other", other, 4)  # between listed TPs: the lower figure
    assert rate.tokens_per_s == 600 and "TP 2 figure" in rate.source
    assert t.lookup("A100-80G", "other", other, 1).tokens_per_s == 300  # scaled down 1/2
    assert t.lookup("H100", "other", other, 4) is None
    assert t.lookup("A100-80G", "big", replace(other, params_b=400), 8) is None


def test_missing_throughput_figure_leaves_totals_out(stage1):
    work, specs, _ = stage1
    h100 = Inventory(nodes=4, gpus_per_node=8, gpu_memory_gb=80, accelerator="H100")
    table = ThroughputTable("empty", {})
    p = placement.plan(work, specs, h100, PlanSettings(), Costing(table, 10))
    assert p.estimate.wall_hours is None
    assert len(p.estimate.missing) == 5
    assert "no throughput figure" in format_plan(p)


# --------------------------------------------------------------------------- pre-flight check


def test_check_fits_uses_the_configs_tp_and_needs_everything_resident(stage1):
    _, specs, cfg = stage1
    from omegaconf import OmegaConf

    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    inv = placement.inventory_from_cluster(cluster)
    assert inv == a100(4)
    p = placement.check_fits(specs, inv)
    assert p.mode == "resident" and p.peak_gpus == 22
    with pytest.raises(ConfigError, match="all engines at once need 22 GPUs"):
        placement.check_fits(
            list(specs.values()), placement.inventory_from_cluster({**cluster, "nodes": 2})
        )
    assert placement.check_fits(specs, None) is None


def test_inventory_from_cluster_configs(compose):
    from omegaconf import OmegaConf

    local = OmegaConf.to_container(compose("plan", []).cluster, resolve=True)
    inv = placement.inventory_from_cluster(local)
    assert inv.on_cpu and inv.cpu_kv_cache_gb == 1.0 and inv.cpu_memory_gb is None
    remote = OmegaConf.to_container(compose("plan", ["cluster=ray_address"]).cluster, resolve=True)
    assert placement.inventory_from_cluster({**remote, "accelerator_type": "A100-80G"}) is None


def test_check_fits_tolerates_specs_without_planning_facts():
    bare = ModelSpec(name="old", path="/m")  # written before the planner existed
    p = placement.check_fits({"old": bare}, Inventory(cpu_kv_cache_gb=1))
    assert p.mode == "resident"
    assert any("weights not sized" in n for n in p.notes)
    with pytest.raises(ConfigError, match="params_b .* is needed"):
        placement.plan(_one_engine_workload(), {"m": bare}, Inventory())


def test_same_served_model_under_two_keys_is_one_engine(compose):
    cfg = compose("plan", [])
    judge, specs = build.judge(cfg.judge)
    specs["sampler"] = build.model_specs({"sampler": cfg.sampler})["sampler"]
    work = prefs_workload("prefs embedded", judge, "sampler", 5, 160)
    p = placement.plan(work, specs, Inventory(cpu_kv_cache_gb=1))
    assert set(p.engines) == {"sampler", "gemma_3_270m"}  # SmolLM2 is the sampler and a judge
    assert p.engines["sampler"].roles == ("sampler", "criteria", "critic", "verdict")


# --------------------------------------------------------------------------- CLI


def _moaa(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOAA_MODELS_DIR": os.environ.get("MOAA_MODELS_DIR", "/tmp/moaa-models")}
    return subprocess.run(
        [sys.executable, "-m", "moaa_cluster.cli", "plan", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_cli_plans_stage1_and_refuses_one_node_layer_by_layer():
    ok = _moaa("mixture=paper_stage1", "cluster=slurm_a100", "stages=[synth]", "format=json")
    assert ok.returncode == 0, ok.stderr
    (p,) = json.loads(ok.stdout)
    assert p["mode"] == "resident" and p["peak_gpus"] == 22
    assert {k: e["tp"] for k, e in p["engines"].items()} == PAPER_TP
    assert p["estimate"]["rows"] == 1000 and p["estimate"]["gpu_hours"] > 0

    table = _moaa(
        "mixture=paper_stage1", "cluster=slurm_a100", "stages=[synth]", "inventory.nodes=2"
    )
    assert table.returncode == 0, table.stderr
    assert (
        "placement: layer by layer, a step split into waves" in table.stdout
        and "layer 1 wave 1/2" in table.stdout
    )
    assert "GPU-hours" in table.stdout

    bad = _moaa(
        "mixture=paper_stage1",
        "cluster=slurm_a100",
        "stages=[synth]",
        "inventory.nodes=1",
        "settings.strategy=layers",
    )
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("moaa plan: error: synth paper_stage1: cannot place on 1 node")
    assert "layer 1 needs 18 GPUs" in lines[0]
    assert bad.stdout == ""
