"""A reward model on vLLM's pooling runner, as a ``ray.data.llm`` processor: one score per
conversation.

Each request is a whole conversation (JSON ``messages``) rendered with the reward model's own
chat template, no generation prompt (the answer is finished, as reward models are trained),
and scored in vLLM's pooling runner (``classify``: in vLLM 0.32 a reward model is a sequence
classifier with one output; ``reward`` and ``score`` as task names were removed). The score is
the reward head's raw output (``use_activation=False``): a sigmoid would squash the large
logits of real reward models into float ties at 1.0. A request that cannot be scored (a
template that does not render, a conversation longer than the context, an engine error)
comes back with its reason instead of a score. Best-of-N (``pipeline.best_of_n``) uses it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from moaa_cluster.engines.spec import ModelSpec

# the Ray Data LLM task type (ray.llm._internal.batch.constants.vLLMTaskType) that starts vLLM
# with runner=pooling, convert=classify and sends PoolingParams(task="classify"); its "score"
# type would send task "score" and convert "reward", both removed in vLLM 0.32
POOLING_TASK = "classify"


def _template_text(spec: ModelSpec) -> str | None:
    """The chat template the reward model's engine would use instead of its tokenizer's."""
    template = spec.engine_kwargs.get("chat_template") or spec.chat_template
    if template and Path(os.path.expanduser(template)).is_file():
        return Path(os.path.expanduser(template)).read_text(encoding="utf-8")
    return template or None


@functools.cache
def _tokenizer(path: str, trust_remote_code: bool):
    # cached per Ray worker process: a render task loads the tokenizer once, not per row
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )


def render(
    row: dict,
    *,
    tokenizer_path: str,
    chat_template: str | None,
    fold: bool,
    max_len: int,
    trust_remote_code: bool = False,
) -> dict:
    """Adds the reward model's token ids for one request, or ``render_error``.

    The whole conversation goes through the reward model's own chat template with no
    generation prompt (the answer is finished, as reward models are trained). Tokenized
    without adding special tokens: the template writes the BOS its model wants, and a second
    one (Llama-3's ``<|begin_of_text|>`` twice) shifts what the reward head sees.
    """
    from moaa_cluster.engines.chat_template import fold_system

    out = {**row, "tokenized_prompt": [], "render_error": ""}
    try:
        messages = json.loads(row["messages"])
        if fold:
            messages = fold_system(messages)
        tok = _tokenizer(tokenizer_path, trust_remote_code)
        text = tok.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=False
        )
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if len(ids) > max_len:
            out["render_error"] = (
                f"conversation has {len(ids)} tokens > the reward model's max_model_len {max_len}"
            )
        else:
            out["tokenized_prompt"] = ids
    except Exception as exc:  # a request can fail only itself
        out["render_error"] = f"chat template: {type(exc).__name__}: {exc}"[:500]
    return out


def _to_engine(row: dict) -> dict:
    # raw reward-head output; see the module docstring
    return {
        "tokenized_prompt": row["tokenized_prompt"],
        "pooling_params": {"use_activation": False},
    }


def _from_engine(row: dict) -> dict:
    error = row.get("__inference_error__") or None
    score = None
    if error is None:
        values = [float(v) for v in list(row["embeddings"])]
        if len(values) != 1:
            error = f"the reward head gives {len(values)} outputs; a reward model gives one"
        else:
            score = values[0]
    return {"id": row["id"], "index": int(row["index"]), "score": score, "error": error}


def processor_config(spec: ModelSpec, batch_size: int = 16):
    """The ``ray.data.llm`` processor config that serves ``spec`` in the pooling runner.

    Chat-template, tokenize and detokenize stages are off: :func:`render` tokenizes (the
    library's chat-template stage renders an assistant-final conversation as a prefill to
    continue, without the end-of-turn token reward models are trained with), and a pooling
    output has nothing to detokenize. Three actor pools fewer also means fewer logical CPUs
    reserved.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    from moaa_cluster.engines.serve_llm import bundles, engine_args
    from moaa_cluster.runtime import worker_env

    engine_kwargs = engine_args(spec)
    # the processor sets runner/convert from task_type and warns about its own task_type key
    for key in ("runner", "chat_template", "task_type"):
        engine_kwargs.pop(key, None)
    env = worker_env()
    return vLLMEngineProcessorConfig(
        model_source=spec.source,
        task_type=POOLING_TASK,
        engine_kwargs=engine_kwargs,
        batch_size=batch_size,
        concurrency=spec.replicas,
        accelerator_type=spec.accelerator_type,
        placement_group_config={"bundles": bundles(spec)},
        runtime_env={"env_vars": env} if env else None,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        should_continue_on_error=True,  # a failed request becomes its row's reject
        log_engine_metrics=False,
    )


def score(
    reqs: list[dict], spec: ModelSpec, batch_size: int = 16
) -> dict[tuple[str, int], tuple[float | None, str | None]]:
    """Scores every request with the reward model (Ray must be initialized).

    Returns:
        ``(id, index) -> (score, None)`` or ``(None, reason)`` for every request.
    """
    import ray
    from ray.data.llm import build_processor

    from moaa_cluster.engines.chat_template import FOLD, system_mode

    if not reqs:
        return {}
    tokenizer_path = str(Path(os.path.expanduser(spec.path or spec.source)))
    render_row = functools.partial(
        render,
        tokenizer_path=tokenizer_path,
        chat_template=_template_text(spec),
        fold=system_mode(spec) == FOLD,
        max_len=spec.max_model_len,
        trust_remote_code=spec.trust_remote_code,
    )
    blocks = max(1, min(len(reqs) // max(1, batch_size), 64))
    rendered = ray.data.from_items(reqs, override_num_blocks=blocks).map(render_row).materialize()
    results: dict[tuple[str, int], tuple[float | None, str | None]] = {}
    for r in rendered.filter(lambda r: r["render_error"] != "").take_all():
        results[(r["id"], int(r["index"]))] = (None, r["render_error"])
    todo = rendered.filter(lambda r: r["render_error"] == "")
    if todo.count():
        processor = build_processor(
            processor_config(spec, batch_size), preprocess=_to_engine, postprocess=_from_engine
        )
        for r in processor(todo).take_all():
            results[(r["id"], r["index"])] = (r["score"], r["error"])
    return results
