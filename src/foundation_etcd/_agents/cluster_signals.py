"""The signal and action methods of :class:`Cluster` (kept apart to keep each module short).

Guarantees are those of ``signals.py`` (sending) and ``delivery.py`` (handling); tools are
described from the specs in etcd, so any process can list and call the actions of agents
whose classes it never imported.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from .._coord.doorbells import Doorbells
from .._core.background import background_tasks
from .._core.config import Config
from .._core.errors import AgentNotFoundError, EtcdError, IncarnationLostError
from .._core.keys import Keyspace
from .._core.records import AgentSpec
from .._core.signals import Signal
from .._transport import Transport
from . import calls, dead_letters
from .agent import AgentContext, actions_of
from .dead_letters import DeadLetter
from .delivery import Deliverer
from .handlers import RetentionLease
from .registry import Registry
from .scheduler import Scheduler
from .signals import PublishResult, SendResult, Signals

__all__ = ["SignalMethods"]

log = logging.getLogger("foundation_etcd.signals")

_FOLLOW_DELAY = 0.2  # seconds between looks for a hosted agent's new registration
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(agent_id: str, action: str) -> str:
    """``{agent}__{action}`` in the alphabet LLM APIs accept (``[A-Za-z0-9_-]{1,64}``)."""
    name = _TOOL_NAME.sub("_", f"{agent_id}__{action}")
    if len(name) > 64 or name != f"{agent_id}__{action}":
        digest = hashlib.sha256(f"{agent_id}/{action}".encode()).hexdigest()[:8]
        name = f"{name[: 64 - 9]}-{digest}"
    return name


class SignalMethods:
    """Signals, calls, broadcast, tools, inboxes and dead letters of a :class:`Cluster`."""

    transport: Transport
    keyspace: Keyspace
    config: Config
    node_id: str
    doorbells: Doorbells | None
    _retention: RetentionLease | None = None

    if TYPE_CHECKING:  # provided by Cluster: what these methods use of it

        @property
        def registry(self) -> Registry: ...

        @property
        def signals(self) -> Signals: ...

        @property
        def scheduler(self) -> Scheduler: ...

    @asynccontextmanager
    async def _delivering(self, agent: object, agent_id: str) -> AsyncIterator[None]:
        """Deliver a locally hosted agent's signals while the block runs (``Cluster.host``).

        Only for agents with ``handle_signal`` or actions; it follows the registration to
        its new incarnation after a lease loss.
        """
        handles = callable(getattr(agent, "handle_signal", None)) or actions_of(type(agent))
        if self.doorbells is None or not handles:
            yield
            return
        async with background_tasks() as tg:
            tg.start_soon(self._deliver_hosted, agent, agent_id)
            yield

    async def _deliver_hosted(self, agent: object, agent_id: str) -> None:
        assert self.doorbells is not None
        if self._retention is None:
            self._retention = RetentionLease(self.transport, self.config.signal_retention)
        while True:
            reg = self.registry.owned().get(agent_id)
            if reg is not None:
                deliverer = Deliverer(
                    transport=self.transport,
                    keyspace=self.keyspace,
                    config=self.config,
                    doorbells=self.doorbells,
                    retention=self._retention,
                    envelope=self.signals.envelope,
                    ctx=AgentContext(agent_id, self.node_id, reg.incarnation, self),
                    agent=agent,
                    restored=None,
                    event=lambda *_, **__: None,
                )
                try:
                    await deliverer.run()
                except IncarnationLostError:
                    pass  # registered again under a new lease: follow the new incarnation
                except EtcdError as exc:
                    log.warning("delivery to hosted agent %s stopped: %s", agent_id, exc)
            await anyio.sleep(_FOLLOW_DELAY)

    async def send(
        self,
        agent_id: str,
        type: str,
        data: Any = None,
        *,
        signal_id: str | None = None,
        expires_in: float | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> SendResult:
        """Put a signal in ``agent_id``'s inbox; return once it is durable in etcd.

        Idempotent by ``signal_id``: sending an id again (after an ambiguous result) never
        delivers twice (``duplicate=True``). The agent handles it with
        ``handle_signal(signal, ctx)`` wherever it runs, one at a time in commit order.

        Args:
            agent_id: a spawned agent.
            type: what the signal means (``[A-Za-z0-9._:/-]``).
            data: the JSON payload (``Config.signal_max_bytes`` in all).
            signal_id: the id (unique per agent); generated when ``None``.
            expires_in: seconds after which it is dead-lettered instead of delivered.
            trace: W3C trace context (``traceparent``, ``tracestate``).

        Raises:
            AgentNotFoundError: the agent is not spawned (nothing written).
            InboxFullError: its inbox is at ``Config.signal_inbox_limit`` (nothing written).
            InvalidIdError, SerializationError, RequestTooLargeError: bad input, before I/O.
            AmbiguousResultError: etcd may have applied it: send the same id again.
        """
        return await self.signals.send(
            agent_id, type, data, signal_id=signal_id, expires_in=expires_in, trace=trace
        )

    async def publish(
        self, topic: str, type: str, data: Any = None, *, signal_id: str | None = None
    ) -> PublishResult:
        """Send one signal to every agent subscribed to a pattern that matches ``topic``.

        Each subscriber gets it with the guarantees of :meth:`send` (same id for all).

        Raises:
            InvalidIdError, SerializationError, RequestTooLargeError: bad input.
        """
        return await self.signals.publish(topic, type, data, signal_id=signal_id)

    async def subscribe(self, agent_id: str, patterns: Sequence[str]) -> None:
        """Set the topic patterns (``*`` one segment, ``**`` any) ``agent_id`` receives.

        Replaces the patterns given at spawn (``@clustered(subscribe=...)``).

        Raises:
            AgentNotFoundError: the agent is not spawned.
            InvalidIdError: a bad pattern.
        """
        await self.signals.set_subscriptions(agent_id, patterns)

    async def call(
        self,
        agent_id: str,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
    ) -> Any:
        """Run the ``@action`` method ``action`` of an agent, on whichever node hosts it.

        A signal with a reply: the action runs once, its effect on the agent's state and
        its reply committed together (an action that raises keeps no effect).

        Returns:
            The action's result (JSON).

        Raises:
            ActionError: the action raised; ``error_type`` and ``error_message`` say what
                (the error is also an instance of the builtin type of that name).
            CallTimeoutError: the caller's deadline (``anyio.fail_after``) ran out: the
                action may still run. Call again with the same ``call_id`` to wait for
                its one outcome.
            AgentNotFoundError, InboxFullError: as :meth:`send`.
        """
        return await calls.call(self.signals, agent_id, action, args, call_id=call_id)

    async def _specs(self) -> list[AgentSpec]:
        spec_view, _, _ = await self.scheduler.views()
        await spec_view.wait_for(await self.transport.revision())
        n = len(self.scheduler.spec_prefix)
        specs = (AgentSpec.read(kv.key[n:], kv.value) for kv in spec_view.items().values())
        return [s for s in specs if s is not None]  # unreadable ones: left out, with a warning

    async def tools(self) -> list[dict[str, Any]]:
        """The actions of every spawned agent, as tool definitions an LLM client takes.

        Each is ``{"name", "description", "parameters"}`` (a JSON Schema of the arguments,
        from the type hints; the description from the docstring), named
        ``{agent}__{action}`` (:meth:`call_tool` routes it).
        """
        out = []
        for spec in sorted(await self._specs(), key=lambda s: s.agent_id):
            for action, tool in sorted(spec.actions.items()):
                out.append({**tool, "name": tool_name(spec.agent_id, action)})
        return out

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None, **options: Any
    ) -> Any:
        """Call the action a tool name from :meth:`tools` stands for (see :meth:`call`).

        Raises:
            AgentNotFoundError: no spawned agent has an action of that tool name.
        """
        for spec in await self._specs():
            for action in spec.actions:
                if tool_name(spec.agent_id, action) == name:
                    return await self.call(spec.agent_id, action, arguments, **options)
        raise AgentNotFoundError(name, f"no spawned agent has a tool named {name!r}")

    async def inbox(self, agent_id: str, *, limit: int = 1000) -> list[Signal]:
        """The signals waiting for ``agent_id``, oldest first."""
        return await dead_letters.inbox(self.signals, agent_id, limit=limit)

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        """Signals given up on (failed too often, expired, undecodable), with the reason."""
        return await dead_letters.dead_letters(self.signals, agent_id)

    async def redrive(self, agent_id: str, signal_id: str) -> SendResult:
        """Send a dead letter again (to the end of the inbox, attempts reset).

        Raises:
            KeyError: no such dead letter.
            AgentNotFoundError, InboxFullError: as :meth:`send` (the dead letter stays).
            SignalError: the dead letter holds no signal that can be read.
        """
        return await dead_letters.redrive(self.signals, agent_id, signal_id)
