"""A real S3-compatible server for tests: moto in server mode, in its own process.

``moto_server(log)`` starts it on a free port with one bucket and yields a :class:`S3`:
the environment that points any S3 client at it (``AWS_ENDPOINT_URL`` and test credentials:
the product's ``runs.storage``, Ray Train, Ray Data and pyarrow read the same variables) and
a pyarrow filesystem to read back what a run wrote.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUCKET = "moaa-runs"


@dataclass
class S3:
    env: dict[str, str]
    fs: object  # pyarrow.fs.S3FileSystem
    bucket: str = BUCKET

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def key(self, uri: str) -> str:
        """The path of ``uri`` within :attr:`fs` (``<bucket>/...``)."""
        return uri.removeprefix("s3://")

    def read(self, uri: str) -> bytes:
        with self.fs.open_input_stream(self.key(uri)) as fh:
            return fh.read()

    def exists(self, uri: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.key(uri)).type != pafs.FileType.NotFound


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(log: Path) -> Iterator[S3]:
    """A moto S3 server with the bucket :data:`BUCKET`, stopped on exit."""
    import pyarrow.fs as pafs

    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.create_dir(BUCKET)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield S3(env, fs)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: SIGTERM can take longer
            proc.kill()
            proc.wait(30)
