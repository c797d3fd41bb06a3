"""Calls: a signal with a reply, waited for; the action's error raised at the caller.

Guarantees:
    * The reply is the done record the handling transaction wrote: the result, or the
      action's error type and message (an action that raised kept no effect on state).
    * A call whose agent fails over mid-call completes on the new node (the signal waits
      in the inbox) or, if the caller stops waiting first, raises
      :class:`CallTimeoutError`: the action may still run, once. Calling again with the
      same ``call_id`` waits for that one outcome, never a second run.
    * A dead-lettered call raises :class:`ActionError` with ``error_type="DeadLetter"``.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

import anyio

from .._coord.doorbells import Bell
from .._core import codec as _codec
from .._core.errors import ActionError, CallTimeoutError, SerializationError
from .._core.keys import validate_id
from .._core.kv import KeyValue
from .._core.signals import new_signal_id
from .dead_letters import dead_letter_of
from .protection import open_reply
from .signals import CALL_TYPE, Signals

__all__ = ["call"]


async def call(
    s: Signals,
    agent_id: str,
    action: str,
    args: Mapping[str, Any] | None = None,
    *,
    call_id: str | None = None,
) -> Any:
    """Run ``action`` on the agent, wherever it is hosted; see :meth:`Cluster.call`."""
    validate_id(action, "action")
    if args is not None and not isinstance(args, Mapping):
        raise SerializationError("args", "must be a mapping of argument names to values")
    cid = new_signal_id() if call_id is None else validate_id(call_id, "call id")
    payload = {"action": action, "args": dict(args or {})}
    ks = s.keyspace
    done_key, dead_key = ks.signal_done(agent_id, cid), ks.dead_letter(agent_id, cid)
    # watches from *now*, made before the send: etcd serves a watch that starts in the past
    # from its sync loop (up to 100 ms late), one that starts now at once
    done_bell = s.bells.watch(done_key, None, -1, no_delete=True)
    dead_bell = s.bells.watch(dead_key, None, -1, no_delete=True)
    try:
        sent = await s.send(agent_id, CALL_TYPE, payload, signal_id=cid, reply=True)
        created = max(await done_bell.ready(), await dead_bell.ready())
        # a watch created after the send may have missed the reply: read it once then
        look_first = sent.duplicate or created > sent.revision
        return await _reply(s, agent_id, action, (done_bell, dead_bell), look_first)
    except anyio.get_cancelled_exc_class():
        if anyio.current_effective_deadline() <= anyio.current_time():
            # the caller's deadline (anyio.fail_after): say the action may still run
            raise CallTimeoutError(agent_id, action, cid) from None
        raise
    finally:
        done_bell.close()
        dead_bell.close()


async def _reply(
    s: Signals, agent_id: str, action: str, bells: tuple[Bell, Bell], look_first: bool
) -> Any:
    """Wait for the call's done record (or dead letter) on its two bells.

    Nothing is read from etcd unless ``look_first`` or a bell says it missed events.
    """
    done_bell, dead_bell = bells
    done_key, dead_key = done_bell.key, dead_bell.key
    arrived: list[KeyValue] = []
    missed = look_first
    while True:
        if missed:
            arrived.extend(kv for kv in [await s.transport.get(done_key)] if kv is not None)
            arrived.extend(kv for kv in [await s.transport.get(dead_key)] if kv is not None)
        for kv in arrived:
            if kv.key == done_key:
                done = _codec.decode(kv.value)
                ks, sid = s.keyspace, done_key.rsplit(b"/", 1)[-1].decode()
                reply = open_reply(s.config.keyring, ks, agent_id, sid, done)
                return _reply_of(agent_id, action, reply)
            letter = dead_letter_of(s.keyspace, kv)
            raise ActionError(agent_id, action, "DeadLetter", letter.reason)
        missed = False
        async with anyio.create_task_group() as tg:

            async def ring(bell: Bell) -> None:
                nonlocal missed
                events = await bell.wait()
                arrived.extend(ev.kv for ev in events)
                missed = missed or bell.missed or not events
                tg.cancel_scope.cancel()

            tg.start_soon(ring, done_bell)
            tg.start_soon(ring, dead_bell)


_ERROR_TYPES: dict[str, type[ActionError]] = {}


def _error_type(name: str) -> type[ActionError]:
    """An :class:`ActionError` that is also the builtin exception ``name``, if there is one."""
    cached = _ERROR_TYPES.get(name)
    if cached is not None:
        return cached
    base = getattr(builtins, name, None)
    made: type[ActionError] = ActionError
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        try:
            made = type(name, (ActionError, base), {"__module__": "foundation_etcd"})
        except TypeError:  # a builtin whose layout cannot be mixed in (OSError...)
            made = ActionError
    _ERROR_TYPES[name] = made
    return made


def _reply_of(agent_id: str, action: str, reply: Any) -> Any:
    """The result in a done record's reply, or the action's error raised."""
    if not isinstance(reply, dict):
        raise ActionError(agent_id, action, "NoReply", "the signal was handled without a reply")
    if "error" in reply:
        err = reply["error"]
        name, message = str(err.get("type", "Exception")), str(err.get("message", ""))
        raise _error_type(name)(agent_id, action, name, message)
    return reply.get("result")
