"""``@clustered``: cluster settings recorded on an agent class, and nothing else.

The decorator stores a :class:`ClusterSpec` on the class and adds the class to this
process's catalog of agent classes (what a node runtime may host). It wraps no method,
adds no base class and changes no behaviour: the class still works with no cluster at all,
and no etcd call sits on the path of its ordinary methods.

The lifecycle hooks a host calls are all optional; :class:`AgentHooks` lists them. They are
named ``on_start`` / ``on_stop`` (not ``start`` / ``stop``) so that a class's own methods of
those common names are never called by the cluster by accident.

``@action`` marks a method as callable across nodes (``cluster.call``) and as an LLM tool
(``cluster.tools()``); like ``@clustered`` it returns the function itself, unwrapped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from .._core.amounts import check_amounts
from .._core.keys import validate_id
from .._core.signals import patterns_of

__all__ = [
    "AgentContext",
    "AgentHooks",
    "ClusterSpec",
    "RestartPolicy",
    "action",
    "actions_of",
    "agent_classes",
    "call_hook",
    "cluster_spec",
    "clustered",
    "in_thread",
    "is_async_callable",
]

T = TypeVar("T", bound=type)

_SPEC_ATTR = "__foundation_cluster__"
_ACTION_ATTR = "__foundation_action__"
F = TypeVar("F", bound=Callable[..., Any])
_CATALOG: dict[str, type] = {}


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a node restarts a failed agent locally.

    Attributes:
        mode: ``"always"``, ``"on-failure"`` or ``"never"``.
        max_restarts: restarts allowed within ``window`` seconds before giving up.
        window: the window for ``max_restarts``, seconds.
        backoff: first delay between restarts, seconds (doubled each time, capped at 30 s).
    """

    mode: str = "on-failure"
    max_restarts: int = 5
    window: float = 60.0
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("always", "on-failure", "never"):
            raise ValueError(f"restart mode must be always, on-failure or never: {self.mode!r}")
        if self.max_restarts < 0 or self.window <= 0 or self.backoff < 0:
            raise ValueError("restart limits must be positive")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What ``@clustered`` records on a class.

    Attributes:
        name: the cluster-wide class name (what specs in etcd refer to).
        capabilities: what instances can do; registered with each instance.
        critical: whether the scheduler restarts instances on another node when theirs dies.
        placement: the placement strategy's name (``"least-loaded"`` by default).
        resources: resources an instance takes from its node's capacity.
        restart: the local restart policy.
        subscribe: topic patterns every instance is subscribed to from its spawn on.
    """

    name: str
    capabilities: frozenset[str] = frozenset()
    critical: bool = False
    placement: str = "least-loaded"
    resources: Mapping[str, int] = field(default_factory=dict)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What a hosted agent is told about itself in ``on_start``.

    Attributes:
        agent_id: the agent's id.
        node_id: the node hosting it.
        incarnation: the create revision of its live key.
        cluster: the :class:`Cluster` hosting it.
    """

    agent_id: str
    node_id: str
    incarnation: int
    cluster: Any


@runtime_checkable
class AgentHooks(Protocol):
    """The lifecycle a host calls. Every method is optional; sync or async both work.

    * ``on_start(ctx: AgentContext)`` after registration, before the host's body runs;
    * ``on_stop()`` when the host leaves, before unregistration;
    * ``run(ctx)`` while the agent is hosted by a node (``cluster.serve``);
    * ``handle_signal(signal, ctx)`` for each delivered signal (``ctx.send`` emits signals
      that go out only if the handling commits);
    * ``get_state() -> JSON`` and ``restore_state(state)`` for checkpoints.

    An ``async def`` hook (or ``@action``) runs on the event loop; a plain one runs in a
    worker thread, so that it may block without stalling the session's keepalives. A
    thread cannot be cancelled: when the agent stops, a plain hook still running is
    abandoned and runs on until it returns, so a plain ``run(ctx)`` must return by itself
    or check ``anyio.from_thread.check_cancelled()`` (which raises once the agent is
    stopped). Library calls from a plain hook go through
    ``anyio.from_thread.run(ctx.save_state, state)`` (or a ``foundation_etcd.sync``
    cluster). A plain ``run`` and a plain ``handle_signal`` of one agent may run at the
    same time, in two threads.
    """

    def on_start(self, ctx: AgentContext) -> Any:
        """Called once the agent is registered."""

    def on_stop(self) -> Any:
        """Called before the agent is unregistered."""


