"""Calls: a signal with a reply, waited for; the action's error raised at the caller.

Guarantees:
    * The reply is the done record the handling transaction wrote: the result, or the
      action's error type and message (an action that raised kept no effect on state).
    * A call whose agent fails over mid-call completes on the new node (the signal waits
      in the inbox) or, if the caller stops waiting first, raises
      :class:`CallTimeoutError`: the action may still run, once. Calling again with the
      same ``call_id`` waits for that one outcome, never a second run.
    * A send whose answer was lost (a cut link, a paused member) is sent again with the
      same id until the caller's deadline, for at most :func:`resend_window` (five
      request timeouts): a duplicate if it was applied, never a second run, so the call
      goes on waiting for its one outcome. After that window it raises
      :class:`AmbiguousResultError` (call again with the same ``call_id``).
    * A dead-lettered call raises :class:`ActionError` with ``error_type="DeadLetter"``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Mapping
from typing import Any

import anyio

from .._core import codec as _codec
from .._core.config import Config
from .._core.errors import (
    ActionError,
    AmbiguousResultError,
    CallTimeoutError,
    EtcdUnavailableError,
    SerializationError,
)
from .._core.keys import validate_id
from .._core.kv import KeyValue
from .._core.signals import new_signal_id
from .dead_letters import dead_letter_of
from .protection import open_reply
from .signals import CALL_TYPE, SendResult, Signals

__all__ = ["call"]

log = logging.getLogger("foundation_etcd.signals")


async def call(
    s: Signals,
    agent_id: str,
    action: str,
    args: Mapping[str, Any] | None = None,
    *,
    call_id: str | None = None,
) -> Any:
    """Run ``action`` on the agent, wherever it is hosted; see :meth:`Cluster.call`."""
    validate_id(agent_id, "agent id")  # before its watches are opened
    validate_id(action, "action")
    if args is not None and not isinstance(args, Mapping):
        raise SerializationError("args", "must be a mapping of argument names to values")
    cid = new_signal_id() if call_id is None else validate_id(call_id, "call id")
    payload = {"action": action, "args": dict(args or {})}
    ks = s.keyspace
    try:
        # registered before the send: the agent's shared watches (see ``replies``)
        with s.replies.expect(agent_id, cid) as (desk, waiter):
            sent = await _send(s, agent_id, payload, cid)
            # watches created after the send may have missed the reply: read it once then
            look = sent.duplicate or await desk.ready() > sent.revision
            while True:
                if look:  # read the two keys; if neither is there yet, wait
                    look = False
                    done = await s.transport.get(ks.signal_done(agent_id, cid))
                    dead = await s.transport.get(ks.dead_letter(agent_id, cid))
                    kvs = [kv for kv in (done, dead) if kv is not None]
                else:
                    kvs, look = await waiter.wait()
                if kvs:
                    return _outcome(s, agent_id, action, cid, kvs[0])
    except anyio.get_cancelled_exc_class():
        if _deadline_passed():
            # the caller's deadline (anyio.fail_after): say the action may still run;
            # any other cancellation (a task group's) stays a cancellation
            raise CallTimeoutError(agent_id, action, cid) from None
        raise


def _deadline_passed() -> bool:
    """Whether a deadline of the caller's scopes has passed (not: a scope was cancelled).

    anyio's ``current_effective_deadline()`` reads ``-inf`` in any cancelled scope, a
    task group's as a deadline's, so the scopes' own deadlines are read (anyio's asyncio
    task state: a private structure; without it, any cancellation counts, as before).
    """
    now = anyio.current_time()
    try:
        from anyio._backends._asyncio import _task_states

        task = asyncio.current_task()
        scope = _task_states[task].cancel_scope if task is not None else None
        while scope is not None:
            if scope.deadline <= now:
                return True
            if scope.shield:
                return False
            scope = scope._parent_scope
        return False
    except (ImportError, KeyError, AttributeError):  # pragma: no cover - another anyio
        return anyio.current_effective_deadline() <= now


async def _send(s: Signals, agent_id: str, payload: dict[str, Any], cid: str) -> SendResult:
    """Send the call; one whose answer was lost is sent again with the same id.

    Sent again, an applied call is a duplicate (its inbox entry, done record or dead
    letter is there): it never runs twice. Once an answer was lost, a refusal for want of
    a connection is no answer either (the first may have been applied): sent again too.
    The caller's deadline bounds it (then :class:`CallTimeoutError`: it may run), and so
    does :func:`resend_window` from the first lost answer: after that the last error is
    raised (a done record outlives ``signal_retention`` only by a little, and a send
    after it would run the action again).
    """
    delay, since = 0.05, None
    while True:
        try:
            return await s.send(agent_id, CALL_TYPE, payload, signal_id=cid, reply=True)
        except (AmbiguousResultError, EtcdUnavailableError) as exc:
            if since is None and not isinstance(exc, AmbiguousResultError):
                raise  # refused before anything was sent: not sent
            now = anyio.current_time()
            since = now if since is None else since
            if now - since >= resend_window(s.config):
                if isinstance(exc, AmbiguousResultError):
                    raise
                raise AmbiguousResultError(
                    f"call {cid}: no answer to its send ({exc})", operation="txn"
                ) from exc
            log.info(
                "call %s to %s: no answer to its send (%s); sending it again", cid, agent_id, exc
            )
        await anyio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def resend_window(config: Config) -> float:
    """How long a call's send is sent again after its first lost answer (seconds).

    Five request timeouts (a cut link or a paused member for that long), and at most half
    of ``signal_retention``, so that every send again still finds the first one's record.
    """
    return min(5 * config.request_timeout, config.signal_retention / 2)


def _outcome(s: Signals, agent_id: str, action: str, cid: str, kv: KeyValue) -> Any:
    """The result a done record holds (or its error raised); a dead letter's error raised."""
    ks = s.keyspace
    if kv.key.startswith(ks.signals_done_prefix(agent_id)):
        done = _codec.decode(kv.value)
        return _reply_of(agent_id, action, open_reply(s.config.keyring, ks, agent_id, cid, done))
    letter = dead_letter_of(ks, kv)
    raise ActionError(agent_id, action, "DeadLetter", letter.reason)


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
