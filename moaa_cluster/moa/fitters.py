"""Context fitters that count with each model's own tokenizer and chat template.

:mod:`moaa_cluster.moa.budget` holds the rule and stays pure (its token counting comes in as
callables); this module builds those callables from a Hugging Face tokenizer
(:func:`tokenizer_fitter`) and loads one fitter per model spec (:func:`load_fitters`), counting
prompts as the engines receive them (system folded, the engine's chat template).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from moaa_cluster.moa.budget import ContextFitter

log = logging.getLogger(__name__)


def _fold_system(messages: list[dict]) -> list[dict]:
    """The system text put ahead of the first user turn (templates without a system role).

    The counting fallback for when ``moaa_cluster.engines.chat_template`` (whose
    ``fold_system`` folds what the backends send) cannot be imported: this module must stay
    importable on its own. Both join with a blank line, so they count the same.
    """
    if not messages or messages[0]["role"] != "system":
        return [dict(m) for m in messages]
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def _system_folder() -> Callable[[list[dict]], list[dict]]:
    try:
        from moaa_cluster.engines.chat_template import fold_system
    except ImportError:
        return _fold_system
    return fold_system


def tokenizer_fitter(
    tokenizer,
    max_model_len: int,
    *,
    chat_template: str | None = None,
    fold: bool | None = None,
    name: str = "model",
) -> ContextFitter:
    """A :class:`ContextFitter` counting with a Hugging Face tokenizer and its chat template.

    Args:
        tokenizer: The model's tokenizer.
        max_model_len: The model's context length.
        chat_template: The template the engine uses instead of the tokenizer's (text, or a
            file holding it), if any.
        fold: Whether the system message is folded into the first user turn before sending
            (``engines/chat_template.py``), so prompts are counted as sent. None: fold when
            the template raises on a system message (Gemma-2), found by rendering one once.
        name: The model, for error messages.
    """
    kwargs = {"chat_template": _template_text(chat_template)} if chat_template else {}

    def render(messages: list[dict]) -> int:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, **kwargs
        )
        ids = out["input_ids"] if hasattr(out, "keys") else out  # transformers 5 returns a dict
        return len(ids)

    if fold is None:
        try:
            render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
            fold = False
        except Exception:  # the template refused the system role (any other error recurs below)
            fold = True
    count_prompt = render
    if fold:
        folder = _system_folder()

        def count_prompt(messages: list[dict]) -> int:
            return render(folder(messages))

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return ContextFitter(
        max_model_len,
        count_prompt,
        lambda text: len(ids(text)),
        lambda text, n: tokenizer.decode(ids(text)[:n]),
        name=name,
    )


def _template_text(value: str) -> str:
    """A template given as a file (read it, as vLLM does) or as its text."""
    try:
        path = Path(os.path.expanduser(value))
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:  # a long template is no valid path on every system
        pass
    return value


def local_tokenizer_path(spec) -> str | None:
    """The spec's local checkpoint directory, when there is one to load a tokenizer from."""
    if not spec.path:
        return None
    from moaa_cluster.runs.model_cache import local_files  # a URI: its config + tokenizer

    local = local_files(spec.path)
    return local if local is not None and Path(local).is_dir() else None


def load_fitters(specs: dict) -> dict[str, ContextFitter]:
    """A fitter per model spec key, from each spec's local tokenizer (loaded once per path).

    System messages are counted folded exactly when the backends fold them
    (``engines.chat_template.system_mode``), with the template the engine uses. A spec
    without a local checkpoint (an ``openai`` server, a hub id) gets no fitter: its prompts
    are sent as built, and a note is logged.
    """
    from moaa_cluster.engines.chat_template import FOLD, _template_override, system_mode
    from moaa_cluster.engines.tokenizer import load_tokenizer

    out = {}
    for key, spec in specs.items():
        path = local_tokenizer_path(spec)
        if path is None:
            log.info(
                "model %s: no local tokenizer (path %s), so its prompts get no context budgeting",
                spec.name,
                spec.path,
            )
            continue
        out[key] = tokenizer_fitter(
            load_tokenizer(path, spec.trust_remote_code),
            spec.max_model_len,
            chat_template=_template_override(spec),
            fold=system_mode(spec) == FOLD,
            name=spec.name,
        )
    return out
