"""Training configs -> settings, the effective-batch arithmetic, and training-data validation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moaa_cluster import build
from moaa_cluster.errors import ConfigError
from moaa_cluster.training import data as train_data
from moaa_cluster.training.settings import TrainSettings, grad_accumulation

CONF = Path(__file__).resolve().parents[3] / "conf"
TRAIN_FILES = sorted(p.stem for p in (CONF / "train").glob("*.yaml"))


def test_train_group_has_paper_and_embedded_recipes():
    assert {
        "sft_embedded",
        "dpo_embedded",
        "sft_paper_llama",
        "sft_paper_gemma",
        "dpo_paper_llama",
        "dpo_paper_gemma",
    } <= set(TRAIN_FILES)


@pytest.mark.parametrize("name", TRAIN_FILES)
@pytest.mark.parametrize("lora", [None, "r16"])
def test_every_train_config_builds(compose, name, lora):
    task = "train_sft" if name.startswith("sft") else "train_dpo"
    overrides = [f"train={name}", "models_dir=/models"]
    if lora:
        overrides.append(f"lora={lora}")
    cfg = compose(task, overrides)
    settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
    assert settings.kind == name.split("_")[0]
    assert settings.base_model == "/models/smollm2-135m-instruct"
    assert (settings.lora is not None) == bool(lora)
    scaling = build.train_scaling(cfg.cluster)
    assert scaling.num_workers == 1 and not scaling.use_gpu


@pytest.mark.parametrize(
    ("name", "lr", "epochs"),
    [
        ("sft_paper_llama", 8.0e-6, 6),
        ("sft_paper_gemma", 8.0e-6, 5),
        ("dpo_paper_llama", 8.0e-7, 5),
        ("dpo_paper_gemma", 3.0e-7, 5),
    ],
)
def test_paper_hyper_parameters(compose, name, lr, epochs):
    task = "train_sft" if name.startswith("sft") else "train_dpo"
    cfg = compose(task, [f"train={name}", "cluster=slurm_a100", "models_dir=/m"])
    settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
    assert settings.args["learning_rate"] == lr
    assert settings.args["num_train_epochs"] == epochs
    assert settings.effective_batch_size == 128
    if settings.kind == "dpo":
        assert settings.args["beta"] == 0.01
    else:
        assert settings.args["packing"] is True
    scaling = build.train_scaling(cfg.cluster)
    assert scaling.use_gpu and scaling.num_workers == 8
    # the paper's effective batch on one 8-GPU node
    assert grad_accumulation(128, settings.per_device_batch_size, scaling.num_workers) == 8


def test_sft_lr_conflict_is_documented_in_the_config():
    text = (CONF / "train" / "sft_paper_llama.yaml").read_text()
    assert "8.0e-6" in text and "8.0e-7" in text


def test_grad_accumulation():
    assert grad_accumulation(None, 4, 2) == 1
    assert grad_accumulation(128, 2, 8) == 8
    assert grad_accumulation(128, 4, 1) == 32
    with pytest.raises(ConfigError, match="not a multiple"):
        grad_accumulation(100, 8, 2)


def test_settings_refuse_owned_args_and_bad_kind():
    with pytest.raises(ConfigError, match="output_dir"):
        TrainSettings(kind="sft", base_model="/m", data_file="", args={"output_dir": "/x"})
    with pytest.raises(ConfigError, match="sft or dpo"):
        TrainSettings(kind="ppo", base_model="/m", data_file="")


def test_unknown_train_key_is_refused(compose):
    cfg = compose("train_sft", ["models_dir=/m", "+train.bogus=1"])
    with pytest.raises(ConfigError, match="bogus"):
        build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_data_validation_records_rejects(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    rows, rejects = train_data.prepare(
        "sft",
        _jsonl(
            tmp_path / "d.jsonl",
            [
                good,
                {"messages": [{"role": "user", "content": "no answer"}]},
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": " "},
                    ]
                },
                {"messages": [{"role": "bot", "content": "x"}]},
                {"messages": []},
            ],
        ),
    )
    assert rows == [good]
    reasons = [r["reason"] for r in rejects]
    assert [r["index"] for r in rejects] == [1, 2, 3, 4]
    assert "end with an assistant" in reasons[0]
    assert "empty content" in reasons[1]
    assert "role" in reasons[2]
    assert "non-empty" in reasons[3]


def test_sft_data_from_a_synth_run_directory(tmp_path):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pq.write_table(
        pa.Table.from_pylist([{"id": "1", "messages": msgs, "calls": 3}]), tmp_path / "sft.parquet"
    )
    rows, rejects = train_data.prepare("sft", tmp_path)
    assert rows == [{"messages": msgs}] and rejects == []
    with pytest.raises(ConfigError, match="prefs.parquet"):
        train_data.prepare("dpo", tmp_path)


def test_dpo_data_accepts_trl_strings_and_messages(tmp_path):
    user = [{"role": "user", "content": "q"}]
    rows, rejects = train_data.prepare(
        "dpo",
        _jsonl(
            tmp_path / "p.jsonl",
            [
                {"prompt": "q", "chosen": "good", "rejected": "bad"},
                {
                    "prompt": user,
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}],
                },
                {"prompt": user, "chosen": "same", "rejected": "same"},
                {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            ],
        ),
    )
    assert len(rows) == 2
    assert rows[0]["prompt"] == user and rows[0]["chosen"][0]["role"] == "assistant"
    assert [r["reason"] for r in rejects] == [
        "chosen and rejected are identical",
        "prompt must end with a user message",
    ]


def test_data_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        train_data.prepare("sft", tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="missing"):
        train_data.prepare("dpo", _jsonl(tmp_path / "x.jsonl", [{"messages": []}]))
    with pytest.raises(ConfigError, match="no usable"):
        train_data.prepare("sft", _jsonl(tmp_path / "y.jsonl", [{"messages": []}]))


def test_training_data_bad_lines_are_rejects_not_crashes(tmp_path):
    """Issue #13: a malformed line used to raise and kill training."""
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    line = json.dumps(good).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"3\n"  # 0: not an object (first: no longer a file-level error)
        + b"\xef\xbb\xbf"
        + line
        + b"\r\n"  # 1: BOM + CRLF: fine
        + b'{"messages": [\n'  # 2: malformed JSON
        + b"\n"  # blank: not a record
        + b'{"messages": "\xff"}\n'  # 3: invalid UTF-8
        + b'{"messages": [{"role": ["user"], "content": "x"}]}\n'  # 4: unhashable role
        + b'{"id": "s", "messages": [{"role": "user", "content": "\\ud800"}]}\n'  # 5
        + line
        + b"\n"  # 6: fine
    )
    rows, rejects = train_data.prepare("sft", path)
    assert rows == [good, good]
    assert [(r["index"], r["where"]) for r in rejects] == [
        (0, "d.jsonl:1"),
        (2, "d.jsonl:3"),
        (3, "d.jsonl:5"),
        (4, "d.jsonl:6"),
        (5, "d.jsonl:7"),
    ]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "record is not an object"
    assert reasons[1].startswith("malformed JSON")
    assert reasons[2] == "invalid UTF-8 at byte 14"
    assert "needs a role" in reasons[3]
    assert reasons[4] == "unencodable text (lone surrogate U+D800) in messages[0].content at char 0"
    assert rejects[4]["id"] == "s", "the id of a parsed record is kept"
    train_data.write(rows, tmp_path / "train_data.parquet")
    assert pq.read_table(tmp_path / "train_data.parquet").to_pylist() == rows


