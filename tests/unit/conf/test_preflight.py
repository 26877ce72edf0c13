"""The pipeline checks every stage's engines against the cluster before anything starts."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from moaa_cluster import build
from moaa_cluster.end_to_end import preflight, trained_spec
from moaa_cluster.errors import ConfigError
from moaa_cluster.pipeline.prefs import SAMPLER
from tests.unit.training.test_recipes import bf16_capable_gpu

CONF = Path(__file__).resolve().parents[3] / "conf"
PAPER_1X8 = ["cluster=slurm_a100", "cluster.nodes=1", "mixture=paper_stage1", "judge=paper_stage2"]


def _check(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="pipeline", overrides=overrides)
    parts = build.pipeline(cfg)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    sft = trained_spec(parts.base, Path(os.devnull) / "sft", "sft")
    dpo = trained_spec(parts.base, Path(os.devnull) / "dpo", "dpo")
    preflight(
        parts,
        cluster,
        {**parts.judge_specs, SAMPLER: sft},
        {**parts.judge_specs, "model": dpo, "baseline": parts.base},
    )


def test_embedded_pipeline_fits_the_local_machine():
    _check(["cluster=local"])


def test_paper_models_on_one_node_are_refused_at_the_judge_stage():
    # stage 1 can go layer by layer on 1x8; the stage-2 judge's three engines need 10 GPUs
    with pytest.raises(ConfigError, match=r"pipeline stage prefs: .* = 8 GPUs: .* need 11 GPUs"):
        _check(PAPER_1X8)


def test_resident_stage1_on_one_node_is_refused_with_the_numbers():
    with pytest.raises(ConfigError, match=r"need 22 GPUs \(WizardLM-2-8x22B 8"):
        _check([*PAPER_1X8, "synth.execution=resident"])


def test_a_model_too_big_for_the_gpus_is_refused_even_layer_by_layer():
    with pytest.raises(ConfigError, match="WizardLM-2-8x22B: tensor_parallel_size 8 is too small"):
        _check([*PAPER_1X8, "cluster.gpu_memory_gb=40"])


# --------------------------------------------------------------------------- every config in conf/
#
# Each file in conf/ documents how it is used in its header: `# moaa <task> <overrides>`.
# Those commands are the test cases. Each is composed as the CLI would compose it, its objects
# are built through moaa_cluster.build, and it goes through the pre-flight checks its task runs
# before Ray or any engine starts (the placement planner against the cluster the command
# names; the real TRL config for training). A new file is picked up by the glob; a file whose
# header names no command fails `test_every_config_is_exercised` until it does. Model files
# carry no command: each model's engine is checked alone with `moaa sample`.

ALL_YAML = sorted(CONF.rglob("*.yaml"))
TASK_CONFIGS = {
    "synth": "synth",
    "sample": "sample",
    "prefs": "prefs",
    "judge-eval": "judge_eval",
    "eval": "eval",
    "plan": "plan",
    "train-sft": "train_sft",
    "train-dpo": "train_dpo",
    "pipeline": "pipeline",
}
NO_CONFIG_TASKS = {"derive", "models", "report"}  # moaa commands that compose no Hydra config
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}
PLACEHOLDER = "PLACEHOLDER"
_OVERRIDE = re.compile(r"^[+~]{0,2}[\w.@/-]+(=.*)?$")


@dataclass(frozen=True)
class Command:
    """One `moaa <task> ...` line of a config's header."""

    where: str  # conf-relative file and line
    task: str
    overrides: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.where} moaa {self.task} {' '.join(self.overrides)}".strip()


def _header(path: Path) -> list[tuple[int, str]]:
    """The header comment's lines (numbered from 1), continuation backslashes joined."""
    out: list[tuple[int, str]] = []
    joining = False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        cont = text.endswith("\\")
        text = text.rstrip("\\").strip()
        if joining:
            out[-1] = (out[-1][0], f"{out[-1][1]} {text}")
        else:
            out.append((i, text))
        joining = cont
    return out


