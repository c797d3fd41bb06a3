"""Raw etcd requests: the gRPC stubs by hand, watch streams, etcd's JSON gateway."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

from benchmarks.harness import EVENT_TIMEOUT, Bench
from foundation_etcd.lowlevel import prefix_end

rpc = pb.rpc_pb2


def raw_create_txn(key: bytes, value: bytes, lease: int = 0) -> Any:
    """The raw create-if-absent transaction (the library's ``Registry.register`` shape)."""
    return rpc.TxnRequest(
        compare=[
            rpc.Compare(
                key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
            )
        ],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
    )


@contextlib.asynccontextmanager
async def raw_lease(bench: Bench, ttl: int = 60) -> AsyncIterator[int]:
    """A raw lease, revoked at the end."""
    grant = await bench.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl))
    try:
        yield int(grant.ID)
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await bench.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=grant.ID))


class RawWatcher:
    """A raw Watch stream on a prefix whose reader task stamps each event's arrival."""

    def __init__(self, bench: Bench, prefix: bytes) -> None:
        self._bench = bench
        self._prefix = prefix
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self.waiting: dict[bytes, asyncio.Future[float]] = {}

    async def __aenter__(self) -> RawWatcher:
        self._call = pb.WatchStub(self._bench.channel).Watch()
        create = rpc.WatchCreateRequest(key=self._prefix, range_end=prefix_end(self._prefix))
        await self._call.write(rpc.WatchRequest(create_request=create))
        created = await self._call.read()
        assert created.created, created
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self) -> None:
        while True:
            resp = await self._call.read()
            if resp is grpc.aio.EOF:
                return
            now = time.perf_counter()
            for ev in resp.events:
                fut = self.waiting.pop(ev.kv.key, None)
                if fut is not None and not fut.done():
                    fut.set_result(now)


def raw_compare(key: bytes, target: str, value: int, result: str = "EQUAL") -> Any:
    """A raw compare on a create or mod revision."""
    field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
    return rpc.Compare(
        key=key,
        target=getattr(rpc.Compare, target),
        result=getattr(rpc.Compare, result),
        **{field: value},
    )


def raw_queue_read(prefix: bytes, *, limit: int = 1, before: int = 0) -> Any:
    """A raw read of a queue in create order: its head, or (``before``) a predecessor."""
    req = rpc.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        limit=limit,
        sort_target=rpc.RangeRequest.CREATE,
        sort_order=rpc.RangeRequest.DESCEND if before else rpc.RangeRequest.ASCEND,
    )
    if before:
        req.max_create_revision = before - 1
    return req


def raw_enqueue_txn(prefix: bytes, key: bytes, lease: int) -> Any:
    """Create the own key if absent and read the queue's head (the library's first step)."""
    head = rpc.RequestOp(request_range=raw_queue_read(prefix))
    return rpc.TxnRequest(
        compare=[raw_compare(key, "CREATE", 0)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"", lease=lease)), head],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)), head],
    )


def raw_turn_txn(prefix: bytes, key: bytes, token: int) -> Any:
    """Read the own key and its predecessor in one transaction (a waiter's check)."""
    return rpc.TxnRequest(
        success=[
            rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
            rpc.RequestOp(request_range=raw_queue_read(prefix, before=token)),
        ]
    )


async def wait_count(bench: Bench, prefix: bytes, n: int) -> None:
    """Wait until at least ``n`` keys exist under ``prefix`` (raw reads, 2 ms apart)."""
    deadline = time.perf_counter() + EVENT_TIMEOUT
    end = prefix_end(prefix)
    while True:
        res = await bench.kv.Range(rpc.RangeRequest(key=prefix, range_end=end, count_only=True))
        if res.count >= n:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{n} keys under {prefix!r} not seen in {EVENT_TIMEOUT:g} s")
        await asyncio.sleep(0.002)


async def raw_wait_deleted(
    channel: grpc.aio.Channel, key: bytes, after: int, ready: asyncio.Future[None]
) -> None:
    """Watch ``key`` from ``after + 1`` on a fresh stream until it is deleted."""
    call = pb.WatchStub(channel).Watch()
    try:
        create = rpc.WatchCreateRequest(key=key, start_revision=after + 1)
        await call.write(rpc.WatchRequest(create_request=create))
        created = await call.read()
        assert created.created, created
        if not ready.done():
            ready.set_result(None)
        while True:
            resp = await call.read()
            assert resp is not grpc.aio.EOF
            if any(ev.type == pb.kv_pb2.Event.DELETE for ev in resp.events):
                return
    finally:
        call.cancel()


class Gateway:
    """etcd's JSON gateway (grpc-gateway on the client port), over one keep-alive connection."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=EVENT_TIMEOUT)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body; the decoded answer."""
        self._conn.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"gateway {path}: HTTP {resp.status} {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def kv_requests(endpoint: str) -> int | None:
    """KV requests (Range, Put, DeleteRange, Txn) etcd has handled, from its /metrics."""
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=EVENT_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    methods = tuple(f'method="{m}"' for m in ("Range", "Put", "DeleteRange", "Txn"))
    total = 0
    for line in text.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and 'service="etcdserverpb.KV"' in line
            and any(m in line for m in methods)
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def b64(data: bytes) -> str:
    """Bytes as the gateway wants them in JSON."""
    return base64.b64encode(data).decode()
