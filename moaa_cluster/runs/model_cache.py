"""Node-local copies of model checkpoints kept on object storage.

vLLM and ``transformers`` load a local directory. A checkpoint a run wrote to object storage
(``s3://.../sft/model``) is copied, on the node that loads it, into
``$MOAA_REMOTE_MODELS_DIR/<sha1 of the URI>[:12]`` (default
``~/.cache/moaa-cluster/remote-models``):

- atomically: the files go to a hidden temporary directory beside it, renamed into place once
  all are there, so a killed copy never counts as a checkpoint;
- once: a complete copy carries a marker with the fingerprint of what it copied (each file's
  name, size and modification time), and is used as long as the URI still lists the same
  files; a checkpoint rewritten at the same URI (``overwrite``, ``from_stage``) is copied again.

``fetch_checkpoint(uri, weights=False)`` copies only the small files (config, tokenizer, chat
template) into ``<hash>-meta``: what the driver reads to plan and to build prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from moaa_cluster.errors import ConfigError
from moaa_cluster.runs import storage

CACHE_ENV = "MOAA_REMOTE_MODELS_DIR"
DEFAULT_CACHE = "~/.cache/moaa-cluster/remote-models"
COMPLETE = ".moaa-complete"  # the marker: the fingerprint of the files copied
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_dir(uri: str, *, weights: bool = True) -> Path:
    """Where the node-local copy of the checkpoint at ``uri`` goes (absolute)."""
    key = hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:12]
    return (cache_root() / (key if weights else f"{key}-meta")).absolute()


def _listing(uri: str, weights: bool) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    fs, root = storage.filesystem(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"no checkpoint at {uri}: {exc}") from exc
    files = [i for i in infos if i.type == pafs.FileType.File]
    if not any(i.path == f"{root}/config.json" for i in files):
        raise ConfigError(f"no checkpoint at {uri} (no config.json)")
    if not weights:
        files = [i for i in files if not i.path.endswith(WEIGHT_SUFFIXES)]
    return fs, root, sorted(files, key=lambda i: i.path)


def _fingerprint(uri: str, root: str, files: list[pafs.FileInfo]) -> str:
    rows = [
        [i.path[len(root) + 1 :], i.size, i.mtime.isoformat() if i.mtime else None] for i in files
    ]
    return json.dumps({"uri": uri, "files": rows}, sort_keys=True)


def is_complete(dest: Path, fingerprint: str) -> bool:
    """Whether ``dest`` holds a finished copy of exactly what ``fingerprint`` describes."""
    try:
        return (Path(dest) / COMPLETE).read_text() == fingerprint
    except OSError:
        return False


def fetch_checkpoint(uri: str, dest: str | Path | None = None, *, weights: bool = True) -> Path:
    """A local directory holding the checkpoint at ``uri`` (copied unless already complete).

    A local ``uri`` is returned as it is. Several processes on one node may call this at once
    (replicas, training workers): each copies into its own temporary directory and the first
    rename wins; the others find the copy complete and drop theirs.

    Args:
        uri: The checkpoint directory on object storage (with a ``config.json``).
        dest: The local directory (default :func:`cache_dir`).
        weights: False: only the files that are not weights (config, tokenizer).

    Raises:
        ConfigError: Nothing at ``uri``, or no ``config.json`` there.
    """
    if not storage.is_uri(uri):
        return Path(os.path.expanduser(uri))
    dest = Path(dest) if dest is not None else cache_dir(uri, weights=weights)
    fs, root, files = _listing(uri, weights)
    fingerprint = _fingerprint(uri, root, files)
    if is_complete(dest, fingerprint):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        for info in files:
            out = tmp / info.path[len(root) + 1 :]
            out.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        (tmp / COMPLETE).write_text(fingerprint)
        _put_in_place(tmp, dest, fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _put_in_place(tmp: Path, dest: Path, fingerprint: str) -> None:
    """Renames the finished copy ``tmp`` to ``dest``, moving an older or partial ``dest``
    aside first; a complete ``dest`` another process put there meanwhile is kept."""
    for _ in range(3):
        try:
            tmp.rename(dest)
            return
        except OSError:  # dest exists (and is not empty)
            if is_complete(dest, fingerprint):
                return
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                dest.rename(old)
            except FileNotFoundError:  # removed by another process meanwhile: try again
                continue
            shutil.rmtree(old, ignore_errors=True)
    tmp.rename(dest)


def local_files(path: str) -> str | None:
    """A local directory to read a checkpoint's config and tokenizer from on this machine:
    ``path`` itself (``~`` expanded) when local, else a copy of its small files (None when
    there is no checkpoint at that URI yet, as for a pipeline's model before it is trained)."""
    if storage.is_uri(path):
        try:
            return str(fetch_checkpoint(path, weights=False))
        except ConfigError:
            return None
    return os.path.expanduser(path)
