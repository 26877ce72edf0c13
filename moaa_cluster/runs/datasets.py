"""A run's outputs at any size: parquet datasets (directories of files) written by Ray Data,
one consolidated file as the small-run option, and ``rejects.jsonl`` from the workers' parts.

Locally a directory is written under a hidden temporary name and renamed into place, so a
reader never sees half an output; on object storage (no directory rename there) the old
objects are removed first and Ray Data writes the new ones. ``datasets.load_dataset("parquet",
data_dir=...)`` and TRL read a directory as it is. The single file is copied from the
directory one record batch at a time: the driver never holds the rows.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moaa_cluster.runs import storage
from moaa_cluster.runs.files import jsonl_line
from moaa_cluster.runs.task_run import REJECTS

REJECTS_DIR = "rejects"  # the reject parts read tasks and checks write, one JSONL file each
ROWS_PER_FILE = 20_000  # rows per file of an output dataset: the sort's and writers' parallelism


def remove_outputs(*paths: Path | str) -> None:
    """Removes output files or directories (a rerun leaves nothing stale behind)."""
    for p in paths:
        storage.remove(p)


def _sort_block(block: pa.Table) -> pa.Table:
    return block.sort_by([("source", "ascending"), ("id", "ascending")])


def sorted_by_source_id(ds, n_rows: int):
    """``ds`` (``n_rows`` rows) sorted by source and id, in blocks of about
    :data:`ROWS_PER_FILE` rows (one output file each)."""
    files = max(1, -(-n_rows // ROWS_PER_FILE))
    # few, large blocks: a sort's tasks grow with its blocks (a 4-row shard is a block)
    ds = ds.repartition(files)
    if files == 1:  # one block: sorting it is the global sort, in one task
        return ds.map_batches(_sort_block, batch_size=None, batch_format="pyarrow")
    return ds.sort(["source", "id"])


def data_files(directory: Path | str) -> list[Path | str]:
    """The parquet files of a dataset directory, in the order they were written."""
    return storage.list_files(directory, ".parquet")


def write_dataset(ds, directory: Path | str, single: Path | str | None, schema: pa.Schema) -> int:
    """Writes ``ds`` (a ``ray.data.Dataset`` or None: no rows) as ``directory``; with
    ``single``, also as that one file. Returns the rows written."""
    if storage.is_uri(directory):
        target = directory
        storage.remove(directory)
    else:
        directory = Path(directory)
        target = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    if ds is not None:
        ds.write_parquet(str(target))
    storage.make_dir(target)
    if not data_files(target):  # an empty output is still a readable dataset
        storage.write_parquet(schema.empty_table(), storage.join(target, "part-empty.parquet"))
    if target != directory:
        remove_outputs(directory)
        Path(target).rename(directory)
    if single is not None:
        return copy_to_file(directory, single, schema)
    return sum(_parquet(f).metadata.num_rows for f in data_files(directory))


def _parquet(path: Path | str) -> pq.ParquetFile:
    fs, p = storage.filesystem(path)
    return pq.ParquetFile(fs.open_input_file(p))


@contextmanager
def _output(path: Path | str):
    """A binary stream that becomes ``path`` whole when it closes (local: temp + rename)."""
    fs, p = storage.filesystem(path)
    if storage.is_uri(path):
        with fs.open_output_stream(p) as out:
            yield out
        return
    tmp = Path(p).with_name(f".{Path(p).name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as out:
        yield out
    tmp.rename(p)


def copy_to_file(directory: Path | str, path: Path | str, schema: pa.Schema) -> int:
    """Copies a dataset directory into one parquet file, a record batch at a time."""
    rows = 0
    with _output(path) as out, pq.ParquetWriter(out, schema) as writer:
        for f in data_files(directory):
            for batch in _parquet(f).iter_batches():
                writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
                rows += batch.num_rows
    return rows


def concat_rejects(run_dir: Path | str, *groups: list[dict]) -> int:
    """Writes ``rejects.jsonl``: the workers' reject parts (in name order), then ``groups``.

    Parts are copied a file at a time. Returns the number of lines taken from the parts.
    """
    parts = storage.list_files(storage.join(run_dir, REJECTS_DIR), ".jsonl")
    n = 0
    with _output(storage.join(run_dir, REJECTS)) as out:
        for part in parts:
            data = storage.read_bytes(part) or b""
            out.write(data)
            n += data.count(b"\n")
        for records in groups:
            for r in records:
                out.write(jsonl_line(r))
    return n


def part_lines(run_dir: Path | str) -> dict[str, int]:
    """Lines of the run's reject parts per kind: the part name's first two fields
    (``1-input``, ``2-duplicates``, ...)."""
    out: dict[str, int] = {}
    for part in storage.list_files(storage.join(run_dir, REJECTS_DIR), ".jsonl"):
        kind = "-".join(Path(str(part)).name.split("-")[:2])
        out[kind] = out.get(kind, 0) + (storage.read_bytes(part) or b"").count(b"\n")
    return out
