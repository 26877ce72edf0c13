"""Where a sweep's directories go when ``output_root`` is on object storage.

Hydra writes its own files (``multirun.yaml``, each job's directory) with local file calls:
for a URI ``output_root`` they go to a local directory named after it (:func:`hydra_root`, the
``moaa.hydra_root`` resolver the task configs' ``hydra.sweep.dir`` uses), and
:func:`point_dir` maps a job or sweep directory there back to the same place under the URI.
Imported by ``moaa_cluster.sweep`` for every Hydra task: standard library and OmegaConf only.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import OmegaConf

# Hydra's own files of a sweep whose output_root is a URI: here, relative to the working dir
HYDRA_URI_ROOT = Path("outputs", "hydra")


def is_uri(path: object) -> bool:  # runs.storage.is_uri, without importing pyarrow here
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def hydra_root(output_root: str) -> str:
    """Where Hydra keeps a sweep's own files for ``output_root``: ``output_root`` itself when
    it is a local path; for a URI, a local directory named after it
    (``s3://b/runs`` -> ``outputs/hydra/s3/b/runs``), so Hydra never makes a local ``s3:``.

    The ``moaa.hydra_root`` resolver the configs' ``hydra.sweep.dir`` uses.
    """
    output_root = str(output_root)
    if not is_uri(output_root):
        return output_root
    url = urlsplit(output_root)
    parts = [p for p in f"{url.netloc}/{url.path}".split("/") if p not in ("", ".", "..")]
    return str(HYDRA_URI_ROOT.joinpath(url.scheme, *parts))


def point_dir(job_dir: str | Path, output_root: str | None) -> str | Path:
    """A sweep point's run directory from Hydra's job (or sweep) directory ``job_dir``.

    ``job_dir`` itself (resolved) when ``output_root`` is local; when it is a URI and
    ``job_dir`` lies under :func:`hydra_root`, the same relative place under the URI. A
    ``hydra.sweep.dir`` set elsewhere by the user is kept as it is.
    """
    local = Path(str(job_dir)).resolve()
    if output_root is None or not is_uri(str(output_root)):
        return local
    try:
        rel = local.relative_to(Path(hydra_root(str(output_root))).resolve())
    except ValueError:
        return local
    return posixpath.join(str(output_root).rstrip("/"), *rel.parts)


OmegaConf.register_new_resolver("moaa.hydra_root", hydra_root, replace=True)


def resolved(path: str | Path) -> str | Path:
    """A run directory as kept here: a URI unchanged, a local path resolved."""
    return path if is_uri(path) else Path(str(path)).resolve()


def join(base: str | Path, name: str) -> str | Path:
    return posixpath.join(base, name) if is_uri(base) else Path(base) / name
