"""Placement: which live node should host an agent. Pure functions, no I/O.

A :class:`PlacementStrategy` receives the request and every live node's load and returns a
node id. Every built-in strategy first keeps the nodes that *fit*: they are not cordoned, they
have every required capability and enough free capacity of every requested resource (a
resource a node does not announce counts as zero). The commit of a choice is the caller's
single etcd transaction, which re-checks that nothing was placed on that node since the
loads were read and that it is still not cordoned.

Built-in strategies (by name, for ``@clustered(placement=...)`` and ``spawn(placement=...)``):

* ``least-loaded`` / ``spread``: fewest agents, then most free capacity (spreads agents);
* ``pack``: most agents that still fit (fills nodes one by one);
* ``best-fit``: least free capacity left after placing (resource-aware bin packing);
* ``pinned:{node_id}``: exactly that node, if it fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .errors import NoNodeFitsError

__all__ = [
    "STRATEGIES",
    "NodeLoad",
    "PlacementRequest",
    "PlacementStrategy",
    "fit_reason",
    "place",
    "strategy_named",
]


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A live node and what is placed on it.

    Attributes:
        node_id: the node.
        capacity: resource to amount the node announces.
        used: resource to amount taken by agents placed on it.
        capabilities: what the node can host.
        agents: how many agents are placed on it.
        cordoned: whether the node takes no new placements (``Cluster.cordon``).
    """

    node_id: str
    capacity: Mapping[str, int] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    agents: int = 0
    cordoned: bool = False

    def free(self, resource: str) -> int:
        """Capacity of ``resource`` not taken yet."""
        return self.capacity.get(resource, 0) - self.used.get(resource, 0)

    def free_total(self) -> int:
        """Sum of free capacity over every announced resource."""
        return sum(self.free(r) for r in self.capacity)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What an agent needs from its node.

    Attributes:
        agent_id: the agent.
        resources: resource to amount it takes from its node's capacity.
        requires: capabilities the node must have.
        exclude: nodes not to use (e.g. the node that just died).
    """

    agent_id: str
    resources: Mapping[str, int] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()


@runtime_checkable
class PlacementStrategy(Protocol):
    """Chooses a node for a request among live nodes; ``None`` when none will do."""

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeLoad]) -> str | None:
        """Return the chosen node id, or ``None``."""


def fit_reason(request: PlacementRequest, node: NodeLoad) -> str | None:
    """Why ``node`` cannot host ``request`` (``None`` when it fits)."""
    if node.node_id in request.exclude:
        return "excluded"
    if node.cordoned:
        return "cordoned"
    missing = sorted(request.requires - node.capabilities)
    if missing:
        return f"lacks capabilities {', '.join(missing)}"
    for resource, amount in request.resources.items():
        if node.free(resource) < amount:
            return f"{resource}: needs {amount}, {node.free(resource)} free"
    return None


def _fitting(request: PlacementRequest, nodes: Iterable[NodeLoad]) -> list[NodeLoad]:
    return [n for n in nodes if fit_reason(request, n) is None]


@dataclass(frozen=True, slots=True)
class _KeyStrategy:
    key: Callable[[PlacementRequest, NodeLoad], tuple[float, ...]]

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeLoad]) -> str | None:
        fitting = _fitting(request, nodes)
        if not fitting:
            return None
        return min(fitting, key=lambda n: (*self.key(request, n), n.node_id)).node_id


def _after(request: PlacementRequest, node: NodeLoad) -> int:
    return node.free_total() - sum(request.resources.get(r, 0) for r in node.capacity)


LEAST_LOADED = _KeyStrategy(lambda r, n: (n.agents, -n.free_total()))
PACK = _KeyStrategy(lambda r, n: (-n.agents, n.free_total()))
BEST_FIT = _KeyStrategy(lambda r, n: (_after(r, n), n.agents))


@dataclass(frozen=True, slots=True)
class Pinned:
    """Exactly one node (if it fits)."""

    node_id: str

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeLoad]) -> str | None:
        """Return the pinned node if it is live and fits."""
        for n in nodes:
            if n.node_id == self.node_id and fit_reason(request, n) is None:
                return n.node_id
        return None


STRATEGIES: dict[str, PlacementStrategy] = {
    "least-loaded": LEAST_LOADED,
    "spread": LEAST_LOADED,
    "pack": PACK,
    "best-fit": BEST_FIT,
}


def strategy_named(name: str | PlacementStrategy) -> PlacementStrategy:
    """Resolve a strategy name (or pass a strategy through).

    Raises:
        ValueError: an unknown name.
    """
    if not isinstance(name, str):
        if not isinstance(name, PlacementStrategy):
            raise TypeError(f"not a placement strategy: {name!r}")
        return name
    if name.startswith("pinned:"):
        return Pinned(name.split(":", 1)[1])
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join([*STRATEGIES, "pinned:{node_id}"])
        raise ValueError(f"unknown placement strategy {name!r}; known: {known}") from None


def place(request: PlacementRequest, nodes: Sequence[NodeLoad], strategy: PlacementStrategy) -> str:
    """Choose a node for ``request``.

    Raises:
        NoNodeFitsError: no live node fits, with each node's reason.
    """
    chosen = strategy.choose(request, nodes)
    if chosen is None:
        reasons = {n.node_id: fit_reason(request, n) or "not chosen" for n in nodes}
        raise NoNodeFitsError(request.agent_id, reasons)
    return chosen
