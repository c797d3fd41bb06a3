"""One wire layer's cost per etcd round trip, timed for ``scripts/bench.py`` (section ``wire``).

Usage::

    python scripts/bench_wire.py STACK HOST:PORT KEY N

``STACK`` is one of:

* ``grpc-aio``: etcd3aio's generated stubs on a plain ``grpc.aio`` channel (the raw
  reference of every other section);
* ``grpc-sync``: the same stubs on grpc's blocking channel (the same C core, no asyncio);
* ``grpclib``: grpclib, a pure-Python HTTP/2 (h2) gRPC client on asyncio, with the same
  protobuf messages;
* ``etcd-client-py``: the Rust etcd client (tonic) wrapped with PyO3, on its own tokio
  threads;
* ``transport``: foundation_etcd's ``Transport`` (hasleader metadata and a deadline on
  every request, its error translation and result types).

Each runs two operations on key ``KEY``: the **cycle** (a Txn "create KEY if absent: put,
else get it", then a DeleteRange of KEY, the shape of a lock cycle without the lease and the
queue read, which etcd-client-py's transactions cannot express) and a **get** (one Range).
After untimed warm-up, ``N`` of each in 5 batches. Prints one JSON object: wall times in
seconds (``cycle``, ``get``) and the process CPU per operation of each batch
(``cycle_cpu``, ``get_cpu``; ``time.process_time``, so every thread counts, the Rust
client's and grpc's pollers included).

grpclib and etcd-client-py run in a venv of their own (``standalone_python``); the others
in this project's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

BATCHES = 5
WARM_UP = 50

Step = Callable[[], Awaitable[None]]


def _messages(key: bytes) -> tuple[Any, Any, Any]:
    """The cycle's Txn, its DeleteRange and the get, as etcd's protobuf messages."""
    from etcd3aio import _protobuf as pb

    txn = pb.TxnRequest(
        compare=[
            pb.Compare(
                key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0
            )
        ],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b""))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )
    return txn, pb.DeleteRangeRequest(key=key), pb.RangeRequest(key=key)


async def _grpc_aio(endpoint: str, key: bytes) -> tuple[Step, Step]:
    import grpc.aio
    from etcd3aio import _protobuf as pb

    kv = pb.KVStub(grpc.aio.insecure_channel(endpoint))
    txn, delete, get = _messages(key)

    async def cycle() -> None:
        assert (await kv.Txn(txn)).succeeded
        await kv.DeleteRange(delete)

    async def one_get() -> None:
        await kv.Range(get)

    return cycle, one_get


async def _grpclib(endpoint: str, key: bytes) -> tuple[Step, Step]:
    from etcd3aio import _protobuf as pb
    from grpclib.client import Channel, UnaryUnaryMethod

    host, _, port = endpoint.rpartition(":")
    channel = Channel(host, int(port))
    path = "/etcdserverpb.KV/"
    txn_m: Any = UnaryUnaryMethod(channel, path + "Txn", pb.TxnRequest, pb.TxnResponse)
    del_m: Any = UnaryUnaryMethod(
        channel, path + "DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse
    )
    get_m: Any = UnaryUnaryMethod(channel, path + "Range", pb.RangeRequest, pb.RangeResponse)
    txn, delete, get = _messages(key)

    async def cycle() -> None:
        assert (await txn_m(txn)).succeeded
        await del_m(delete)

    async def one_get() -> None:
        await get_m(get)

    return cycle, one_get


async def _transport(endpoint: str, key: bytes) -> tuple[Step, Step]:
    from foundation_etcd import Config
    from foundation_etcd.lowlevel import Compare, Op, Transport

    t = await Transport.connect(Config(endpoints=(endpoint,)))

    async def cycle() -> None:
        res = await t.txn([Compare.create_revision(key) == 0], [Op.put(key, b"")], [Op.get(key)])
        assert res.succeeded
        await t.delete(key)

    async def one_get() -> None:
        await t.get(key)

    return cycle, one_get


async def _measure(cycle: Step, one_get: Step, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cycle": [], "get": [], "cycle_cpu": [], "get_cpu": []}
    for name, step in (("cycle", cycle), ("get", one_get)):
        for _ in range(WARM_UP):
            await step()
        per_batch = max(1, n // BATCHES)
        for _ in range(BATCHES):
            gc.collect()
            c0 = time.process_time()
            for _ in range(per_batch):
                t0 = time.perf_counter()
                await step()
                out[name].append(time.perf_counter() - t0)
            out[name + "_cpu"].append((time.process_time() - c0) / per_batch)
    return out


async def _async_stack(stack: str, endpoint: str, key: bytes, n: int) -> dict[str, list[float]]:
    if stack == "etcd-client-py":
        from etcd_client import Client, Compare, CompareOp, Txn, TxnOp

        async with Client([f"http://{endpoint}"]).connect() as comm:

            async def rust_cycle() -> None:
                txn = (
                    Txn()
                    .when([Compare.create_revision(key, CompareOp.EQUAL, 0)])
                    .and_then([TxnOp.put(key, b"")])
                    .or_else([TxnOp.get(key)])
                )
                assert (await comm.txn(txn)).succeeded()
                await comm.delete(key)

            async def rust_get() -> None:
                await comm.get(key)

            return await _measure(rust_cycle, rust_get, n)
    makers = {"grpc-aio": _grpc_aio, "grpclib": _grpclib, "transport": _transport}
    cycle, one_get = await makers[stack](endpoint, key)
    return await _measure(cycle, one_get, n)


def _grpc_sync(endpoint: str, key: bytes, n: int) -> dict[str, list[float]]:
    import grpc
    from etcd3aio import _protobuf as pb

    kv = pb.KVStub(grpc.insecure_channel(endpoint))
    txn, delete, get = _messages(key)

    # blocking calls inside coroutines that never suspend: _measure's awaits run them
    # straight through, and the event loop is never entered between them
    async def cycle() -> None:
        assert kv.Txn(txn).succeeded
        kv.DeleteRange(delete)

    async def one_get() -> None:
        kv.Range(get)

    return asyncio.run(_measure(cycle, one_get, n))


def main(stack: str, endpoint: str, key: str, n: str) -> None:
    """Time the stack's operations and print the samples."""
    if stack == "grpc-sync":
        out = _grpc_sync(endpoint, key.encode(), int(n))
    else:
        out = asyncio.run(_async_stack(stack, endpoint, key.encode(), int(n)))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
