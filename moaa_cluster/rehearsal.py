"""Rehearsal: run any config at its real shape on this machine, packaged models standing in.

``moaa <task> ... rehearsal=true`` rewrites the resolved config before anything is built, so
a rehearsal goes through exactly the code a cluster run goes through. What changes:

* every model of the config (any mapping with ``name``, ``max_model_len`` and one of
  ``path``, ``hub_id`` or ``base_url``) is answered by one engine of the packaged
  ``stand_in`` model; the model keeps its name in every output;
* that engine runs on CPU (tensor parallel 1, no accelerator) with a context as long as the
  longest one configured, capped at what the stand-in's weights support;
* the cluster becomes this machine's (``conf/cluster/local.yaml``); the configured one is
  recorded;
* ``output_dir`` gets a ``-rehearsal`` suffix, so a rehearsal never resumes a real run;
* ``max_tokens`` everywhere is multiplied by ``rehearsal_scale`` (1.0: as configured).

What stays: seat names, layers, sampling, each model's ``max_model_len`` (the context budget
is planned with it), ``system_role`` (a model whose real template has no system role is
rehearsed that way when its config says ``system_role: fold``), the judge plan, dataset
readers and limits, training recipes, and the output files. The run's manifests carry the
record this module writes under ``rehearsal``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from moaa_cluster.errors import ConfigError

SUFFIX = "-rehearsal"
# keys of a model mapping the stand-in's engine decides; the rest (name, max_model_len,
# system_role, ...) stay as configured
ENGINE_KEYS = (
    "path",
    "dtype",
    "chat_template",
    "cpus_per_replica",
)
CLEARED = {
    "hub_id": None,
    "revision": None,
    "base_url": None,
    "api_key_env": None,
    "served_name": None,
    "backend": "vllm",
    "tensor_parallel_size": 1,
    "replicas": 1,
    "accelerator_type": None,
    "trust_remote_code": False,
    # planning facts come from the stand-in's checkpoint (planner.fill_from_checkpoint)
    "params_b": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "num_key_value_heads": None,
    "head_dim": None,
}


def is_model(node: object) -> bool:
    """Whether a config mapping describes a model (``conf/model/*.yaml``)."""
    return (
        isinstance(node, dict)
        and "name" in node
        and "max_model_len" in node
        and any(k in node for k in ("path", "hub_id", "base_url"))
    )


def find_models(cfg: dict, skip: tuple[str, ...] = ("stand_in",)) -> list[tuple[tuple, dict]]:
    """Every model mapping in ``cfg`` with its key path (``("mixture", "models", "x")``)."""
    found: list[tuple[tuple, dict]] = []

    def walk(node: object, where: tuple) -> None:
        if is_model(node):
            found.append((where, node))
            return
        if isinstance(node, dict):
            for k, v in node.items():
                if not (where == () and k in skip):
                    walk(v, (*where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*where, i))

    walk(cfg, ())
    return found


def context_capacity(stand_in: dict) -> int:
    """The longest context the stand-in's weights support (``max_position_embeddings``)."""
    path = Path(os.path.expanduser(str(stand_in.get("path") or "")))
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return int(stand_in["max_model_len"])
    cfg = cfg.get("text_config", cfg)
    return int(cfg.get("max_position_embeddings") or stand_in["max_model_len"])


def scale_max_tokens(node: object, factor: float) -> object:
    """``node`` with every ``max_tokens`` value multiplied by ``factor`` (at least 1)."""
    if isinstance(node, dict):
        return {
            k: (
                max(1, round(v * factor))
                if k == "max_tokens" and isinstance(v, int) and not isinstance(v, bool)
                else scale_max_tokens(v, factor)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [scale_max_tokens(v, factor) for v in node]
    return node


def _set(cfg: dict, where: tuple, value: object) -> None:
    node = cfg
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value


def rehearse(cfg: dict, local_cluster: dict) -> dict:
    """The rehearsal of a resolved task config (see the module docstring).

    Args:
        cfg: The task's config, resolved to plain containers, with ``stand_in`` (a model
            mapping), ``rehearsal_scale`` and, when present, ``cluster`` and ``output_dir``.
        local_cluster: This machine's cluster config (``conf/cluster/local.yaml``).

    Returns:
        A new config; its ``rehearsal`` key holds what was replaced (for manifests).

    Raises:
        ConfigError: A stand-in that is not a local checkpoint, or a bad scale.
    """
    stand_in, scale = _stand_in(cfg)
    out = scale_max_tokens(copy.deepcopy(cfg), scale) if scale != 1.0 else copy.deepcopy(cfg)
    models = find_models(out)
    cap = context_capacity(stand_in)
    longest = max([int(m["max_model_len"]) for _, m in models] or [stand_in["max_model_len"]])
    engine_len = min(cap, longest)
    engine = f"rehearsal-{stand_in['name']}"
    kwargs = _engine_kwargs(stand_in, engine_len)
    record: dict = {
        "stand_in": {"name": stand_in["name"], "path": stand_in["path"]},
        "engine": engine,
        "engine_max_model_len": engine_len,
        "max_tokens_scale": scale,
        "models": {},
        "notes": [],
    }
    for where, model in models:
        _record_model(record, where, model, cap)
        _set(out, where, _stood_in(model, stand_in, engine, kwargs))
    if "cluster" in out:
        record["cluster_configured"] = out["cluster"]
        out["cluster"] = copy.deepcopy(local_cluster)
    if not (local_cluster.get("train") or {}).get("use_gpu"):
        record["notes"] += cpu_training(out)
    if out.get("output_dir") and not str(out["output_dir"]).endswith(SUFFIX):
        out["output_dir"] = f"{out['output_dir']}{SUFFIX}"
    out["rehearsal"] = record
    return out


def _stand_in(cfg: dict) -> tuple[dict, float]:
    """The config's ``stand_in`` model and ``rehearsal_scale``, checked."""
    stand_in = cfg.get("stand_in")
    if not is_model(stand_in) or not stand_in.get("path"):
        raise ConfigError("rehearsal needs stand_in: a packaged model with a local path")
    scale = float(cfg.get("rehearsal_scale", 1.0))
    if not scale > 0:
        raise ConfigError(f"rehearsal_scale must be > 0, got {scale}")
    return stand_in, scale


def _engine_kwargs(stand_in: dict, engine_len: int) -> dict:
    """The stand-in engine's vLLM arguments, its context ``engine_len`` tokens."""
    kwargs = dict(stand_in.get("engine_kwargs") or {})
    kwargs["max_model_len"] = engine_len
    if kwargs.get("enable_chunked_prefill") is False:
        # a whole prompt is prefilled in one step: the step must hold the longest prompt
        kwargs["max_num_batched_tokens"] = max(kwargs.get("max_num_batched_tokens", 0), engine_len)
    return kwargs


def _record_model(record: dict, where: tuple, model: dict, cap: int) -> None:
    """Records what ``model`` was (and a note when its context exceeds the stand-in's)."""
    was = {k: model.get(k) for k in ("path", "hub_id", "base_url", "backend")}
    was.update({k: model.get(k) for k in ("tensor_parallel_size", "accelerator_type")})
    record["models"][".".join(map(str, where))] = {"name": model["name"], "was": was}
    if int(model["max_model_len"]) > cap:
        record["notes"].append(
            f"{model['name']}: max_model_len {model['max_model_len']} > the stand-in's "
            f"{cap}; prompts longer than {cap} tokens cannot be rehearsed"
        )


def _stood_in(model: dict, stand_in: dict, engine: str, kwargs: dict) -> dict:
    """``model`` answered by the stand-in's engine; its name and context budget kept."""
    new = {**model, **CLEARED, "engine": engine, "engine_kwargs": dict(kwargs)}
    for k in ENGINE_KEYS:  # the stand-in's value, or the default when it sets none
        if k in stand_in:
            new[k] = stand_in[k]
        else:
            new.pop(k, None)
    return new


def cpu_training(cfg: dict) -> list[str]:
    """Turns off the GPU-only precision flags of every training recipe in ``cfg``, in place.

    ``bf16``/``fp16``/``tf32`` make transformers refuse to start without a GPU; the weights
    still train in the recipe's ``train_dtype``. Everything else of the recipe stays.
    """
    notes = []

    def walk(node: object, where: str) -> None:
        if not isinstance(node, dict):
            return
        if node.get("kind") in ("sft", "dpo") and isinstance(node.get("args"), dict):
            for flag in ("bf16", "fp16", "tf32"):
                if node["args"].get(flag):
                    node["args"][flag] = False
                    notes.append(f"{where}: {flag} mixed precision needs a GPU; off here")
            return
        for k, v in node.items():
            walk(v, f"{where}.{k}" if where else str(k))

    walk(cfg, "")
    return notes


def load_local_cluster(conf_dir: str | Path) -> dict:
    """``conf/cluster/local.yaml`` as a plain mapping."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(
        OmegaConf.load(Path(conf_dir) / "cluster" / "local.yaml"), resolve=True
    )
