"""The paper-style table over evaluation summaries: models down, protocols across."""

import json

from moaa_cluster.evaluation.table import build_table, format_table, write_table


def _pairwise(model: str, rate: float) -> dict:
    w = {"win_rate": rate, "ci_low": rate - 0.1, "ci_high": rate + 0.1}
    return {
        "model": model,
        "baseline": "base",
        "judge_name": "single:gemma",
        "evaluated": 8,
        "win_rate": w,
    }


def _protocol(model: str, name: str, value: float, unit: str, baseline: str | None) -> dict:
    metric = {"alpaca_eval2": "LC win rate", "arena_hard": "win rate (BT)", "mt_bench": "score"}
    h = {
        "protocol": name,
        "metric": metric[name],
        "unit": unit,
        "value": value,
        "low": value - 1,
        "high": value + 1,
    }
    return {
        "model": model,
        "baseline": baseline,
        "judge_name": "single:judge",
        "evaluated": 5,
        "protocol": {"headline": h},
    }


SUMMARIES = [
    _protocol("sft", "mt_bench", 5.25, "1-10", None),
    _protocol("dpo", "arena_hard", 61.0, "%", "gpt-4-0314"),
    _protocol("sft", "alpaca_eval2", 40.0, "%", "gpt4_turbo"),
    _pairwise("sft", 0.55),
    _pairwise("dpo", 0.6),
]


def test_models_are_rows_and_protocols_columns_in_the_papers_order():
    t = build_table(SUMMARIES)
    assert t["models"] == ["sft", "dpo"]
    assert t["columns"] == [
        "alpaca_eval2 vs gpt4_turbo",
        "arena_hard vs gpt-4-0314",
        "mt_bench",
        "pairwise vs base",
    ]
    assert t["cells"]["dpo"]["pairwise vs base"]["value"] == 60.0  # fraction -> percent
    text = format_table(t)
    assert "| sft | 40.0 [39.0, 41.0] | - | 5.25 [4.25, 6.25] | 55.0 [45.0, 65.0] |" in text
    assert "| dpo | - | 61.0 [60.0, 62.0] | - | 60.0 [50.0, 70.0] |" in text
    assert "mt_bench (score, 1-10)" in text and "not the benchmarks' GPT-4 judges" in text
    assert "pairwise vs base: single:gemma" in text
    # the baselines get a row each, 50% by definition in their own column
    assert t["baselines"] == {
        "gpt-4-0314": ["arena_hard vs gpt-4-0314"],
        "gpt4_turbo": ["alpaca_eval2 vs gpt4_turbo"],
        "base": ["pairwise vs base"],
    }
    assert "| base | - | - | - | 50.0 (the baseline) |" in text
    assert "| gpt4_turbo | 50.0 (the baseline) | - | - | - |" in text
    assert text.index("| base |") < text.index("| sft |")
    evaluated = build_table([_pairwise("base", 0.5), _pairwise("sft", 0.55)])
    assert evaluated["baselines"] == {}  # an evaluated baseline keeps its own row only


def test_write_table_reads_eval_run_directories_and_skips_others(tmp_path):
    for i, s in enumerate(SUMMARIES):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "summary.json").write_text(json.dumps(s))
    (tmp_path / "synth").mkdir()  # not an evaluation
    path = write_table(tmp_path, sorted(tmp_path.iterdir()))
    assert path.read_text().startswith("| model |")
    assert json.loads((tmp_path / "table.json").read_text())["models"] == ["sft", "dpo"]
    assert write_table(tmp_path, [tmp_path / "synth"]) is None