def _override(token: str) -> str | None:
    """An override with its `<placeholder>` filled in, or None to drop it.

    A placeholder path becomes a dummy path (nothing here reads it); a placeholder for a
    config group choice (`dataset@eval_data=<your held-out set>`) is dropped, leaving the
    default: there is no dummy config to choose.
    """
    key, _, value = token.partition("=")
    if PLACEHOLDER not in value and value != "...":
        return token
    group = key.lstrip("+~/").split("@")[0]
    if "." not in key and group in GROUPS:
        return None
    value = "placeholder" if value == "..." else value.replace(PLACEHOLDER, "placeholder")
    return f"{key}={value}"


def _words(text: str) -> list[str]:
    """Whitespace-separated words, keeping a bracketed value (`{4: 1850}`) in one word."""
    words: list[str] = []
    depth = 0
    for word in text.split():
        if depth > 0:
            words[-1] += f" {word}"
        else:
            words.append(word)
        depth += word.count("{") + word.count("[") - word.count("}") - word.count("]")
    return words


def header_commands(path: Path) -> list[Command]:
    """The `moaa <task> ...` commands of a config's header, one per sweep point.

    A command's overrides end at the first word that is not an override (the description
    that follows it); `|` separates two commands on a line; `...` stands for the previous
    command's overrides; `--from X` is `from_stage=X`; `-m` sweeps comma lists.
    """
    commands: list[Command] = []
    previous: dict[str, list[str]] = {}
    rel = path.relative_to(CONF)
    for lineno, text in _header(path):
        for segment in re.sub(r"<[^>]*>", PLACEHOLDER, text).split("|"):
            words = _words(segment)
            if len(words) < 2 or words[0] != "moaa" or words[1] in NO_CONFIG_TASKS:
                continue
            task, rest = words[1], words[2:]
            assert task in TASK_CONFIGS, f"{rel}:{lineno}: unknown task `moaa {task}`"
            overrides: list[str] = []
            sweep = False
            i = 0
            while i < len(rest):
                word = rest[i]
                if word == "-m":
                    sweep = True
                elif word == "...":
                    overrides += previous.get(task, [])
                elif word == "--from" and i + 1 < len(rest):
                    overrides.append(f"from_stage={rest[i + 1]}")
                    i += 1
                elif _OVERRIDE.match(word) and ("=" in word or word.startswith("~")):
                    filled = _override(word)
                    if filled is not None:
                        overrides.append(filled)
                else:
                    break  # the command's description
                i += 1
            previous[task] = overrides
            points = [overrides]
            if sweep:  # Hydra's basic sweeper: the cartesian product of comma lists
                points = [
                    list(p)
                    for p in itertools.product(
                        *[
                            [f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")]
                            if "=" in o and "," in o and "[" not in o
                            else [o]
                            for o in overrides
                        ]
                    )
                ]
            commands += [Command(f"{rel}:{lineno}", task, tuple(p)) for p in points]
    return commands


def model_command(path: Path) -> Command:
    """A model file's engine alone (`moaa sample`), on the cluster it is meant for: this
    machine for a packaged model, the paper's 8 x A100 nodes for the others."""
    from moaa_cluster.models.store import PACKAGED

    name = OmegaConf.load(path).get("name")
    cluster = "local" if name in PACKAGED else "slurm_a100"
    overrides = (f"model@sampler={path.stem}", f"cluster={cluster}")
    return Command(f"{path.relative_to(CONF)} (model alone)", "sample", overrides)


def all_commands() -> list[Command]:
    out: list[Command] = []
    for path in ALL_YAML:
        found = header_commands(path)
        if not found and path.parent.name == "model":
            found = [model_command(path)]
        out += found
    return out


COMMANDS = all_commands()


def _compose(command: Command):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name=TASK_CONFIGS[command.task],
            overrides=list(command.overrides),
            return_hydra_config=True,
        )


