"""Which engines are resident together: packing replicas into nodes, and splitting a step
into waves.

:func:`first_fit_waves` is the one wave function: ``moaa plan`` splits a step with it and
``pipeline.layered`` (``moaa synth`` layer by layer) groups a layer's models into passes with
it, so the plan a user reads is the plan that runs. It sees the cluster through a
:class:`Capacity`: the planner's is :func:`node_capacity` (its sized engines packed into the
inventory's nodes), synth's is the pre-flight check (``engines.host.preflight_capacity``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from moaa_cluster.engines.placement.fit import EnginePlan
from moaa_cluster.engines.placement.inventory import Inventory
from moaa_cluster.errors import ConfigError


@dataclass(frozen=True)
class Wave:
    """Engines resident together, and which steps of which phase they serve."""

    label: str
    engines: tuple[str, ...]
    nodes: tuple[tuple[str, ...], ...]  # engine keys per node (a replica appears once each)
    phase: int | None  # None: every phase (resident)
    steps: tuple[int, ...]  # step indices within the phase (all, when resident)
    gpus: int = 0
    memory_gb: float = 0.0


def pack(keys: Sequence[str], engines: Mapping[str, EnginePlan], inv: Inventory):
    """First-fit decreasing of engine replicas into nodes; None when they do not fit."""
    items = []
    for key in keys:
        e = engines[key]
        if e.external:
            continue
        size = e.need_gb if inv.on_cpu else float(e.tp)
        items += [(size, key)] * e.replicas
    items.sort(key=lambda item: -item[0])
    cap = (inv.cpu_memory_gb or float("inf")) if inv.on_cpu else float(inv.gpus_per_node)
    free = [cap] * inv.nodes
    placed: list[list[str]] = [[] for _ in range(inv.nodes)]
    for size, key in items:
        for n in range(inv.nodes):
            if size <= free[n] + 1e-9:
                free[n] -= size
                placed[n].append(key)
                break
        else:
            return None
    return tuple(tuple(p) for p in placed)


def make_wave(label, keys, engines, inv, phase, steps) -> Wave | None:
    """The stage holding ``keys`` together, or None when they do not pack into the nodes."""
    nodes = pack(keys, engines, inv)
    if nodes is None:
        return None
    keys = tuple(k for k in keys if not engines[k].external)
    return Wave(
        label=label,
        engines=keys,
        nodes=nodes,
        phase=phase,
        steps=tuple(steps),
        gpus=sum(engines[k].gpus for k in keys),
        memory_gb=sum(engines[k].need_gb * engines[k].replicas for k in keys),
    )


def demand(keys: Iterable[str], engines: Mapping[str, EnginePlan], inv: Inventory) -> str:
    """What ``keys`` ask of the inventory together, engine by engine (for refusals)."""
    keys = [k for k in keys if not engines[k].external]
    if inv.on_cpu:
        total = sum(engines[k].need_gb * engines[k].replicas for k in keys)
        parts = ", ".join(f"{engines[k].name} {engines[k].need_gb:.1f}" for k in keys)
        return f"{total:.1f} GiB of RAM ({parts})"
    total = sum(engines[k].gpus for k in keys)
    parts = ", ".join(f"{engines[k].name} {engines[k].gpus}" for k in keys)
    return f"{total} GPUs ({parts})"


def engine_size(e: EnginePlan, inv: Inventory) -> float:
    """An engine's share of the inventory when waves are filled: GPUs, or GiB of RAM on CPU."""
    return e.need_gb if inv.on_cpu else float(e.gpus)


def _fits_anything(keys: Sequence[str]) -> None:
    return None


def _no_size(key: str) -> float:
    return 0.0


def _hosted(key: str) -> bool:
    return True


@dataclass(frozen=True)
class Capacity:
    """The cluster as :func:`first_fit_waves` sees it.

    The defaults (every engine size 0, everything fits) are a cluster the planner cannot
    see, such as a config without an inventory (``cluster=ray_address``).

    Attributes:
        size: ``size(key)``: an engine's share of the cluster; the biggest is placed first.
        fits: ``fits(keys)`` returns None, or raises ``ConfigError`` saying why those
            engines cannot be resident together.
        hosted: ``hosted(key)``: the run starts this engine (False: an external server,
            never resident).
    """

    size: Callable[[str], float] = _no_size
    fits: Callable[[Sequence[str]], None] = _fits_anything
    hosted: Callable[[str], bool] = _hosted

    def accepts(self, keys: Sequence[str]) -> bool:
        try:
            self.fits(keys)
        except ConfigError:
            return False
        return True


def node_capacity(engines: Mapping[str, EnginePlan], inv: Inventory) -> Capacity:
    """The planner's :class:`Capacity`: sized engines packed into the inventory's nodes."""

    def fits(keys: Sequence[str]) -> None:
        if pack(keys, engines, inv) is not None:
            return
        if len(keys) == 1:  # only its replicas can exceed the nodes
            e = engines[keys[0]]
            raise ConfigError(
                f"model {e.name}: {e.replicas} replicas do not fit {inv.describe()}; "
                f"lower its replicas"
            )
        raise ConfigError(f"together they need {demand(keys, engines, inv)}")

    return Capacity(
        size=lambda key: engine_size(engines[key], inv),
        fits=fits,
        hosted=lambda key: not engines[key].external,
    )


def first_fit_waves(
    keys: Sequence[str],
    capacity: Capacity,
    before: Iterable[str] = (),
    after: Iterable[str] = (),
) -> list[tuple[str, ...]]:
    """Splits one step's engines into waves that fit together, first-fit decreasing by size.

    All of them fit at once: one wave. Otherwise the biggest engine goes first, and each
    engine joins the first wave it fits with, or opens a new one. A wave that shares an
    engine with ``before`` runs first and one that shares an engine with ``after`` last, so
    that engine stays loaded across the boundary. Within a wave the keys keep their order in
    ``keys``.

    Args:
        keys: The step's distinct model keys, in seat order.
        capacity: Engine sizes and the fit check.
        before: Engines resident before this step (the previous stage's; external servers
            among them do not count).
        after: Engines the next step needs.

    Raises:
        ConfigError: An engine does not fit even alone (``capacity.fits``'s reason).
    """
    if capacity.accepts(keys):
        return [tuple(keys)]
    order = sorted(keys, key=lambda k: -capacity.size(k))
    waves: list[list[str]] = []
    for key in order:
        for wave in waves:
            if capacity.accepts([*wave, key]):
                wave.append(key)
                break
        else:
            capacity.fits([key])  # alone it must fit, or the step cannot run here at all
            waves.append([key])
    # keep an engine loaded across the stage boundary when a wave shares it with a neighbour
    prev, nxt = {k for k in before if capacity.hosted(k)}, set(after)
    waves.sort(key=lambda w: (not set(w) & prev, bool(set(w) & nxt)))
    return [tuple(k for k in keys if k in wave) for wave in waves]
