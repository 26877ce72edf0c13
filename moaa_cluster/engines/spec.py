"""Model specs: what a ``conf/model/*.yaml`` file describes, validated before anything starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from moaa_cluster.errors import ConfigError

BACKENDS = ("vllm", "openai")


SYSTEM_ROLES = ("auto", "native", "fold")


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights are, how to run it, and how big a slice it needs.

    Attributes:
        name: Short name used in outputs and as the served model id.
        path: Checkpoint directory (preferred; offline): local, or on object storage
            (``s3://...``), copied to each engine node before it starts
            (``serve_llm.model_source``).
        hub_id: Hugging Face hub id, used only when ``path`` is unset and the hub is enabled.
        revision: Hub revision pinned for reproducibility.
        backend: ``vllm`` (an engine hosted by Ray Serve LLM) or ``openai`` (an
            OpenAI-compatible server the user already runs, at ``base_url``).
        base_url: ``http://host:port/v1`` for the ``openai`` backend.
        api_key_env: Environment variable holding that server's key, if any.
        served_name: Model name the remote server expects; defaults to ``name``.
        dtype: Weight dtype for vLLM.
        tensor_parallel_size: GPUs per engine replica (1 on CPU).
        max_model_len: Context length the engine is started with.
        chat_template: Optional Jinja template overriding the tokenizer's.
        system_role: How system messages reach the model (``engines/chat_template.py``):
            ``native`` sends them as they are; ``fold`` puts their text at the start of
            the next user turn, for templates with no system role (Gemma-2); ``auto``
            (default) renders a system message once through the chat template and folds
            if it raises or drops the text. With no local ``path`` ``auto`` is ``native``.
        accelerator_type: Ray accelerator type (e.g. ``A100-80G``); ``None`` runs on CPU.
        replicas: Engine replicas (data parallel).
        cpus_per_replica: Logical CPUs one replica reserves.
        trust_remote_code: Off unless a config turns it on.
        engine_kwargs: Extra vLLM engine arguments.
        params_b: Billions of parameters (all experts of an MoE), for planning.
        num_hidden_layers: Transformer layers, from the checkpoint's ``config.json``; with
            the two fields below it sizes the KV cache for planning (optional).
        num_attention_heads: Query heads; a tensor-parallel size must divide it (vLLM).
        num_key_value_heads: Key/value heads (fewer than query heads under GQA).
        head_dim: Size of one attention head.
        engine: The Serve engine that answers for this model, when it is not its own. A
            rehearsal (``moaa_cluster.rehearsal``) points several models at one packaged
            engine; outputs still name the model. ``None``: the model's own engine.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    backend: str = "vllm"
    base_url: str | None = None
    api_key_env: str | None = None
    served_name: str | None = None
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    max_model_len: int = 2048
    chat_template: str | None = None
    system_role: str = "auto"
    accelerator_type: str | None = None
    replicas: int = 1
    cpus_per_replica: float = 1.0
    trust_remote_code: bool = False
    engine_kwargs: dict = field(default_factory=dict)
    params_b: float | None = None
    # architecture facts for the placement planner (engines/placement/); all optional
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    engine: str | None = None

    @property
    def engine_name(self) -> str:
        """The engine (Serve app and served model id) that answers this model's calls."""
        return self.engine or self.name

    @property
    def source(self) -> str:
        """What the engine loads: the local path, else the hub id."""
        return self.path or self.hub_id or ""

    def validate(self, *, check_files: bool = True) -> None:
        """Raises :class:`ConfigError` with a one-line reason if the spec cannot run."""
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"model {self.name}: backend must be one of {BACKENDS}, got {self.backend!r}"
            )
        if self.system_role not in SYSTEM_ROLES:
            raise ConfigError(
                f"model {self.name}: system_role must be one of {SYSTEM_ROLES}, "
                f"got {self.system_role!r}"
            )
        if self.backend == "openai":
            if not self.base_url:
                raise ConfigError(f"model {self.name}: the openai backend needs base_url")
            return
        if not self.path and not self.hub_id:
            raise ConfigError(f"model {self.name}: set path (local checkpoint) or hub_id")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"model {self.name}: tensor_parallel_size must be >= 1")
        self._validate_architecture()
        if not (check_files and self.path):
            return
        from moaa_cluster.runs.storage import exists, is_uri, join

        if is_uri(self.path):
            if not exists(join(self.path, "config.json")):  # one request; nothing copied
                raise ConfigError(f"model {self.name}: no checkpoint at {self.path}")
        else:
            p = Path(os.path.expanduser(self.path))
            if not (p / "config.json").exists():
                hint = " (run `moaa models prepare`)" if "models" in str(p) else ""
                raise ConfigError(f"model {self.name}: no checkpoint at {p}{hint}")

    def _validate_architecture(self) -> None:
        """Planning facts must be positive integers that agree with each other."""
        if self.params_b is not None and not self.params_b > 0:
            raise ConfigError(f"model {self.name}: params_b must be > 0, got {self.params_b!r}")
        for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigError(
                    f"model {self.name}: {key} must be a positive integer, got {value!r}"
                )
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if heads and kv_heads and heads % kv_heads:
            raise ConfigError(
                f"model {self.name}: num_key_value_heads {kv_heads} must divide "
                f"num_attention_heads {heads}"
            )
        # vLLM shards query heads evenly over the tensor-parallel group and refuses otherwise
        if heads and heads % self.tensor_parallel_size:
            raise ConfigError(
                f"model {self.name}: tensor_parallel_size {self.tensor_parallel_size} must divide "
                f"num_attention_heads {heads}"
            )


def spec_from_dict(name: str, cfg: dict) -> ModelSpec:
    """Builds a spec from a plain config mapping, rejecting unknown keys by name."""
    known = set(ModelSpec.__dataclass_fields__)
    unknown = set(cfg) - known
    if unknown:
        raise ConfigError(f"model {name}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = dict(cfg)
    values.setdefault("name", name)
    values["engine_kwargs"] = dict(values.get("engine_kwargs") or {})
    return ModelSpec(**values)
