"""Tokenizers loaded once per process.

A Ray worker process serves many reads (each run's row checks, a test session's runs); loading
a tokenizer costs seconds (Gemma's 262k-token vocabulary), so a process keeps the ones it
loaded, keyed by the files' paths and modification times: a checkpoint written again in the
same directory is loaded again.
"""

from __future__ import annotations

import os
from pathlib import Path

_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
_LOADED: dict[tuple, object] = {}
_KEEP = 8  # a long-lived process does not keep every checkpoint it ever read


def _stamp(path: str) -> tuple:
    """The tokenizer files of ``path`` with their modification times."""
    stamp = []
    for name in _FILES:
        f = Path(path) / name
        if f.exists():
            stamp.append((name, os.stat(f).st_mtime_ns))
    return tuple(stamp)


def load_tokenizer(path: str, trust_remote_code: bool = False, local_only: bool = True):
    """The tokenizer at ``path`` (``AutoTokenizer``; a local directory unless ``local_only``
    is False), loaded once per process while its files are unchanged. Callers only read
    from it."""
    key = (str(path), trust_remote_code, local_only, _stamp(str(path)))
    if key not in _LOADED:
        from transformers import AutoTokenizer  # seconds to import: only when needed

        if len(_LOADED) >= _KEEP:
            _LOADED.clear()
        _LOADED[key] = AutoTokenizer.from_pretrained(
            path, local_files_only=local_only, trust_remote_code=trust_remote_code
        )
    return _LOADED[key]
