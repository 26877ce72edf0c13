"""System messages for chat templates that have no system role.

Some chat templates refuse a system message (Gemma-2's raises "System role not supported")
and some drop it without a word. The K.1 Aggregate-and-Synthesize prompt and the judge's
instructions always travel in a system message, so such a model would fail, or silently
ignore its instructions, on every call. This module decides per model whether system
messages are sent as they are (``native``) or folded into the next user turn (``fold``),
and does the folding. It is pure apart from loading a tokenizer; nothing here needs Ray.

The decision follows ``ModelSpec.system_role``:

- ``native``: always send system messages.
- ``fold``: always fold them.
- ``auto``: render a probe conversation with a system message once through the model's own
  chat template (the tokenizer at ``spec.path``, or the spec's ``chat_template`` override);
  fold if rendering raises or the system text does not appear in the prompt. A template
  that folds the system text itself (the packaged Gemma-3 one) renders it, so it stays
  ``native``: the engine then produces the same prompt :func:`fold_system` would.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from moaa_cluster.engines.spec import SYSTEM_ROLES, ModelSpec
from moaa_cluster.errors import ConfigError

log = logging.getLogger(__name__)

NATIVE = "native"
FOLD = "fold"

# Distinctive enough that no template adds it by itself, plain enough that none alters it.
_PROBE_SYSTEM = "moaa-system-probe-5c1e"
_PROBE_USER = "moaa-user-probe"

SEPARATOR = "\n\n"

_warned_no_checkpoint: set[str] = set()


def fold_system(messages: list[dict]) -> list[dict]:
    """Returns a copy of ``messages`` with every system message folded into a user turn.

    The rule: a system message is removed and its text is put at the start of the next
    user turn, followed by a blank line and then that turn's own text
    (``system + "\\n\\n" + user``), both verbatim. Several system messages before the same
    user turn are joined in order, each followed by a blank line. In this project the
    (single) system message always comes first, so it lands in the first user turn.

    This is the fold the packaged Gemma-3 template (``models/store.py``
    ``GEMMA_CHAT_TEMPLATE``) performs itself: rendering the folded conversation through a
    Gemma template gives the same prompt, byte for byte, as rendering the original through
    the packaged one. The one exception is whitespace at the start of the system or user
    text: Gemma templates ``trim`` a turn's content, and the packaged template writes the
    system text outside that trim. (That template also keeps only the last of several
    system messages before one user turn; this function keeps them all.)

    Args:
        messages: ``{"role", "content"}`` dicts with string content. Not modified.

    Returns:
        New message dicts (other keys kept) with no system message; the input itself when
        it has none.

    Raises:
        ValueError: A system message that no user turn follows (there is nowhere to put it).
        TypeError: Content that is not a string where text has to be joined.
    """
    if not any(m.get("role") == "system" for m in messages):
        return messages
    out: list[dict] = []
    pending: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            pending.append(_text(message))
            continue
        message = dict(message)
        if role == "user" and pending:
            message["content"] = "".join(p + SEPARATOR for p in pending) + _text(message)
            pending = []
        out.append(message)
    if pending:
        raise ValueError("cannot fold a system message that no user turn follows")
    return out


def _text(message: dict) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise TypeError(
            f"cannot fold a {message.get('role')} message whose content is "
            f"{type(content).__name__}, not text"
        )
    return content


def system_mode(spec: ModelSpec) -> str:
    """How system messages reach ``spec``'s model: ``"native"`` or ``"fold"``.

    Follows ``spec.system_role``; for ``auto`` detects it from the chat template (cached
    per model, so a process loads each tokenizer once). With no local checkpoint to read
    the template from (the ``openai`` backend without ``path``, or a path not on this
    machine), ``auto`` assumes ``native``: the remote server owns its template.

    Raises:
        ConfigError: An unknown ``system_role``, or a checkpoint whose tokenizer cannot be
            loaded.
    """
    role = spec.system_role
    if role not in SYSTEM_ROLES:
        raise ConfigError(
            f"model {spec.name}: system_role must be one of {SYSTEM_ROLES}, got {role!r}"
        )
    if role != "auto":
        return role
    if not spec.path:
        return NATIVE
    from moaa_cluster.runs.model_cache import local_files  # a URI: its config + tokenizer

    local = local_files(spec.path)
    path = Path(local if local is not None else spec.path)
    if local is None or not path.is_dir():
        if spec.name in _warned_no_checkpoint:  # one line per model, not one per backend
            return NATIVE
        _warned_no_checkpoint.add(spec.name)
        log.warning(
            "%s: no checkpoint at %s to read the chat template from; sending system "
            "messages as they are (set system_role to decide)",
            spec.name,
            path,
        )
        return NATIVE
    accepts = template_accepts_system(
        str(path.resolve()), _template_override(spec), spec.trust_remote_code
    )
    return NATIVE if accepts else FOLD


def _template_override(spec: ModelSpec) -> str | None:
    """The template text the engine uses instead of the tokenizer's, if any."""
    # serve_llm passes spec.chat_template with setdefault, so an engine_kwargs one wins there
    template = spec.chat_template
    if spec.backend == "vllm":
        template = spec.engine_kwargs.get("chat_template") or template
    if not template:
        return None
    # vLLM reads a value naming an existing file from that file, else takes it as the text
    candidate = Path(os.path.expanduser(template))
    try:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    except OSError:  # a long template is not a valid path on every system
        pass
    return template


@functools.cache
def template_accepts_system(
    path: str, chat_template: str | None = None, trust_remote_code: bool = False
) -> bool:
    """Whether the chat template of the tokenizer at ``path`` keeps a system message.

    Renders a short conversation with and without a system message. A template that cannot
    render even the plain one is broken for every call; that is the engine's error to
    report, so it counts as accepting (nothing to learn about the system role).

    Args:
        path: Local directory with the tokenizer files (loaded with no hub access).
        chat_template: Template text to use instead of the tokenizer's own.
        trust_remote_code: Passed to ``AutoTokenizer.from_pretrained``.

    Raises:
        ConfigError: The tokenizer cannot be loaded from ``path``.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # any load failure means the same to the user
        raise ConfigError(f"cannot load the tokenizer at {path}: {exc}") from exc

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )

    user = {"role": "user", "content": _PROBE_USER}
    try:
        render([user])
    except Exception as exc:  # any failure: the plain conversation does not render
        log.warning("%s: the chat template cannot render a user turn (%s)", path, exc)
        return True
    try:
        prompt = render([{"role": "system", "content": _PROBE_SYSTEM}, user])
    except Exception as exc:  # Jinja's raise_exception, or any other refusal
        log.info("%s: the chat template refuses a system message (%s); folding it", path, exc)
        return False
    if _PROBE_SYSTEM not in prompt:
        log.info("%s: the chat template drops system messages; folding them", path)
        return False
    return True
