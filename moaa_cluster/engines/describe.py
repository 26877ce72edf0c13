"""A model spec as a run's manifest records it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from moaa_cluster.engines.chat_template import system_mode
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.models.store import read_manifest


def model_record(spec: ModelSpec) -> dict:
    """A model spec for a manifest, with the checksums its prepared checkpoint recorded."""
    rec = asdict(spec)
    stored = read_manifest(Path(spec.path)) if spec.path and Path(spec.path).exists() else None
    rec["checksums"] = stored["files"] if stored else None
    try:  # how its system messages were sent: native, or folded into the first user turn
        rec["system_messages"] = system_mode(spec)
    except Exception as exc:  # a manifest must not fail a finished run
        rec["system_messages"] = f"unknown ({type(exc).__name__}: {exc})"
    return rec
