"""A cluster of real etcd members on loopback, for tests: kill, pause, restart any member.

Members are :class:`EtcdServer` processes (see ``_server``), so they share its guarantees:
they die with the test run, readiness comes from ``/health``, never from a log line. The
leader reported by :meth:`EtcdCluster.leader_index` is one a majority of the members names,
so a stale leader cut off from the rest is never reported.

etcd 3.5.0-3.5.2 can lose applied entries when a member killed under load restarts (etcd
issue 13766, fixed in 3.5.3): the member then serves reads from a store that stays behind
the others for good. On those versions, :meth:`EtcdCluster.restart` brings a member killed
with :meth:`EtcdCluster.kill` back as a fresh member (removed, added again, empty data
directory, caught up from the leader), as an operator would replace it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Protocol

import anyio.to_thread

from ._discovery import find_etcd_binary
from ._errors import EtcdHarnessError, EtcdStartError
from ._http import request_json
from ._ports import LOOPBACK, free_ports
from ._server import EtcdServer

__all__ = ["EtcdCluster", "EtcdClusterFactory"]


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster.

    Args:
        size: number of members.
        binary: the etcd binary; :func:`find_etcd_binary` by default.
        heartbeat_interval: raft heartbeat, seconds.
        election_timeout: raft election timeout, seconds.
        extra_args: further command-line arguments for every member.
        base_dir: where the members' temporary directories are created.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str | None = None,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        extra_args: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one member, not {size}")
        self._size = size
        self._binary = binary or find_etcd_binary()
        self._timing = (heartbeat_interval, election_timeout)
        # a replacement (restart(fresh=True)) is added at once: strictly, etcd waits until
        # its leader has been connected to all for 5 s
        self._extra = ["--strict-reconfig-check=false", *extra_args]
        self._base_dir = base_dir
        self._members: list[EtcdServer] = []
        self._crashed: set[int] = set()  # killed since their last start
        self._version: str | None = None
        self._build()

    def _build(self) -> None:
        """Make the members (not started) on ports free now, as one new cluster."""
        ports = free_ports(2 * self._size)
        token = f"foundation-etcd-{secrets.token_hex(4)}"
        prefix = secrets.token_hex(2)
        names = [f"m{i}-{prefix}" for i in range(self._size)]
        initial = ",".join(
            f"{name}=http://{LOOPBACK}:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        self._members = []
        try:
            for i, name in enumerate(names):
                self._members.append(
                    EtcdServer(
                        name,
                        client_port=ports[2 * i],
                        peer_port=ports[2 * i + 1],
                        initial_cluster=initial,
                        cluster_token=token,
                        binary=self._binary,
                        heartbeat_interval=self._timing[0],
                        election_timeout=self._timing[1],
                        extra_args=self._extra,
                        base_dir=self._base_dir,
                    )
                )
        except Exception:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.endpoints}>"

    @property
    def members(self) -> list[EtcdServer]:
        """The members, in order."""
        return list(self._members)

    @property
    def endpoints(self) -> list[str]:
        """The members' client endpoints, ``127.0.0.1:port``."""
        return [m.endpoint for m in self._members]

    def member(self, index: int) -> EtcdServer:
        """Return member ``index``."""
        return self._members[index]

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until all are healthy.

        A first start that fails because a member's port was taken meanwhile (by another
        process) is made again on new ports, as a new cluster, up to three times.

        Raises:
            EtcdStartError: a member exited or was not healthy within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        first = not any(m._started_once for m in self._members)
        for attempt in range(3):
            for member in self._members:
                member.start(wait=False)
            try:
                self.wait_healthy(deadline - time.monotonic())
                return
            except EtcdStartError:
                # a port taken between choosing it and binding it (another process on
                # the machine): a first start is made again, as a new cluster on new ports
                taken = any("address already in use" in m._log_since_spawn() for m in self._members)
                if not (first and taken) or attempt == 2 or time.monotonic() + 1 > deadline:
                    raise
                self.close()
                self._build()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every member reports itself healthy (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        for member in self._members:
            member.wait_healthy(max(deadline - time.monotonic(), 0.0))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member gracefully, SIGKILL after ``timeout`` seconds.

        Followers get SIGTERM first, the leader once they are gone: a leader stopped while
        its followers are shutting down spends seconds trying to hand leadership over.
        """
        deadline = time.monotonic() + timeout
        leader = self.leader_index(0.5) if any(m.running for m in self._members) else None
        followers = [m for i, m in enumerate(self._members) if i != leader]
        for member in followers:
            member._terminate()
        for member in followers:
            member._reap(deadline - time.monotonic())
        if leader is not None:
            self._members[leader].stop(deadline - time.monotonic())

    def close(self) -> None:
        """Kill every member (their data is thrown away anyway) and remove their directories."""
        for member in self._members:
            with contextlib.suppress(EtcdHarnessError, OSError):
                member.kill()
        for member in self._members:
            member.close()

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (a crash: see :meth:`restart`)."""
        self._members[index].kill()
        self._crashed.add(index)

    def pause(self, index: int) -> None:
        """SIGSTOP member ``index``."""
        self._members[index].pause()

    def resume(self, index: int) -> None:
        """SIGCONT member ``index``."""
        self._members[index].resume()

    def restart(
        self, index: int, *, wait: bool = True, timeout: float = 30.0, fresh: bool | None = None
    ) -> None:
        """Restart member ``index``; it rejoins as an existing member.

        Args:
            index: the member.
            wait: wait until it is healthy.
            timeout: bound of the restart, seconds.
            fresh: come back with no data, as a new member (removed and added again); by
                default only a member killed by :meth:`kill` on etcd 3.5.0-3.5.2, whose
                restart with its data can lose applied entries (etcd issue 13766).

        Raises:
            EtcdHarnessError: the other members did not take the replacement in time.
        """
        crashed = index in self._crashed
        self._crashed.discard(index)
        if fresh is None:
            fresh = crashed and self.server_version() in ("3.5.0", "3.5.1", "3.5.2")
        if not fresh:
            self._members[index].restart(wait=wait, timeout=timeout)
            return
        member, deadline = self._members[index], time.monotonic() + timeout
        member.stop()
        peers = [m for i, m in enumerate(self._members) if i != index and m.running]
        listed = self._ask(peers, "list", {}, deadline).get("members")
        ids = [
            m.get("ID")
            for m in (listed if isinstance(listed, list) else [])
            if isinstance(m, dict) and member.peer_url in (m.get("peerURLs") or [])
        ]
        for member_id in ids:
            self._ask(peers, "remove", {"ID": member_id}, deadline)
        self._ask(peers, "add", {"peerURLs": [member.peer_url]}, deadline)
        shutil.rmtree(member.data_dir, ignore_errors=True)
        member._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self._members)
        member._started_once = True  # joins with --initial-cluster-state existing
        member.start(wait=wait, timeout=max(deadline - time.monotonic(), 1.0))

    def server_version(self) -> str:
        """The etcd version the members report (asked once, of a running member)."""
        if self._version is None:
            for m in self._members:
                answer = request_json(f"{m.client_url}/version", None, 2.0, m._opener)
                if answer and isinstance(answer.get("etcdserver"), str):
                    self._version = str(answer["etcdserver"])
                    break
        return self._version or ""

    @staticmethod
    def _ask(
        peers: list[EtcdServer], call: str, body: dict[str, object], deadline: float
    ) -> dict[str, object]:
        """``POST /v3/cluster/member/{call}`` to the first peer that answers it, until then."""
        while True:
            for peer in peers:
                url = f"{peer.client_url}/v3/cluster/member/{call}"
                answer = request_json(url, json.dumps(body).encode(), 2.0, peer._opener)
                if answer and isinstance(answer.get("header"), dict):
                    return answer
            if time.monotonic() > deadline:
                raise EtcdHarnessError(f"no member answered member/{call} {body} in time")
            time.sleep(0.1)

    def leader_index(self, timeout: float = 1.0) -> int | None:
        """Return the index of the current leader, or ``None`` when there is none.

        Every running, unpaused member is asked ``POST /v3/maintenance/status`` in
        parallel. A member is the leader when it names itself leader and a majority of the
        cluster names it too, so a stale leader cut off from the rest is not reported.

        Args:
            timeout: how long to wait for each answer, seconds.
        """
        asked = [i for i, m in enumerate(self._members) if m.running and not m.paused]
        if not asked:
            return None
        with ThreadPoolExecutor(max_workers=len(asked)) as pool:
            answers = list(
                pool.map(
                    lambda i: request_json(
                        f"{self._members[i].client_url}/v3/maintenance/status",
                        b"{}",
                        timeout,
                        self._members[i]._opener,
                    ),
                    asked,
                )
            )
        views: dict[int, tuple[str, str]] = {}
        for i, answer in zip(asked, answers, strict=True):
            header = answer.get("header") if answer else None
            if answer and isinstance(header, dict):
                member_id, leader = header.get("member_id"), answer.get("leader")
                if member_id and leader and str(leader) != "0":
                    views[i] = (str(member_id), str(leader))
        quorum = len(self._members) // 2 + 1
        for i, (member_id, leader) in views.items():
            votes = sum(1 for _, seen in views.values() if seen == member_id)
            if member_id == leader and votes >= quorum:
                return i
        return None

    def wait_leader(self, timeout: float = 10.0) -> int:
        """Poll :meth:`leader_index` until there is a leader; return its index.

        Raises:
            EtcdHarnessError: no leader within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            index = self.leader_index(min(1.0, max(deadline - time.monotonic(), 0.05)))
            if index is not None:
                return index
            if time.monotonic() >= deadline:
                raise EtcdHarnessError(f"{self!r}: no leader within {timeout:g} s")
            time.sleep(0.05)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async wrappers, as for EtcdServer

    async def astart(self) -> None:
        """:meth:`start` in a worker thread."""
        await anyio.to_thread.run_sync(self.start)

    async def arestart(self, index: int) -> None:
        """:meth:`restart` of member ``index`` in a worker thread."""
        await anyio.to_thread.run_sync(self.restart, index)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop)

    async def await_healthy(self) -> None:
        """:meth:`wait_healthy` in a worker thread."""
        await anyio.to_thread.run_sync(self.wait_healthy)

    async def await_leader(self) -> int:
        """:meth:`wait_leader` in a worker thread."""
        return await anyio.to_thread.run_sync(self.wait_leader)


class EtcdClusterFactory(Protocol):
    """What the ``etcd_cluster_factory`` fixture is: it returns a started cluster."""

    def __call__(
        self,
        size: int = 3,
        *,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        extra_args: Sequence[str] = (),
    ) -> EtcdCluster:
        """Start a fresh cluster, stopped when the test ends."""
        ...
