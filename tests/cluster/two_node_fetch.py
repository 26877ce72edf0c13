"""Run by ``test_fetch_on_every_node.py`` in its own process: Ray Serve LLM's node
initialization (``initialize_node``, what a vLLM replica runs before its engine starts) for an
engine whose placement group spans two Ray nodes, with the checkpoint on object storage.

The two nodes are two raylets on this machine (``ray.cluster_utils.Cluster``), each with a
resource of its own so the bundles land one per node. The engine's LLMConfig is ours
(``serve_llm.llm_config``); its callback is ``FetchCheckpoint`` with one addition: it records
the node it ran on. Prints one JSON line: the cluster's node ids, the nodes the callback ran
on, the nodes of the placement group, and the path the engine would load.

Usage: python two_node_fetch.py URI DEST MARKS_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from moaa_cluster.engines.fetch_checkpoint import FetchCheckpoint
from moaa_cluster.engines.serve_llm import llm_config
from moaa_cluster.engines.spec import ModelSpec

BUNDLES = [{"CPU": 0.5, "node_a": 1}, {"CPU": 0.5, "node_b": 1}]


class RecordingFetch(FetchCheckpoint):
    """FetchCheckpoint that also leaves a file named after the node it ran on."""

    def on_before_download_model_files_distributed(self) -> None:
        marks = Path(self.kwargs["marks"])
        (marks / ray.get_runtime_context().get_node_id()).write_text("ran")
        super().on_before_download_model_files_distributed()


def _initialize(config) -> str:
    """What a replica does first, inside its placement group: Serve LLM's node init."""
    from ray.llm._internal.serve.utils.node_initialization_utils import initialize_node

    asyncio.run(initialize_node(config))
    return config.get_engine_config().actual_hf_model_id


def main(uri: str, dest: str, marks: str) -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}}
    )
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        pg = placement_group(BUNDLES, strategy="STRICT_SPREAD")
        ray.get(pg.ready(), timeout=120)
        config = llm_config(ModelSpec(name="remote", path=uri))
        ours = config.callback_config  # what every engine of ours gets, checked as it is
        assert ours.callback_class == "moaa_cluster.engines.fetch_checkpoint.FetchCheckpoint"
        assert ours.callback_kwargs == {"uri": uri, "dest": dest}
        recording = type(ours)(
            callback_class=RecordingFetch, callback_kwargs={**ours.callback_kwargs, "marks": marks}
        )
        config = config.model_copy(
            update={
                "placement_group_config": {"bundles": BUNDLES, "strategy": "STRICT_SPREAD"},
                "callback_config": recording,
            }
        )
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        loaded = ray.get(
            ray.remote(_initialize)
            .options(num_cpus=0, scheduling_strategy=strategy)
            .remote(config),
            timeout=300,
        )
        print(
            json.dumps(
                {
                    "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
                    "ran_on": sorted(p.name for p in Path(marks).iterdir()),
                    "pg_nodes": sorted(
                        set(placement_group_table(pg)["bundles_to_node_id"].values())
                    ),
                    "loaded": loaded,
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
