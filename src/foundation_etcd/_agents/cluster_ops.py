"""The operator's methods of :class:`Cluster`: cordon and drain, and read-only listings.

``cordon``/``uncordon``/``drain`` delegate to ``drain.py`` (their guarantees are there).
The listings (elections, locks, limits, inbox depths) are each one
linearizable read (a few for ``quota_limits``) at one revision and
changes nothing; the command line's ``leaders``, ``locks``, ``quotas`` and ``status`` are
built on them. A key the library did not write (a crafted name, a malformed limit) is
skipped and logged, never raised: inspection must work on a damaged keyspace too.

Guarantees:
    * **One snapshot per listing**: every entry of a result was current at the revision it
      reports; nothing is assembled from reads at different revisions.
    * **The owner is etcd's owner**: for an election or a lock it is the candidate with the
      lowest create revision, as the fenced primitives decide it (etcd's own
      ``etcdctl elect``/``lock`` candidates under the same prefix included).

On lease loss: a listing needs no session (it reads etcd directly); a drain in progress
stops with the cluster's error, and the node stays cordoned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._coord.ownership import OwnerInfo
from .._coord.quota_view import QuotaView
from .._core.keys import Keyspace, validate_id
from .._core.kv import KeyValue, Op
from .._transport import Transport
from .rotation import ReencryptReport, reencrypt

if TYPE_CHECKING:
    from .drain import Drain

__all__ = ["OperatorMethods", "OwnershipSummary"]

log = logging.getLogger("foundation_etcd.inspect")


@dataclass(frozen=True, slots=True)
class OwnershipSummary:
    """One election or lock of the tenant and who holds it.

    Attributes:
        kind: ``"election"`` or ``"lock"``.
        name: the election's or lock's name.
        owner: the leader or holder (the lowest create revision).
        waiting: candidates or waiters queued behind it.
        revision: the store revision of the read.
    """

    kind: str
    name: str
    owner: OwnerInfo
    waiting: int
    revision: int


def _named(ks: Keyspace, prefix: bytes, kvs: list[KeyValue]) -> dict[str, list[KeyValue]]:
    """Group ``{prefix}{name}/{candidate}`` keys by name; skip keys of any other shape."""
    groups: dict[str, list[KeyValue]] = {}
    for kv in kvs:
        name, sep, candidate = kv.key[len(prefix) :].partition(b"/")
        try:
            text = validate_id(name.decode(), "name")
        except (UnicodeDecodeError, ValueError):
            text = ""
        if not sep or not candidate or not text:
            log.warning("ignoring a key that is no candidacy: %r", kv.key)
            continue
        groups.setdefault(text, []).append(kv)
    return groups


class OperatorMethods:
    """Cordon, drain and the read-only listings of a :class:`Cluster` (see the module)."""

    transport: Transport
    keyspace: Keyspace

    if TYPE_CHECKING:  # provided by Cluster

        @property
        def _drain(self) -> Drain: ...

    async def drain(
        self, node_id: str, *, progress: Callable[[int, int, str, str], None] | None = None
    ) -> list[tuple[str, str]]:
        """Cordon ``node_id``, then move every agent off it.

        Each agent stops there with a final checkpoint and restarts elsewhere from it. The
        node stays cordoned afterwards: :meth:`uncordon` lets placement use it again.

        Args:
            node_id: the node to empty.
            progress: called after each move as ``progress(done, total, agent_id,
                new_node)``, and once with ``(0, total, "", "")`` when the node is cordoned
                and its agents counted.

        Returns:
            ``(agent_id, new_node)`` for each agent moved.

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
            NoNodeFitsError: no other node can take one of its agents (the node stays
                cordoned; the agents before that one were moved).
        """
        return await self._drain.drain(node_id, progress=progress)

    async def reencrypt(
        self,
        *,
        progress: Callable[[ReencryptReport, str], None] | None = None,
        dry_run: bool = False,
    ) -> ReencryptReport:
        """Seal every agent checkpoint, signal payload and reply under the newest key.

        The newest key is the first of ``Config.encryption``; plaintext values are sealed
        too. Safe while the cluster works: each value is rewritten only if unchanged since
        read (see ``rotation.py``). Run it after making a new key the first on every
        process; then the old key can be dropped.

        Args:
            progress: called after each page as ``progress(report, what)``.
            dry_run: count what would be rewritten, write nothing.

        Returns:
            The counts, and the values that did not decrypt (left as they are).

        Raises:
            ConfigurationError: this process has no encryption keys.
        """
        keyring = self.transport.config.keyring
        return await reencrypt(
            self.transport, self.keyspace, keyring, progress=progress, dry_run=dry_run
        )

    async def cordon(self, node_id: str) -> bool:
        """Place no new agent on ``node_id`` (its agents keep running), until uncordoned.

        Persisted in etcd: every scheduler of every process obeys it, across restarts.

        Returns:
            Whether it was cordoned now (``False``: it already was).

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
        """
        return await self._drain.cordon(node_id)

    async def uncordon(self, node_id: str) -> bool:
        """Let placement choose ``node_id`` again.

        Returns:
            Whether a cordon was removed (``False``: the node was not cordoned).

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
        """
        return await self._drain.uncordon(node_id)

    async def cordoned(self) -> frozenset[str]:
        """The ids of the cordoned nodes, as etcd has them now."""
        return await self._drain.cordoned()

    async def _owners(self, kind: str, prefix: bytes) -> list[OwnershipSummary]:
        res = await self.transport.get_prefix(prefix)
        out = []
        for name, kvs in sorted(_named(self.keyspace, prefix, list(res.kvs)).items()):
            first = min(kvs, key=lambda kv: kv.create_revision)
            out.append(
                OwnershipSummary(kind, name, OwnerInfo.of(first), len(kvs) - 1, res.revision)
            )
        return out

    async def elections(self) -> list[OwnershipSummary]:
        """Every election of the tenant with a candidate, and its leader, by name."""
        return await self._owners("election", self.keyspace.election_prefix())

    async def locks(self) -> list[OwnershipSummary]:
        """Every lock of the tenant that is held, its holder and its waiters, by name."""
        return await self._owners("lock", self.keyspace.lock_prefix())

    async def quota_limits(self) -> dict[str, int]:
        """The tenant's quota limits by resource (``quota set``), from one read.

        A malformed limit is left out (and logged): the quotas admit nothing against it.
        """
        prefix = self.keyspace.quota_limits_prefix()
        res = await self.transport.get_prefix(prefix)
        out: dict[str, int] = {}
        for kv in res.kvs:
            try:
                resource = validate_id(kv.key[len(prefix) :].decode(), "resource")
            except (UnicodeDecodeError, ValueError):
                log.warning("ignoring a key that is no quota limit: %r", kv.key)
                continue
            limit = QuotaView.parse_limit(kv)
            if limit is not None:
                out[resource] = limit
        return dict(sorted(out.items()))

    async def inbox_depths(self) -> dict[str, int]:
        """Signals waiting per agent (only agents with at least one), from one keys-only read."""
        prefix = self.keyspace.inboxes_prefix()
        res = await self.transport.range(Op.get(prefix, prefix=True, keys_only=True))
        depths: dict[str, int] = {}
        for kv in res.kvs:
            agent, sep, _ = kv.key[len(prefix) :].partition(b"/")
            if sep:
                name = agent.decode(errors="replace")
                depths[name] = depths.get(name, 0) + 1
        return dict(sorted(depths.items()))
