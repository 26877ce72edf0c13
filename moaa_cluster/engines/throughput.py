"""Throughput figures behind the planner's GPU-hours estimate (``conf/throughput/*.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError


@dataclass(frozen=True)
class Rate:
    """Generated tokens/s of one engine replica (its whole TP group) and where it comes from."""

    tokens_per_s: float
    source: str


def _rates(values: Mapping) -> dict[int, float]:
    try:
        out = {int(tp): float(v) for tp, v in values.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"throughput figures must map TP -> tokens/s, got {values!r}") from exc
    if not out or any(tp < 1 or v <= 0 for tp, v in out.items()):
        raise ConfigError(f"throughput figures must map TP >= 1 -> tokens/s > 0, got {values!r}")
    return out


def _at_tp(rates: dict[int, float], tp: int) -> tuple[float, str]:
    """The figure for ``tp``; else the nearest lower TP's, else the smallest TP's scaled down."""
    if tp in rates:
        return rates[tp], ""
    lower = [t for t in rates if t < tp]
    if lower:  # more GPUs than measured: at least as fast, so the lower figure is conservative
        t = max(lower)
        return rates[t], f", TP {t} figure"
    t = min(rates)
    return rates[t] * tp / t, f", TP {t} figure x {tp}/{t}"


class ThroughputTable:
    """Output tokens/s per engine by device, model and TP; user measurements come first.

    Lookup for a model on a device at a TP: ``measured`` (by model key or name), then the
    device's ``models`` (by key or name), then its ``classes`` (the first whose
    ``max_params_b`` covers the model). A TP without a figure takes the nearest lower TP's
    figure (conservative), or scales the smallest TP's figure down linearly.
    """

    def __init__(self, name: str, devices: Mapping, measured: Mapping | None = None):
        self.name = name
        self.devices: dict[str, dict] = {}
        for device, table in (devices or {}).items():
            models = {
                str(k): (
                    _rates(v.get("tokens_per_s", v)) if isinstance(v, Mapping) else _rates(v),
                    (v.get("source") if isinstance(v, Mapping) else None) or "throughput table",
                )
                for k, v in (table.get("models") or {}).items()
            }
            classes = []
            for entry in table.get("classes") or []:
                if "max_params_b" not in entry or "tokens_per_s" not in entry:
                    raise ConfigError(
                        f"throughput {name} {device}: a class needs max_params_b and tokens_per_s"
                    )
                label = f"<= {entry['max_params_b']:g}B class"
                if entry.get("proxy"):
                    label += f": {entry['proxy']}"
                classes.append((float(entry["max_params_b"]), _rates(entry["tokens_per_s"]), label))
            self.devices[str(device)] = {"models": models, "classes": sorted(classes)}
        self.measured = {str(k): _rates(v) for k, v in (measured or {}).items()}

    @classmethod
    def from_dict(cls, cfg: Mapping, measured: Mapping | None = None) -> ThroughputTable:
        """From ``conf/throughput/*.yaml`` (``name``, ``devices``) and the plan's ``measured``."""
        return cls(str(cfg.get("name", "throughput")), cfg.get("devices") or {}, measured)

    def lookup(self, device: str, key: str, spec: ModelSpec, tp: int) -> Rate | None:
        """The figure for one engine replica, or None when the table has nothing that fits."""
        for ident in (key, spec.name):
            if ident in self.measured:
                value, how = _at_tp(self.measured[ident], tp)
                return Rate(value, f"measured{how}")
        table = self.devices.get(device)
        if table is None:
            return None
        for ident in (key, spec.name):
            if ident in table["models"]:
                rates, source = table["models"][ident]
                value, how = _at_tp(rates, tp)
                return Rate(value, f"{source}{how}")
        if spec.params_b is None:
            return None
        for max_params, rates, label in table["classes"]:
            if spec.params_b <= max_params:
                value, how = _at_tp(rates, tp)
                return Rate(value, f"{label}{how}")
        return None