@functools.cache
def _composed(command: Command) -> tuple:
    """``(cfg, choices)`` of a command, or ``(None, exception)`` when it does not compose."""
    try:
        cfg = _compose(command)
    except Exception as exc:  # reported by the test of that command
        return None, exc
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def _trl_configs(settings_list, scaling) -> list:
    """The TRL configs the training workers would build on this cluster (see
    test_train_recipes: the bf16 probe answers as the cluster's GPUs would)."""
    from moaa_cluster.training import dpo, sft

    out = []
    with bf16_capable_gpu(scaling.use_gpu):
        for settings in settings_list:
            recipe = {"sft": sft, "dpo": dpo}[settings.kind]
            out.append(
                recipe.trl_config(
                    settings,
                    os.devnull,
                    world_size=scaling.num_workers,
                    use_cpu=not scaling.use_gpu,
                )
            )
    return out


def _validated(specs) -> list:
    specs = list(specs.values() if isinstance(specs, dict) else specs)
    for spec in specs:
        spec.validate(check_files=False)  # weights of the paper models are not on this machine
    return specs


def preflight_task(config_name: str, cfg) -> str:
    """Builds a composed task config's objects and runs the checks its task runs before
    anything starts. Returns what the check decided; raises ConfigError on a refusal."""
    from moaa_cluster import end_to_end, rehearsal
    from moaa_cluster.engines import host as engine_host
    from moaa_cluster.pipeline.layered import plan_passes

    if cfg.get("rehearsal"):  # as the CLI does first (cli._guarded)
        cfg = OmegaConf.create(
            rehearsal.rehearse(
                OmegaConf.to_container(cfg, resolve=True), rehearsal.load_local_cluster(CONF)
            )
        )
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)

    if config_name == "synth":
        mix, specs, defaults = build.mixture(cfg.mixture)
        _validated(specs)
        build.sources(cfg.dataset)
        settings = build.synth_settings(cfg, defaults)
        capacity = engine_host.preflight_capacity(cluster, specs)
        passes = plan_passes(mix, capacity, settings.execution, max_turns=1)
        return "resident" if passes is None else f"{len(passes)} passes"

    if config_name in ("sample", "prefs"):
        _, specs = (None, {}) if config_name == "sample" else build.judge(cfg.judge)
        specs[SAMPLER] = build.model_specs({SAMPLER: cfg.sampler})[SAMPLER]
        build.sources(cfg.dataset)
        build.prefs_settings(cfg)
        engine_host.preflight(cluster, _validated(specs))
        return "resident"

    if config_name == "judge_eval":
        _, specs = build.judge(cfg.judge)
        engine_host.preflight(cluster, _validated(specs))
        return "resident"

    if config_name == "eval":
        from moaa_cluster.evaluation.answers import question_sources
        from moaa_cluster.pipeline.evaluate import BASELINE, MODEL, _check_models

        if OmegaConf.is_missing(cfg, "questions"):
            raise ConfigError("questions=<file> is required")  # as `moaa eval` refuses
        _, specs = build.eval_judge(cfg)
        question_sources(OmegaConf.to_container(cfg, resolve=True)["questions"])
        specs = {MODEL: build.model_specs({"model": cfg.model})["model"], **specs}
        if cfg.get("baseline_model") is not None:
            specs[BASELINE] = build.model_specs({"b": cfg.baseline_model})["b"]
        build.eval_settings(cfg)
        _check_models(specs)
        engine_host.preflight(cluster, _validated(specs))
        return "resident"

    if config_name in ("train_sft", "train_dpo"):
        settings = build.train_settings(cfg.train, cfg.base, cfg.get("lora"), cfg.seed)
        assert settings.kind == config_name.split("_")[1], "train-sft/-dpo runs its own kind"
        _trl_configs([settings], build.train_scaling(cfg.cluster))
        return "trl config"

    if config_name == "pipeline":
        parts = build.pipeline(cfg)
        _validated({**parts.synth_specs, **parts.judge_specs, "base": parts.base})
        stages = end_to_end.check_stages(parts.stages)
        # the engines each stage starts, as run_pipeline computes them
        sft = end_to_end.trained_spec(parts.base, Path(os.devnull) / "sft", "sft")
        dpo = end_to_end.trained_spec(parts.base, Path(os.devnull) / "dpo", "dpo")
        final = dpo if "dpo" in stages else sft
        prefs_specs = {**parts.judge_specs, SAMPLER: sft} if "prefs" in stages else None
        eval_specs = {**parts.judge_specs, "model": final, "baseline": parts.base}
        end_to_end.preflight(parts, cluster, prefs_specs, eval_specs)
        trained = [parts.sft_settings] + ([parts.dpo_settings] if "dpo" in stages else [])
        _trl_configs(trained, parts.scaling)
        return "checked"

    if config_name == "plan":
        from moaa_cluster.cli import tasks

        with contextlib.redirect_stdout(io.StringIO()) as out:
            tasks.plan_task(cfg)  # the planner itself refuses what cannot fit
        assert out.getvalue().strip(), "moaa plan printed no plan"
        return "planned"

    raise AssertionError(f"no pre-flight for config {config_name}")