def clustered(
    name: str | None = None,
    *,
    capabilities: tuple[str, ...] | list[str] | frozenset[str] = (),
    critical: bool = False,
    placement: str = "least-loaded",
    resources: Mapping[str, int] | None = None,
    restart: RestartPolicy | None = None,
    subscribe: tuple[str, ...] | list[str] = (),
) -> Callable[[T], T]:
    """Record cluster settings on a class; return the class itself, unchanged.

    Args:
        name: the cluster-wide class name; the class's ``__qualname__`` by default.
        capabilities: capability names (ids) of every instance.
        critical: restart on another node when the hosting node dies.
        placement: placement strategy name.
        resources: positive integer amounts taken from the node's capacity.
        restart: local restart policy.
        subscribe: topic patterns (``*`` one segment, ``**`` any) every instance receives
            ``cluster.publish`` signals of, from its spawn on.

    Raises:
        InvalidIdError: a bad name, capability or topic pattern.
        ValueError: a non-positive resource amount, or a name already used by another class.
    """
    if name is not None:
        validate_id(name, "agent class name")
    caps = frozenset(validate_id(c, "capability") for c in capabilities)
    res = check_amounts(resources, "resource amount")
    patterns = patterns_of(subscribe)

    def decorate(cls: T) -> T:
        if not inspect.isclass(cls):
            raise TypeError("@clustered decorates classes")
        spec = ClusterSpec(
            name=validate_id(name or cls.__qualname__.replace("<", "").replace(">", ""), "name"),
            capabilities=caps,
            critical=critical,
            placement=placement,
            resources=res,
            restart=restart or RestartPolicy(),
            subscribe=patterns,
        )
        other = _CATALOG.get(spec.name)
        if other is not None and other.__module__ + other.__qualname__ != (
            cls.__module__ + cls.__qualname__
        ):
            raise ValueError(f"cluster name {spec.name!r} is already used by {other!r}")
        setattr(cls, _SPEC_ATTR, spec)
        _CATALOG[spec.name] = cls
        return cls

    return decorate


def action(fn: F) -> F:
    """Mark a method of a ``@clustered`` class as an action; return it unchanged.

    An action runs on whichever node hosts the agent when called with
    ``cluster.call(agent_id, name, args)``, with the same exactly-once effect on the
    agent's state as a signal. Its docstring and type hints become the tool definition
    ``cluster.tools()`` gives. The method keeps working as an ordinary method.

    Raises:
        TypeError: ``fn`` is not a function, or its name starts with ``_``.
    """
    if not inspect.isfunction(fn):
        raise TypeError("@action decorates functions (methods of a @clustered class)")
    if fn.__name__.startswith("_"):
        raise TypeError(f"action {fn.__name__!r}: a leading '_' is reserved")
    setattr(fn, _ACTION_ATTR, True)
    return fn


def actions_of(cls: type) -> dict[str, Callable[..., Any]]:
    """The actions of a class (its own and inherited), by name.

    Read once per class (a call looks them up on every signal): methods added to a class
    after its first signal are not seen.
    """
    try:
        return dict(_ACTIONS[cls])
    except (KeyError, TypeError):  # not read yet; or a class that cannot be weakly referenced
        pass
    out = _read_actions(cls)
    with contextlib.suppress(TypeError):
        _ACTIONS[cls] = out
    return dict(out)


_ACTIONS: weakref.WeakKeyDictionary[type, dict[str, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def _read_actions(cls: type) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and getattr(value, _ACTION_ATTR, False):
                out[name] = value
            elif name in out:
                del out[name]  # overridden by a method that is not an action
    return out


def cluster_spec(obj: object) -> ClusterSpec | None:
    """The :class:`ClusterSpec` of a decorated class or of an instance of one."""
    cls = obj if inspect.isclass(obj) else type(obj)
    spec = cls.__dict__.get(_SPEC_ATTR)
    return spec if isinstance(spec, ClusterSpec) else None


def agent_classes() -> dict[str, type]:
    """The classes decorated in this process, by cluster name (what a node may host)."""
    return dict(_CATALOG)


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine (an ``async def`` function or method)."""
    return inspect.iscoroutinefunction(fn) or (  # or an object whose __call__ is async
        callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )


_LONG_HOOKS: RunVar[anyio.CapacityLimiter] = RunVar("foundation_etcd_long_hooks")


async def in_thread(fn: Callable[[], Any], *, long: bool = False) -> Any:
    """Run ``fn()`` in a worker thread, so that blocking cannot stall the event loop.

    Cancelling the caller abandons the thread (``abandon_on_cancel``): the node shuts down
    at once, and the function runs on until it returns by itself. ``long`` (a ``run`` hook,
    which may never return) uses a limiter of its own, without a bound, so that long-lived
    hooks never starve the default thread limiter of the short ones.
    """
    limiter = None
    if long:
        try:
            limiter = _LONG_HOOKS.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(math.inf)
            _LONG_HOOKS.set(limiter)
    result = await anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)
    if inspect.isawaitable(result):  # a plain function that returned an awaitable
        result = await result
    return result


async def call_hook(agent: object, hook: str, *args: Any) -> Any:
    """Call ``agent.hook(*args)`` if the agent has it.

    An ``async def`` hook is awaited on the event loop; a plain one runs in a worker thread
    (:func:`in_thread`), never on the event loop, so that a blocking hook cannot stall the
    session's keepalives.
    """
    method = getattr(agent, hook, None)
    if method is None or not callable(method):
        return None
    if is_async_callable(method):
        return await method(*args)
    return await in_thread(functools.partial(method, *args), long=hook == "run")
