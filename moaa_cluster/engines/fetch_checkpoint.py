"""The Ray Serve LLM callback that copies a checkpoint from object storage on each node of an
engine, before vLLM starts there.

Serve LLM runs ``on_before_download_model_files_distributed`` in one task on every node of
the engine's placement group (its own node-initialization step). This callback copies the
checkpoint at ``uri`` into ``dest`` there (``runs.model_cache.fetch_checkpoint``: atomic,
skipped when complete), and ``dest`` is the ``model_source`` the engine loads. Ray Serve LLM's
own ``s3://`` model source is not used: it caches by model id (not by URI and content), logs
a failed download and starts anyway, and knows only some schemes; this one reads with the same
pyarrow filesystems (and ``AWS_ENDPOINT_URL``) as the rest of a run.

Imported by Ray on the engine's nodes (``serve_llm.llm_config`` names it by path), not on the
driver's import path: it imports Serve LLM's callback base.
"""

from __future__ import annotations

import logging

from ray.llm._internal.common.callbacks.base import CallbackBase

from moaa_cluster.runs.model_cache import fetch_checkpoint

log = logging.getLogger(__name__)


class FetchCheckpoint(CallbackBase):
    """Copies ``uri`` to the node-local ``dest`` on every node of the engine."""

    def __init__(
        self,
        llm_config=None,
        raise_error_on_callback: bool = True,
        ctx_kwargs=None,
        *,
        uri: str,
        dest: str,
        **kwargs,
    ):
        super().__init__(llm_config, raise_error_on_callback, ctx_kwargs, **kwargs)
        self.uri = uri
        self.dest = dest

    def on_before_download_model_files_distributed(self) -> None:
        path = fetch_checkpoint(self.uri, self.dest)
        log.info("checkpoint %s is at %s on this node", self.uri, path)