# Header commands known not to compose (xfail, strict: once the header is fixed the entry
# must go), by command id, with what is wrong. Not this test's files to fix.
KNOWN_BROKEN: dict[str, str] = {}


def _engine_task(command: Command) -> bool:
    return command.task not in ("train-sft", "train-dpo")  # training starts no vLLM engine


def _gpu_target(command: Command) -> bool:
    """A command for a GPU cluster (not a rehearsal, which always runs on this machine)."""
    cfg, _ = _composed(command)
    return (
        cfg is not None
        and cfg.cluster.get("accelerator_type") is not None
        and not cfg.get("rehearsal")
    )


def _with(command: Command, *overrides: str) -> Command:
    keys = {o.split("=", 1)[0] for o in overrides}
    kept = tuple(o for o in command.overrides if o.split("=", 1)[0] not in keys)
    return Command(command.where, command.task, kept + overrides)


def test_header_commands_are_found():
    # guards the parser: an empty or garbled list would test nothing
    by_where = {}
    for c in COMMANDS:
        by_where.setdefault(c.where, []).append(c.overrides)
    assert by_where["mixture/paper_stage1.yaml:1"] == [
        ("mixture=paper_stage1", "cluster=slurm_a100", "dataset=ultrafeedback+ultrachat_5k")
    ]
    # continuation lines joined; a group choice left as a placeholder dropped
    (pipeline,) = by_where["pipeline.yaml:4"]
    assert "cluster=slurm_a100" in pipeline and "train@train_dpo=dpo_paper_gemma" in pipeline
    assert not any(o.startswith("dataset@eval_data=") for o in pipeline)
    # a placeholder path filled in; the description after the command left out
    assert by_where["train/dpo_paper_gemma.yaml:1"][0][-2:] == (
        "cluster=slurm_a100",
        "data=placeholder",
    )
    # -m: one command per sweep point; --from; a bracketed value kept whole
    assert by_where["synth.yaml:3"] == [
        ("mixture=embedded",),
        ("mixture=embedded_single_proposer",),
    ]
    assert by_where["pipeline.yaml:3"] == [("from_stage=dpo",)]
    assert ("throughput=vllm_published", "+measured.qwen2_72b_instruct={4: 1850}") in by_where[
        "throughput/vllm_published.yaml:6"
    ]
    # `...`: the previous command's overrides
    assert by_where["eval.yaml:3"][0][:-1] == by_where["eval.yaml:2"][0]
    # model files have no command: each gets its engine alone
    models = [w for w in by_where if w.startswith("model/")]
    assert len(models) == len(list((CONF / "model").glob("*.yaml")))


def test_every_config_is_exercised():
    """Every file in conf/ is selected by at least one command that composes."""
    used: set[Path] = set()
    for command in COMMANDS:
        cfg, choices = _composed(command)
        if cfg is None:
            continue
        used.add(CONF / f"{TASK_CONFIGS[command.task]}.yaml")
        for key, value in choices.items():
            if value is not None and not key.startswith("hydra/"):
                used.add(CONF / key.split("@")[0].lstrip("/") / f"{value}.yaml")
    missing = [str(p.relative_to(CONF)) for p in ALL_YAML if p not in used]
    assert not missing, (
        f"{missing}: no `# moaa <task> ...` command in any header selects these; add one to "
        "the file's header (it is how users and this test learn how the file is used)"
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            c,
            id=c.id,
            marks=[
                pytest.mark.xfail(
                    strict=True, raises=ConfigCompositionException, reason=KNOWN_BROKEN[c.id]
                )
            ]
            if c.id in KNOWN_BROKEN
            else [],
        )
        for c in COMMANDS
    ],
)
def test_config_command_passes_its_preflight(command):
    """The command as documented composes, builds, and fits the cluster it names."""
    cfg, composed = _composed(command)
    if cfg is None:
        raise composed
    assert preflight_task(TASK_CONFIGS[command.task], cfg)