def test_training_data_unexpected_error_rejects_only_its_record(tmp_path, monkeypatch):
    real = train_data._sft_row

    def flaky(rec):
        if rec.get("id") == "boom":
            raise KeyError("bug")
        return real(rec)

    monkeypatch.setattr(train_data, "_sft_row", flaky)
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows, rejects = train_data.prepare(
        "sft", _jsonl(tmp_path / "d.jsonl", [{**good, "id": "boom"}, good])
    )
    assert rows == [good]
    assert rejects == [
        {"index": 0, "where": "d.jsonl:1", "id": "boom", "reason": "KeyError: 'bug'"}
    ]


def test_training_data_json_parquet_and_unreadable_files(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    as_json = tmp_path / "d.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([good, {"messages": 1}]).encode())
    rows, rejects = train_data.prepare("sft", as_json)
    assert rows == [good] and [r["where"] for r in rejects] == ["d.json[1]"]
    broken = tmp_path / "e.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="e.parquet"):
        train_data.prepare("sft", broken)


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("ablation_single", "/runs/s/ablations/single-gemma-3-270m.parquet"),
        ("ablation_combined", "/runs/s/ablations/combined.parquet"),
        ("ablation_random", "/runs/s/ablations/random-seed0.parquet"),
    ],
)
def test_ablation_experiments_point_sft_at_derived_data(compose, experiment, expected):
    cfg = compose("train_sft", ["models_dir=/m", f"+experiment={experiment}", "synth_run=/runs/s"])
    assert cfg.data == expected
    assert cfg.train.name == "sft_embedded" and cfg.run_name.startswith("train-sft-")


def test_self_improvement_trains_the_small_mixtures_strongest_model(compose):
    cfg = compose("pipeline", ["models_dir=/m", "+experiment=self_improvement"])
    parts = build.pipeline(cfg)
    assert cfg.mixture.name == "paper_small_scale"
    aggregator = parts.mixture.layers[-1][0].model
    assert parts.base.name == cfg.mixture.models[aggregator].name  # the teacher-in-chief
    assert parts.sft_settings.args["num_train_epochs"] == 5  # the paper's Gemma SFT
    # Table 4 is SFT only: no stage 2, so no larger model supervises the data
    assert parts.stages == ("synth", "sft", "eval")
    assert parts.synth_specs.keys() == {
        "gemma_2_9b_it",
        "llama_3_1_8b_instruct",
        "mistral_7b_instruct_v0_3",
    }


def test_self_improvement_dpo_adds_the_papers_stage_2(compose):
    cfg = compose("pipeline", ["models_dir=/m", "+experiment=self_improvement_dpo"])
    parts = build.pipeline(cfg)
    assert parts.stages == ("synth", "sft", "prefs", "dpo", "eval")
    assert parts.dpo_settings.args["learning_rate"] == 3.0e-7  # the paper's Gemma DPO
    assert parts.prefs_limit is None  # every instruction of ultrafeedback_6k
