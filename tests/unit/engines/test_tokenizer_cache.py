"""``engines.tokenizer.load_tokenizer``: one load per process while the files are unchanged
(the loader is replaced: only the caching is under test)."""

from __future__ import annotations

import os

import transformers

from moaa_cluster.engines import tokenizer


def test_a_tokenizer_is_loaded_again_only_when_its_files_change(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda path, **kw: loads.append((str(path), kw)) or object(),
    )
    monkeypatch.setattr(tokenizer, "_LOADED", {})
    (tmp_path / "tokenizer.json").write_text("{}")
    first = tokenizer.load_tokenizer(str(tmp_path))
    assert tokenizer.load_tokenizer(str(tmp_path)) is first
    assert loads == [(str(tmp_path), {"local_files_only": True, "trust_remote_code": False})]
    st = os.stat(tmp_path / "tokenizer.json")
    os.utime(tmp_path / "tokenizer.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tokenizer.load_tokenizer(str(tmp_path)) is not first  # the checkpoint was rewritten
    assert tokenizer.load_tokenizer(str(tmp_path), trust_remote_code=True) is not first
    assert len(loads) == 3