# A GPU config run on this machine by mistake (cluster=local) must be refused before Ray
# starts, naming a model and why: its tensor-parallel size needs GPUs, or its context's KV
# cache exceeds what a CPU engine reserves.
CPU_REFUSAL = (
    r"model [\w.-]+: (tensor_parallel_size \d+ needs GPUs|"
    r"a \d+-token sequence needs [\d.]+ GiB of KV cache but CPU engines get)"
)
# Not refused on cluster=local: TP 1, and an 8,192-token KV cache of 1 GiB (GQA, 8 KV heads)
# fits VLLM_CPU_KVCACHE_SPACE=1. The planner checks no RAM there (cluster=local sets no
# cpu_memory_gb), so ~15 GiB of bf16 weights on this machine are not refused up front.
FITS_A_CPU_ENGINE = {
    "model/llama_3_1_8b_instruct.yaml (model alone)",
    "model/mistral_7b_instruct_v0_3.yaml (model alone)",
    "model/skywork_reward_llama_3_1_8b.yaml (model alone)",  # an 8B Llama, as above
}
GPU_ENGINE_COMMANDS = [c for c in COMMANDS if _engine_task(c) and _gpu_target(c)]


@pytest.mark.parametrize("command", GPU_ENGINE_COMMANDS, ids=lambda c: c.id)
def test_gpu_configs_are_refused_on_this_machine(command):
    local = _with(command, "cluster=local")
    cfg, composed = _composed(local)
    if cfg is None:
        raise composed
    if command.where in FITS_A_CPU_ENGINE:
        assert preflight_task(TASK_CONFIGS[command.task], cfg) == "resident"
        return
    with pytest.raises(ConfigError, match=CPU_REFUSAL):
        preflight_task(TASK_CONFIGS[command.task], cfg)


def test_gpu_engine_commands_are_found():
    wheres = {c.where for c in GPU_ENGINE_COMMANDS}
    assert {"mixture/paper_stage1.yaml:1", "judge/paper_stage2.yaml:1", "pipeline.yaml:4"} <= wheres


# On one 8 x A100 node (cluster.nodes=1) instead of the configured four: stage 1 goes layer by
# layer; the stage-2 judge's engines must be resident together and need more than 8 GPUs.
STAGE2_ON_ONE_NODE = r"8 GPUs: all engines at once need 11 GPUs \(gemma-2-27b-it 2, Llama-3.1-70B"
ONE_NODE = {
    "mixture/paper_stage1.yaml:1": ("decides", r"\d+ passes"),
    "synth.yaml:2": ("decides", r"\d+ passes"),
    "mixture/paper_small_scale.yaml:1": ("decides", "resident"),
    "judge/paper_stage2.yaml:1": ("refused", STAGE2_ON_ONE_NODE),
    "prefs.yaml:3": ("refused", STAGE2_ON_ONE_NODE),
    "pipeline.yaml:4": ("refused", "pipeline stage prefs: .*" + STAGE2_ON_ONE_NODE),
}


@pytest.mark.parametrize("where", sorted(ONE_NODE))
def test_paper_configs_on_one_node(where):
    (command,) = [c for c in COMMANDS if c.where == where]
    one_node = _with(command, "cluster=slurm_a100", "cluster.nodes=1")
    cfg, composed = _composed(one_node)
    if cfg is None:
        raise composed
    outcome, expected = ONE_NODE[where]
    if outcome == "refused":
        with pytest.raises(ConfigError, match=expected):
            preflight_task(TASK_CONFIGS[command.task], cfg)
    else:
        assert re.fullmatch(expected, preflight_task(TASK_CONFIGS[command.task], cfg))
