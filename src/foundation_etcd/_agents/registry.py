"""Agent registry: live agents behind the session lease, looked up by id or capability.

An agent is *live* while its key ``agents/live/{agent_id}`` exists. The key is written with
create-if-absent (``create_revision == 0``) under the registering process's session lease;
its create revision is the registration's **incarnation**.

Guarantees:
    * At most one live registration per id at any revision: a second ``register`` raises
      :class:`AgentExistsError` naming the holder.
    * A crashed process's registrations vanish with its lease, all at one revision, at most
      one TTL after its last keepalive.
    * Lookups by id or capability from memory (:meth:`Registry.get`, :meth:`Registry.find`)
      reflect the watched view; :meth:`Registry.lookup` is a linearizable read.
    * The watched view is opened at ``connect`` unless ``connect(watch_agents=False)``;
      then registering, unregistering and :meth:`Registry.lookup` need no view, the first
      :meth:`Registry.open`, :meth:`Registry.wait_for` or :meth:`Registry.watch` opens it,
      and reading from memory before that raises :class:`ConfigurationError` (never an
      empty answer that looks true).
    * Unregister and metadata updates are guarded by the incarnation (never another's key).
      A register or unregister without an answer leaves no live agent: the key is deleted
      in the background while the lease lives, unless registered here again (late_writes).
    * On session loss the registrations are cancelled with the lease and come back under the
      new lease by themselves, with new incarnations. If another process took an id in
      between, that registration is dropped and reported (``Registry.conflicts``).
    * Metadata is JSON of at most 64 KiB, checked before anything is written. A key or value
      the library would not write is left out of the view (``_core/registrations.py``).
    * Registrations and removals made at once (many tasks, :meth:`Registry.register_many`,
      re-registration) go as nested transactions of one (``_coord/coalesce.py``), each with
      its own compare and result, at one revision (incarnations of agents may be equal).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._coord.coalesce import Coalescer
from .._coord.late_writes import delete_left_key, may_be_applied
from .._coord.session import Lease, Session
from .._coord.watch import ChangeKind, ViewChange, WatchedView
from .._core.codec import json_object
from .._core.errors import (
    AgentExistsError,
    AgentNotFoundError,
    ConfigurationError,
    EtcdError,
    RegistrationsFailedError,
)
from .._core.keys import Keyspace, validate_id, validate_ids
from .._core.kv import Compare, KeyValue, Op
from .._core.registrations import (
    AgentIndex,
    AgentInfo,
    Registration,
    agent_id_of,
    create_txn,
    created,
    drop,
    encode_registration,
    hold,
    parse_registration,
    prepare,
    prepare_many,
    unwatched,
)
from .._core.registrations import OwnedRegistration as _Owned
from .._transport import Transport

__all__ = ["AgentChange", "AgentInfo", "Registration", "Registry"]

log = logging.getLogger("foundation_etcd.registry")


@dataclass(frozen=True, slots=True)
class AgentChange:
    """A change of the registry: ``kind`` is added, updated or removed."""

    kind: ChangeKind
    agent: AgentInfo


class Registry:
    """Agents by id and capability. Obtain it from ``Cluster.registry``."""

    def __init__(
        self,
        transport: Transport,
        session: Session,
        keyspace: Keyspace,
        node_id: str,
        view: WatchedView | None,
        writes: Coalescer | None = None,
        *,
        views: Callable[[bytes], Awaitable[WatchedView]] | None = None,
    ) -> None:
        self._t = transport
        # registrations and removals from many tasks at once go together (coalesce.py)
        self._writes = writes if writes is not None else Coalescer(transport)
        self._session = session
        self._ks = keyspace
        self._node_id = node_id
        self._view: WatchedView | None = None
        self._views_of = views
        self._prefix = keyspace.agents_live_prefix()
        self._by_id = AgentIndex()
        self._agents = self._by_id.agents  # read on every lookup: one attribute less
        self._owned: dict[str, _Owned] = {}
        self._leaving: set[str] = set()  # unregistering: a left key's watcher keeps off
        self.conflicts: list[AgentExistsError] = []
        if view is not None:
            self._attach(view)
        session.on_renewed(self._reregister_all)

    # the view ------------------------------------------------------------------------------
    def _attach(self, view: WatchedView) -> None:
        self._view = view
        for kv in view.items().values():
            self._index(kv)
        view.on_change(self._on_change)

    @property
    def watching(self) -> bool:
        """Whether the agents view is open (reads from memory work)."""
        return self._view is not None

    async def open(self) -> None:
        """Open the agents view (once) if ``connect(watch_agents=False)`` left it closed.

        Raises:
            ConfigurationError: this registry was built without a way to open its view.
        """
        await self._opened()

    async def _opened(self) -> WatchedView:
        if self._view is None:
            if self._views_of is None:
                raise ConfigurationError("registry", "built without a way to open its agents view")
            view = await self._views_of(self._prefix)
            if self._view is None:  # another task may have attached it meanwhile
                self._attach(view)
        assert self._view is not None
        return self._view

    # the in-memory index -------------------------------------------------------------------
    def _parse(self, kv: KeyValue) -> AgentInfo | None:
        return parse_registration(kv.key[len(self._prefix) :], kv)

    def _index(self, kv: KeyValue) -> None:
        info = self._parse(kv)  # None (and a warning): a key or value the library never writes
        if info is None:  # (its id checked again: a value rewritten as garbage leaves the view)
            self._by_id.remove(agent_id_of(kv.key[len(self._prefix) :]))
        else:
            self._by_id.put(info)

    def _on_change(self, changes: list[ViewChange]) -> None:
        for c in changes:
            if c.kind is ChangeKind.REMOVED:
                self._by_id.remove(agent_id_of(c.key[len(self._prefix) :]))
            else:
                self._index(c.kv)

    # reading -------------------------------------------------------------------------------
    def get(self, agent_id: str) -> AgentInfo | None:
        """The agent from the watched view (no I/O), or ``None``.

        Raises:
            ConfigurationError: the view is not open (``connect(watch_agents=False)``).
        """
        if self._view is None:
            raise unwatched()
        return self._agents.get(agent_id)

    def find(self, *capabilities: str) -> list[AgentInfo]:
        """Agents having every one of ``capabilities``, from memory, sorted by id.

        Raises:
            ConfigurationError: the view is not open (``connect(watch_agents=False)``).
        """
        if self._view is None:
            raise unwatched()
        return self._by_id.find(capabilities)

    def all(self) -> list[AgentInfo]:
        """Every live agent, from memory, sorted by id."""
        return self.find()

    def __len__(self) -> int:
        if self._view is None:
            raise unwatched()
        return len(self._agents)

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        """The agent as etcd has it now (a linearizable read)."""
        kv = await self._t.get(self._ks.agent_live(agent_id))
        return None if kv is None else self._parse(kv)

    async def wait_for(self, revision: int) -> None:
        """Wait until the in-memory view reflects ``revision`` (opening it if closed)."""
        await (self._view or await self._opened()).wait_for(revision)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[MemoryObjectReceiveStream[list[AgentChange]]]:
        """Receive each batch of registry changes after this call, in order."""

        def convert(c: ViewChange) -> AgentChange | None:
            info = self._parse(c.kv)
            return None if info is None else AgentChange(c.kind, info)

        view = await self._opened()
        async with view.subscribe_converted(convert) as changes:
            yield changes

    # writing -------------------------------------------------------------------------------
    def owned(self) -> dict[str, Registration]:
        """The registrations this process holds now, by agent id."""
        return {a: o.registration for a, o in self._owned.items() if o.registration is not None}

    async def _create(self, agent_id: str, owned: _Owned, lease: Lease) -> Registration:
        key = self._ks.agent_live(agent_id)
        for _ in range(2):  # an orphan of this lease (a lost answer) is deleted, then again
            lease.ensure_alive()
            res = await self._writes.txn(*create_txn(key, owned.value, lease.id))
            old = None if res.succeeded else res.range(0).first
            if old is None or old.lease != lease.id:
                break
            await self._writes.txn(
                [Compare.create_revision(key) == old.create_revision], [Op.delete(key)]
            )
        return created(agent_id, key, res, lease.id)

    async def _create_many(
        self, batch: dict[str, _Owned], lease: Lease
    ) -> dict[str, Registration | Exception]:
        """Create many registrations at once (``Coalescer.txn_many``); each its own answer."""
        keys = [self._ks.agent_live(a) for a in batch]
        txns = [create_txn(k, o.value, lease.id) for k, o in zip(keys, batch.values(), strict=True)]
        lease.ensure_alive()
        answers = await self._writes.txn_many(txns)
        out: dict[str, Registration | Exception] = {}
        for (agent_id, owned), key, res in zip(batch.items(), keys, answers, strict=True):
            if isinstance(res, Exception):
                out[agent_id] = res
                continue
            try:
                out[agent_id] = owned.registration = created(agent_id, key, res, lease.id)
            except AgentExistsError as exc:
                out[agent_id] = exc
        return out

    async def register(
        self,
        agent_id: str,
        *,
        capabilities: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        class_name: str = "",
        persistent: bool = True,
    ) -> Registration:
        """Register a live agent under this process's session lease.

        One transaction: create-if-absent of ``agents/live/{agent_id}``. A ``persistent``
        registration comes back by itself after a lease loss; a non-persistent one (used by
        the node runtime, which restarts its agents itself) is dropped with the lease.

        Every argument is checked before anything is sent; the error names it.

        Raises:
            InvalidIdError: a bad agent id, capability name, or ``capabilities`` that is
                not an iterable of names.
            SerializationError: ``meta`` that is not a mapping with str keys, or not JSON.
            RequestTooLargeError: metadata over 64 KiB.
            TypeError: ``class_name`` is not a str.
            AgentExistsError: the id is live already (the holder is named).
        """
        validate_id(agent_id, "agent id")
        caps = validate_ids(capabilities, "capability", "capabilities")
        owned = prepare(self._node_id, caps, class_name, meta, persistent)  # before any I/O
        hold(self._owned, {agent_id: owned}, self._node_id)
        lease = None
        try:
            lease = await self._session.wait_lease()
            owned.registration = await self._create(agent_id, owned, lease)
        except BaseException as exc:
            drop(self._owned, {agent_id: owned})
            self._left((agent_id,), lease, exc)
            raise
        if not persistent:
            lease.on_lost(lambda _: drop(self._owned, {agent_id: owned}))
        return owned.registration

    async def register_many(
        self,
        agents: Mapping[str, Mapping[str, Any] | None],
        *,
        capabilities: Iterable[str] = (),
        class_name: str = "",
        persistent: bool = True,
    ) -> dict[str, Registration]:
        """Register many live agents at once; ``agents`` maps each id to its metadata.

        Each as :meth:`register` would, all with the same capabilities and class, sent as
        nested transactions in as few requests as etcd allows (127 agents per request),
        with no task per agent. Every argument is checked before anything is sent.

        Returns:
            The registrations, in the order of ``agents``.

        Raises:
            InvalidIdError, SerializationError, RequestTooLargeError, TypeError: bad input,
                as :meth:`register` raises it (nothing sent).
            AgentExistsError: an id this process holds already (nothing sent).
            RegistrationsFailedError: some agents were not registered; the others are
                (its ``registered``, and :meth:`owned`). Its ``failed`` maps each such id to
                its error: :class:`AgentExistsError` (live elsewhere),
                :class:`AmbiguousResultError` (not registered: a key the write may have
                left is deleted in the background),
                :class:`EtcdUnavailableError` (not registered), ...
        """
        caps = validate_ids(capabilities, "capability", "capabilities")
        batch = prepare_many(self._node_id, agents, caps, class_name, persistent)
        if not batch:
            return {}
        hold(self._owned, batch, self._node_id)
        lease = None
        try:
            lease = await self._session.wait_lease()
            results = await self._create_many(batch, lease)
        except BaseException as exc:
            unknown = {a: o for a, o in batch.items() if o.registration is None}
            drop(self._owned, unknown)
            self._left(unknown, lease, exc)
            raise
        failed = {a: r for a, r in results.items() if isinstance(r, Exception)}
        drop(self._owned, {a: batch[a] for a in failed})
        self._left([a for a, r in failed.items() if may_be_applied(r)], lease)
        done = {a: r for a, r in results.items() if isinstance(r, Registration)}
        if not persistent:
            lease.on_lost(lambda _: drop(self._owned, {a: batch[a] for a in done}))
        if failed:
            raise RegistrationsFailedError(failed, done)
        return done

    async def unregister(self, agent_id: str) -> bool:
        """Remove a registration this process holds.

        Returns whether the key was deleted (``False``: it had gone already, with a lost lease).

        Raises:
            InvalidIdError: ``agent_id`` is not a valid agent id.
            AgentNotFoundError: this process holds no registration of ``agent_id``.
        """
        validate_id(agent_id, "agent id")
        owned = self._owned.pop(agent_id, None)
        if owned is None:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is not registered here")
        reg = owned.registration
        if reg is None:
            return False
        self._leaving.add(agent_id)
        try:
            res = await self._writes.txn([reg.guard], [Op.delete(reg.key)])
        except BaseException:  # the key may be left: deleted in the background
            lease = None if self._session.closed else self._session.lease
            self._left(
                [agent_id], lease if lease and lease.id == reg.lease_id else None, late=False
            )
            raise
        finally:
            self._leaving.discard(agent_id)
        return res.succeeded

    def _left(
        self, ids: Iterable[str], lease: Lease | None, exc: object = None, late: bool = True
    ) -> None:
        """Delete these agents' keys in the background unless held again (unless unwritten)."""
        if lease is None or (isinstance(exc, BaseException) and not may_be_applied(exc)):
            return
        for agent_id in ids:
            held = partial(lambda a: a in self._owned or a in self._leaving, agent_id)
            delete_left_key(self._session, self._ks.agent_live(agent_id), lease, held, late=late)

    async def update_meta(self, agent_id: str, meta: Mapping[str, Any]) -> Registration:
        """Replace the metadata of a registration this process holds.

        Raises:
            InvalidIdError: ``agent_id`` is not a valid agent id.
            AgentNotFoundError: not held here, or the registration is no longer live.
            SerializationError, RequestTooLargeError: bad metadata (nothing written).
        """
        validate_id(agent_id, "agent id")
        new_meta = json_object(meta, "meta")
        owned = self._owned.get(agent_id)
        if owned is None or (reg := owned.registration) is None:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is not registered here")
        value = encode_registration(self._node_id, owned.class_name, owned.capabilities, new_meta)
        res = await self._t.txn([reg.guard], [Op.put(reg.key, value, lease=reg.lease_id)])
        if not res.succeeded:
            raise AgentNotFoundError(agent_id, f"registration of {agent_id!r} is no longer live")
        owned.meta = new_meta
        owned.value = value
        return reg

    async def _reregister_all(self, lease: Lease) -> None:
        """Register again, under the new lease, what the lost one held (the persistent ones).

        All at once (``txn_many``); an outcome not known yet is tried again while the lease
        lives, and one found live under this lease is this process's own (an earlier try).
        """
        again: dict[str, _Owned] = {}
        for agent_id, owned in list(self._owned.items()):
            reg = owned.registration
            if reg is not None and reg.lease_id == lease.id:  # made under it already (the
                continue  # runtime may claim its agents before this hook runs)
            if owned.persistent:
                owned.registration = None
                again[agent_id] = owned
            elif reg is not None:  # went with the lost lease (in flight: its own call ends)
                del self._owned[agent_id]
        backoff = 0.05
        while again and not lease.lost:
            again = {a: o for a, o in again.items() if self._owned.get(a) is o}  # unregistered?
            results = await self._create_many(again, lease)
            for agent_id, res in results.items():
                owned = again.pop(agent_id)
                if isinstance(res, AgentExistsError) and res.lease_id == lease.id:
                    kv = await self._t.get(self._ks.agent_live(agent_id))
                    if kv is not None and kv.lease == lease.id:
                        key, rev = kv.key, kv.create_revision
                        owned.registration = Registration(agent_id, key, rev, lease.id)
                        continue
                    again[agent_id] = owned  # gone meanwhile: create it again
                elif isinstance(res, EtcdError):  # not known yet: again
                    log.warning("registering %r again: %s; will retry", agent_id, res)
                    again[agent_id] = owned
                elif isinstance(res, Exception):  # live elsewhere, or refused for good
                    log.error("cannot register %r again after lease loss: %s", agent_id, res)
                    drop(self._owned, {agent_id: owned})
                    if isinstance(res, AgentExistsError):
                        self.conflicts.append(res)
            if again:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
