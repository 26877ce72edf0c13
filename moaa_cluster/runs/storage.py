"""Where a run directory lives: a local (or shared) path, or an object-store URI.

``output_dir=s3://bucket/runs/x`` (or ``gs://``, ``hdfs://``, anything
``pyarrow.fs.FileSystem.from_uri`` knows) keeps a run on object storage; credentials and
endpoint come from the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server), on the driver and on
every Ray worker. Paths stay strings: a URI keeps its scheme (``pathlib`` would fold ``//``).

Atomic writes: a local file is written under a hidden name and renamed; an object is one PUT,
which a reader sees whole or not at all.
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from moaa_cluster.errors import ConfigError


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` names object storage (``scheme://...``), not a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def run_path(path: str | Path) -> str | Path:
    """A run directory as the code keeps it: a ``Path`` when local, the URI string otherwise."""
    return path if is_uri(path) else Path(path)


def expand(path: str | Path) -> str:
    """A path a user gave, as a string: a URI unchanged, a local path with ``~`` expanded."""
    return path if is_uri(path) else str(Path(str(path)).expanduser())


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/part/...`` for a local path or a URI."""
    if is_uri(base):
        return posixpath.join(str(base), *parts)
    return Path(base).joinpath(*parts)


def _fs(path: str | Path) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(str(path))
        except Exception as exc:  # an unknown scheme, a bucket name it cannot parse
            raise ConfigError(f"cannot open {path}: {exc}") from exc
    return pafs.LocalFileSystem(), str(Path(path).absolute())


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding ``path`` and ``path`` within it."""
    return _fs(path)


def exists(path: str | Path) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def make_dir(path: str | Path) -> None:
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)


def _entries(directory: str | Path, kind: pafs.FileType, keep) -> list[str | Path]:
    """The entries of ``directory`` of type ``kind`` whose names pass ``keep``, sorted by
    name; none when the directory does not exist."""
    fs, p = _fs(directory)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    names = sorted(
        posixpath.basename(i.path)
        for i in infos
        if i.type == kind and keep(posixpath.basename(i.path))
    )
    return [join(directory, n) for n in names]


def list_files(directory: str | Path, suffix: str) -> list[str | Path]:
    """The files of ``directory`` ending in ``suffix`` (not hidden), sorted by name; none when
    the directory does not exist."""
    return _entries(
        directory, pafs.FileType.File, lambda n: n.endswith(suffix) and not n.startswith(".")
    )


def walk_files(directory: str | Path) -> list[str]:
    """Every file under ``directory`` at any depth, as ``/``-separated paths relative to it
    (hidden ones too), in listing order; none when the directory does not exist."""
    fs, root = _fs(directory)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File]


def kind(path: str | Path) -> str | None:
    """``"file"``, ``"dir"``, or None when nothing is at ``path``."""
    fs, p = _fs(path)
    t = fs.get_file_info(p).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(t)


def list_dirs(directory: str | Path, prefix: str = "") -> list[str | Path]:
    """The subdirectories of ``directory`` whose names start with ``prefix``, sorted."""
    return _entries(directory, pafs.FileType.Directory, lambda n: n.startswith(prefix))


def copy_tree(
    src_fs: pafs.FileSystem, src: str, dest: str | Path, *, use_threads: bool = True
) -> None:
    """Copies the file or directory ``src`` of ``src_fs`` to ``dest`` (local or a URI)."""
    fs, p = _fs(dest)
    if not is_uri(dest):  # local directories are made first (pyarrow makes no parents)
        is_dir = src_fs.get_file_info(src).type == pafs.FileType.Directory
        (Path(p) if is_dir else Path(p).parent).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        src, p, source_filesystem=src_fs, destination_filesystem=fs, use_threads=use_threads
    )


def fetch(path: str | Path, local_dir: Path) -> Path:
    """A local copy of the file or directory ``path`` under ``local_dir`` (``path`` itself
    when it is already local)."""
    if not is_uri(path):
        return Path(path)
    fs, p = _fs(path)
    local = Path(local_dir) / posixpath.basename(p.rstrip("/"))
    copy_tree(fs, p, local)
    return local


def mirror(path: str | Path, local: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copies the directory ``path`` (local or a URI) to ``local``, leaving out every
    subdirectory named in ``skip`` at any depth. Returns ``local``."""
    fs, root = _fs(path)
    root = root.rstrip("/")
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = info.path[len(root) + 1 :]
        if info.type != pafs.FileType.File or set(rel.split("/")[:-1]) & set(skip):
            continue
        out = local / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    return local


def remove(path: str | Path) -> None:
    """Removes a file or a directory tree; nothing when it does not exist."""
    fs, p = _fs(path)
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif kind == pafs.FileType.File:
        fs.delete_file(p)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``path`` whole: a hidden temp file + rename locally, one PUT on object storage."""
    fs, p = _fs(path)
    if is_uri(path):
        with fs.open_output_stream(p) as out:
            out.write(data)
        return
    local = Path(p)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    tmp.rename(local)


def read_bytes(path: str | Path) -> bytes | None:
    """The bytes at ``path``, or None when it does not exist."""
    fs, p = _fs(path)
    try:
        with fs.open_input_stream(p) as fh:
            return fh.read()
    except (FileNotFoundError, OSError):
        return None


def write_parquet(table, path: str | Path) -> None:
    """Writes one parquet file whole (see :func:`write_bytes`)."""
    import pyarrow.parquet as pq

    fs, p = _fs(path)
    if is_uri(path):
        pq.write_table(table, p, filesystem=fs)
        return
    local = Path(p)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    tmp.rename(local)


def check_writable(run_dir: str | Path) -> None:
    """Creates ``run_dir`` and writes a probe there, or raises ``ConfigError`` saying why not."""
    probe = join(run_dir, ".write-test")
    try:
        make_dir(run_dir)
        write_bytes(probe, b"ok")
        remove(probe)
    except OSError as exc:
        raise ConfigError(
            f"output directory {run_dir} is not writable: {exc.strerror or exc}"
        ) from exc
